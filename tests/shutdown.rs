//! Root e2e: SIGTERM while events flow. The agent exits within its shutdown deadline, and
//! every event the kernel produced before the signal reaches the sink (or is counted lost).

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use probe_tests::*;

const CONNECTS: u64 = 2_000;

#[test]
fn sigterm_drains_events_already_produced() {
    if !require_root("shutdown::sigterm_drains_events_already_produced") {
        return;
    }
    // A slow-ish loss interval so the final report is the one at shutdown.
    // Every reset a record (no folding): the drain is under test, with volume.
    let probe = Probe::start(&[
        "--shutdown-timeout",
        "5s",
        "--loss-interval",
        "1h",
        "--fold-first",
        "0",
    ]);
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let port = closed_port(ip);
    for _ in 0..CONNECTS {
        refused_connect(ip, port);
    }
    // No waiting: the signal arrives while the agent is still reading and writing.
    probe.terminate();
    let (status, took, records) = probe.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "exit status {status}");
    assert!(
        took < Duration::from_secs(5),
        "shutdown took {took:?}, the deadline is 5 s"
    );
    let delivered = resets_on_port(&records, port).len() as u64;
    let lost: u64 = records
        .iter()
        .filter(|r| r["kind"] == "loss")
        .map(|r| r["count"].as_u64().unwrap())
        .sum();
    assert_eq!(
        delivered + lost,
        2 * CONNECTS,
        "delivered {delivered}, lost {lost}"
    );
    // A 4 MiB ring buffer holds all of them: nothing is actually lost.
    assert_eq!(lost, 0);
}

#[test]
fn a_closed_stderr_loses_log_lines_not_the_agent() {
    if !require_root("shutdown::a_closed_stderr_loses_log_lines_not_the_agent") {
        return;
    }
    use std::process::Stdio;
    let addr = free_loopback_addr();
    let mut child = probe_command()
        .args([
            "--output",
            "json",
            "--kubernetes",
            "off",
            "--conntrack-timestamps",
            "false",
        ])
        .args(["--log-level", "debug", "--http-addr", &addr.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning the probe");
    // `probe 2>&1 >/dev/null | head -0`: the reader of stderr is gone before the first line.
    drop(child.stderr.take());
    wait_http_ready(&mut child, addr);
    // Events (each logged at debug on a stderr nobody reads) and a shutdown.
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let closed = closed_port(ip);
    for _ in 0..20 {
        refused_connect(ip, closed);
    }
    assert_eq!(http_get(addr, "/health/live").0, 200);
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let (status, _) = wait_child_exit(&mut child, Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{status} (101 is a panic)");
}
