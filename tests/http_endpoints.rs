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
    let programs: Vec<(String, bool)> = status["programs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["program"].as_str().unwrap().to_owned(),
                p["attached"] == true,
            )
        })
        .collect();
    let mut names: Vec<&str> = programs.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "kfree_skb",
            "sched_process_exec",
            "sched_process_exit",
            "sched_process_fork",
            "signal_generate",
            "softirq_entry",
            "softirq_exit",
            "sys_enter_write",
            "sys_enter_writev",
            "sys_exit_write",
            "sys_exit_writev",
            "tcp_receive_reset",
            "tcp_send_reset",
            "tcp_sendmsg_locked"
        ]
    );
    assert!(
        programs.iter().all(|(_, attached)| *attached),
        "{programs:?}"
    );
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
    probe.stop();
}
