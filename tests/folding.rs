//! Root e2e: storm folding. A storm of refused connects to one port: the first resets of each
//! key and window go out in full, the rest as `summary` records whose counts make the total
//! exact; a single reset to another port made in the middle of the storm arrives in full;
//! `probe_tcp_resets_total` counts every reset.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use probe_tests::*;

/// Refused connects of the storm; each makes two resets (the responder's sent, the client's
/// received).
const STORM: u64 = 20_000;

/// Resets of `port` in `direction`: (in full, inside summaries, summaries).
fn accounted(records: &[Value], port: u16, direction: &str) -> (u64, u64, u64) {
    let full = resets(records, port, direction).len() as u64;
    let summaries: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "summary" && r["port"] == port && r["direction"] == direction)
        .collect();
    for s in &summaries {
        assert_eq!(s["folded_kind"], "tcp_reset", "{s}");
        assert!(
            s["first_unix_nano"].as_u64() <= s["last_unix_nano"].as_u64(),
            "{s}"
        );
    }
    let folded = summaries.iter().map(|s| s["count"].as_u64().unwrap()).sum();
    (full, folded, summaries.len() as u64)
}

#[test]
fn a_storm_is_folded_exactly_and_hides_no_other_reset() {
    if !require_root("folding::a_storm_is_folded_exactly_and_hides_no_other_reset") {
        return;
    }
    let mut probe = Probe::start(&["--conntrack", "false"]);
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let storm_port = closed_port(ip);
    // `closed_port` gives this thread the same port again: the next free one.
    let single_port = (storm_port + 1..)
        .find(|&p| std::net::TcpListener::bind((ip, p)).is_ok())
        .expect("a second free port");
    let mut single_client = 0;
    for i in 0..STORM {
        refused_connect(ip, storm_port);
        if i == STORM / 2 {
            single_client = refused_connect(ip, single_port);
        }
    }
    // Until every reset is accounted for (the tail's summary follows within seconds).
    let deadline = Instant::now() + Duration::from_secs(30);
    let done = |seen: &[Value]| {
        ["sent", "received"].iter().all(|d| {
            let (full, folded, _) = accounted(seen, storm_port, d);
            full + folded >= STORM
        })
    };
    while !done(probe.seen()) && Instant::now() < deadline {
        let _ = probe.wait_for(Duration::from_millis(250), |_| false);
    }
    let metric = || metric_sum(probe.http_addr(), "probe_tcp_resets_total", &[]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric() != 2 * STORM + 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
    }
    let metric = metric();
    let records = probe.stop();

    for direction in ["sent", "received"] {
        let (full, folded, summaries) = accounted(&records, storm_port, direction);
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            format!(
                "folding: {direction}: {full} in full, {folded} folded in {summaries} summaries\n"
            )
            .as_bytes(),
        );
        assert_eq!(full + folded, STORM, "{direction}: full + folded");
        assert!(summaries > 0, "{direction}: the storm was not folded");
        assert!(
            full < STORM / 2,
            "{direction}: {full} resets went out in full"
        );
        // Each summary names the spans of the key's records that went out in full (each
        // record's `span_id`), each in one summary at most.
        let full_records = resets(&records, storm_port, direction);
        let full_spans: std::collections::HashSet<&str> = full_records
            .iter()
            .map(|r| r["span_id"].as_str().expect("a full record's span_id"))
            .collect();
        let mut named = std::collections::HashSet::new();
        for s in records.iter().filter(|r| {
            r["kind"] == "summary" && r["port"] == storm_port && r["direction"] == direction
        }) {
            for b in s["beside"].as_array().expect("beside") {
                let span = b["span_id"].as_str().unwrap();
                assert!(
                    full_spans.contains(span),
                    "{direction}: {span} is no full record's span"
                );
                assert!(named.insert(span), "{direction}: {span} named twice");
            }
        }
        assert!(
            !named.is_empty(),
            "{direction}: no summary named a full record"
        );
    }
    let single_sent = resets(&records, single_port, "sent");
    let single_received = resets(&records, single_port, "received");
    assert_eq!(single_sent.len(), 1, "the single reset (sent) in full");
    assert_eq!(
        single_received.len(),
        1,
        "the single reset (received) in full"
    );
    assert_eq!(single_sent[0]["dport"], single_client);
    assert_eq!(single_received[0]["sport"], single_client);
    assert!(
        !records
            .iter()
            .any(|r| r["kind"] == "summary" && r["port"] == single_port),
        "the single reset was folded"
    );
    assert_eq!(metric, 2 * STORM + 2, "probe_tcp_resets_total");
}
