//! Root e2e: the agent's stdout output is a member of a shell pipeline. A reader that stops
//! reading (`probe | (sleep 40)`) costs a bounded queue and counted losses, never the agent:
//! its health endpoint answers, SIGTERM ends it within the deadline, and what was delivered
//! plus what was counted lost is exactly what the kernel reported. A reader that goes away
//! (`probe | head -1`) is said once, and the agent, whose only output it was, exits 1 saying
//! how many records were lost.

use std::{
    io::{BufRead as _, BufReader},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    process::{Child, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use probe_tests::*;

fn spawn(addr: SocketAddr) -> Child {
    probe_command()
        .args([
            "--output",
            "json",
            "--kubernetes",
            "off",
            "--conntrack",
            "false",
            // Every reset a record (no folding): the output's queue needs the volume.
            "--fold-first",
            "0",
        ])
        .args(["--shutdown-timeout", "5s", "--loss-interval", "1h"])
        .args(["--http-addr", &addr.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning the probe")
}

#[test]
fn a_stdout_nobody_reads_holds_nothing_and_loses_nothing_uncounted() {
    if !require_root("outputs::a_stdout_nobody_reads_holds_nothing_and_loses_nothing_uncounted") {
        return;
    }
    const CONNECTS: u64 = 6000;
    let addr = free_loopback_addr();
    let mut child = spawn(addr);
    let log = stderr_of(&mut child);
    wait_http_ready(&mut child, addr);
    let stdout = child.stdout.take().unwrap();
    let stopped_reading = Instant::now();

    // The liveness endpoint, asked every 200 ms while nobody reads stdout.
    let done = Arc::new(AtomicBool::new(false));
    let prober = {
        let done = done.clone();
        thread::spawn(move || {
            let mut slowest = Duration::ZERO;
            while !done.load(Ordering::Relaxed) {
                let t = Instant::now();
                assert_eq!(http_get(addr, "/health/live").0, 200);
                slowest = slowest.max(t.elapsed());
                thread::sleep(Duration::from_millis(200));
            }
            slowest
        })
    };
    // Two records per connect: far more than the pipe, the writer's buffer and the output's
    // queue (8192) hold together.
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let port = closed_port(ip);
    for _ in 0..CONNECTS {
        refused_connect(ip, port);
    }
    // The reader stays away for 30 s in all.
    thread::sleep(Duration::from_secs(30).saturating_sub(stopped_reading.elapsed()));
    done.store(true, Ordering::Relaxed);
    let slowest = prober.join().expect("the liveness prober");
    assert!(
        slowest < Duration::from_secs(1),
        "/health/live took {slowest:?} while stdout was not read"
    );

    // SIGTERM, then read again: the agent ends within its 5 s deadline.
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    // Lines only while the agent runs (cheap, also under qemu); parsed after it exited.
    let reader = thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<String>>()
    });
    let (status, took) = wait_child_exit(&mut child, Duration::from_secs(30));
    let records: Vec<Value> = reader
        .join()
        .expect("the stdout reader")
        .iter()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let log = log.join().unwrap();
    assert!(status.success(), "exit {status}:\n{log}");
    assert!(
        took < Duration::from_secs(5),
        "shutdown took {took:?}:\n{log}"
    );
    let delivered = refused_records_on_port(&records, port).len() as u64;
    let lost_json: u64 = records
        .iter()
        .filter(|r| r["kind"] == "loss" && r["source"] == "json")
        .map(|r| r["count"].as_u64().unwrap())
        .sum::<u64>()
        + unreported_losses(&log, "json");
    let lost_elsewhere: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "loss" && r["source"] != "json")
        .collect();
    assert!(lost_elsewhere.is_empty(), "{lost_elsewhere:#?}");
    assert!(
        lost_json > 0,
        "nothing was lost: the test did not fill the queue"
    );
    assert_eq!(
        delivered + lost_json,
        RECORDS_PER_REFUSED_CONNECT * CONNECTS,
        "delivered {delivered} + counted lost {lost_json}"
    );
}

#[test]
fn a_reader_that_goes_away_stops_the_agent_and_the_losses_are_said() {
    if !require_root("outputs::a_reader_that_goes_away_stops_the_agent_and_the_losses_are_said") {
        return;
    }
    const CONNECTS: u64 = 50;
    let addr = free_loopback_addr();
    let mut child = spawn(addr);
    let log = stderr_of(&mut child);
    wait_http_ready(&mut child, addr);
    // `| head -1`: one line read, then the reader is gone.
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let port = closed_port(ip);
    refused_connect(ip, port);
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert!(first.contains("tcp_reset"), "{first}");
    drop(stdout);
    for _ in 0..CONNECTS {
        refused_connect(ip, port);
    }
    let (status, _) = wait_child_exit(&mut child, Duration::from_secs(60));
    let log = log.join().unwrap();
    assert_eq!(status.code(), Some(1), "{status}:\n{log}");
    let failures: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("output json failed"))
        .collect();
    assert_eq!(failures.len(), 1, "{log}");
    // The last line says what was lost: the records written after the reader left (the
    // agent stops at the first failed write, so not every reset made here reached it).
    let last = log
        .lines()
        .find(|l| l.contains("the only output (json) failed"))
        .unwrap_or_else(|| panic!("no last line naming the loss:\n{log}"));
    let lost: u64 = last
        .split("); ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{last}"));
    assert!(
        (1..=RECORDS_PER_REFUSED_CONNECT * (CONNECTS + 1)).contains(&lost),
        "{last}"
    );
}
