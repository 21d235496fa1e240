//! Root e2e: the real agent's HTTP endpoints: health, status (every program attached,
//! counters that move with real resets), and Prometheus metrics that parse.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use probe_tests::*;

fn metric(body: &str, name: &str, label: (&str, &str)) -> Option<f64> {
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("metrics parse as Prometheus text");
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && s.labels.get(label.0) == Some(label.1))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

#[test]
fn every_endpoint_answers_and_counters_move() {
    if !require_root("http_endpoints::every_endpoint_answers_and_counters_move") {
        return;
    }
    let mut probe = Probe::start(&[]);
    let addr = probe.http_addr();

    let (code, _, body) = http_get(addr, "/health/live");
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let (code, _, body) = http_get(addr, "/health/ready");
    assert_eq!((code, body.as_str()), (200, "ready\n"));

    let (code, headers, body) = http_get(addr, "/health/status");
    assert_eq!(code, 200);
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "content-type" && v == "application/json")
    );
    let status: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["ready"], true);
    // Every capability, each with the hook this kernel gives it or what is lost and why;
    // the programs of a chosen hook are attached.
    let capabilities = status["capabilities"].as_array().unwrap();
    let names: Vec<&str> = capabilities
        .iter()
        .map(|c| c["capability"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "softirq_context",
            "process_exit",
            "process_fork",
            "process_exec",
            "core_signal",
            "reset_sent",
            "reset_sent_unowned",
            "reset_reason",
            "reset_received",
            "drops",
            "drop_reason",
            "http_request_head",
            "write_result",
            "wasm_write",
            "wasm_writev"
        ]
    );
    let programs = status["programs"].as_array().unwrap();
    for c in capabilities {
        assert_ne!(c["hook"].is_null(), c["error"].is_null(), "{c}");
        for p in c["programs"].as_array().unwrap() {
            let report = programs
                .iter()
                .find(|r| r["program"] == *p)
                .unwrap_or_else(|| panic!("{p} of {c} not in {programs:?}"));
            assert_eq!(report["attached"], true, "{report}");
        }
    }
    // The resets this test makes need these on every kernel of the matrix.
    for (needed, hook) in [
        ("reset_sent", "tracepoint tcp:tcp_send_reset"),
        ("reset_received", "tracepoint tcp:tcp_receive_reset"),
    ] {
        let c = capabilities
            .iter()
            .find(|c| c["capability"] == needed)
            .unwrap();
        assert_eq!(c["hook"], hook, "{c}");
    }
    assert_eq!(status["config"]["output"], "json");
    assert_eq!(status["config"]["http-addr"], "127.0.0.1:0");
    assert_eq!(status["exporter"]["state"], "running");
    let before = status["events"]["tcp_reset"].as_u64().unwrap();

    let (code, headers, metrics) = http_get(addr, "/metrics");
    assert_eq!(code, 200);
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "content-type" && v.starts_with("application/openmetrics-text"))
    );
    assert_eq!(
        metric(
            &metrics,
            "probe_program_attached",
            ("program", "tcp_send_reset")
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &metrics,
            "probe_capability",
            ("capability", "reset_received")
        ),
        Some(1.0)
    );

    // Probes and scrapes of the agent itself (what kubelet and Prometheus do on every node)
    // make no records: each close used to be a QUEUE_PURGE drop on the agent's port.
    for _ in 0..20 {
        assert_eq!(http_get(addr, "/health/live").0, 200);
    }

    // Two resets: the responder's sent one and the client's received one.
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let port = closed_port(ip);
    let client = refused_connect(ip, port);
    probe
        .wait_for(Duration::from_secs(10), |r| {
            r["direction"] == "received" && r["sport"] == client
        })
        .expect("the reset was not reported");

    let status: Value = serde_json::from_str(&http_get(addr, "/health/status").2).unwrap();
    let after = status["events"]["tcp_reset"].as_u64().unwrap();
    assert!(after >= before + 2, "tcp_reset counter {before} -> {after}");
    let metrics = http_get(addr, "/metrics").2;
    let counted = metric(&metrics, "probe_events_total", ("kind", "tcp_reset")).unwrap();
    assert!(counted >= (before + 2) as f64, "{counted}");
    assert!(metrics.trim_end().ends_with("# EOF"));

    let (code, _, _) = http_get(addr, "/nope");
    assert_eq!(code, 404);
    let skipped = http_get(addr, "/metrics")
        .2
        .lines()
        .find_map(|l| l.strip_prefix("probe_own_traffic_skipped_total "))
        .map(|v| v.trim().to_owned());
    eprintln!("own-traffic events skipped (reported by the kernel, not written): {skipped:?}");
    assert!(skipped.is_some(), "the skip counter is exported");
    let records = probe.stop();
    let own: Vec<&Value> = records
        .iter()
        .filter(|r| r["sport"] == addr.port() || r["dport"] == addr.port())
        .collect();
    assert!(
        own.is_empty(),
        "records of the agent's own endpoint: {own:#?}"
    );
}
