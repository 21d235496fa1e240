//! Root e2e: nothing is lost silently. A reset flood through a deliberately small ring buffer
//! and queue: every reset generated is either delivered or counted in a `loss` record, and
//! `probe_tcp_resets_total` (counted in the kernel) is exact whatever was lost.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use probe_tests::*;

/// Refused connects; each makes two resets (the responder's sent, the client's received) and a
/// connect failure.
const CONNECTS: u64 = 50_000;

#[test]
fn delivered_plus_lost_equals_generated() {
    if !require_root("ringbuf_loss::delivered_plus_lost_equals_generated") {
        return;
    }
    // One page of ring buffer (~34 events) and a tiny queue, so both loss paths fire.
    let mut probe = Probe::start(&[
        "--ringbuf-bytes",
        "4096",
        "--queue-size",
        "16",
        "--loss-interval",
        "200ms",
        // Every reset a record: the ring buffer, not folding, is under test.
        "--fold-first",
        "0",
        // Only resets in the count: no conntrack records competing for the tiny queue.
        "--conntrack",
        "false",
        // Time to write out the output's queue at the end (a slow emulated CPU needs it).
        "--shutdown-timeout",
        "25s",
    ]);
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let port = closed_port(ip);
    for _ in 0..CONNECTS {
        refused_connect(ip, port);
    }
    // Give the last events time to reach the agent; stop() drains the rest.
    let _ = probe.wait_for(Duration::from_millis(500), |_| false);
    // The kernel counted every reset before its record met the full ring buffer: the metrics
    // are exact (read once a second by the agent).
    let counted = |dir: &str| {
        let label = format!("direction=\"{dir}\"");
        metric_sum(probe.http_addr(), "probe_tcp_resets_total", &[&label])
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while (counted("sent"), counted("received")) != (CONNECTS, CONNECTS)
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(
        (counted("sent"), counted("received")),
        (CONNECTS, CONNECTS),
        "probe_tcp_resets_total by direction"
    );
    // Connect failures too (one per refused connect), in the same map.
    assert_eq!(
        wait_metric(
            probe.http_addr(),
            "probe_tcp_connect_failures_total",
            &[r#"outcome="refused""#],
            CONNECTS
        ),
        CONNECTS,
        "probe_tcp_connect_failures_total"
    );
    let (status, records, log) = probe.stop_with_log();
    assert!(status.success(), "the probe exited with {status}:\n{log}");
    // Lost events whose loss record could not get out before the shutdown deadline are said
    // in the agent's last WARN line.
    let unwritten = unreported_losses(&log, "json");

    let delivered = refused_records_on_port(&records, port).len() as u64;
    let unrelated = records
        .iter()
        .filter(|r| r["kind"] == "tcp_reset" || r["kind"] == "connect_failure")
        .count() as u64
        - delivered;
    let losses: Vec<&Value> = records.iter().filter(|r| r["kind"] == "loss").collect();
    let lost: u64 = losses
        .iter()
        .map(|r| r["count"].as_u64().unwrap())
        .sum::<u64>()
        + unwritten;
    let ringbuf: u64 = losses
        .iter()
        .filter(|r| r["source"] == "ringbuf")
        .map(|r| {
            assert!(
                r["lost_kind"] == "tcp_reset" || r["lost_kind"] == "connect_failure",
                "a kernel event of another kind was lost: something else on this node was \
                 active during the flood (the count needs a quiet node): {r}"
            );
            r["count"].as_u64().unwrap()
        })
        .sum();
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!(
            "ringbuf_loss: generated {} delivered {delivered} lost {lost} (ringbuf {ringbuf}, \
             channel and output {}, unwritten at the deadline {unwritten}) unrelated {unrelated}\n",
            RECORDS_PER_REFUSED_CONNECT * CONNECTS,
            lost - ringbuf - unwritten
        )
        .as_bytes(),
    );
    assert_eq!(
        unrelated, 0,
        "other resets on this node during the test make the count inexact"
    );
    assert_eq!(delivered + lost, RECORDS_PER_REFUSED_CONNECT * CONNECTS);
    assert!(delivered > 0, "nothing was delivered");
    assert!(
        lost > 0,
        "a one-page ring buffer under a flood should lose events"
    );
}
