//! Root e2e: OTLP export to a real receiver (bin/otlp_receiver.rs: the collector's gRPC services
//! and the HTTP/protobuf endpoints, decoding real protobuf): a reset span with the exact
//! 4-tuple and kernel timestamp, a Wasm log record with the exact text, over gRPC and HTTP; a
//! collector outage costs bounded memory, every dropped span is counted, export resumes.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use probe_tests::*;

const WAIT: Duration = Duration::from_secs(15);

fn export_once(protocol: &str) {
    let mut receiver = OtlpReceiver::start(env!("CARGO_BIN_EXE_otlp_receiver"), None);
    let endpoint = match protocol {
        "grpc" => format!("http://{}", receiver.grpc),
        _ => format!("http://{}", receiver.http),
    };
    let mut probe = Probe::start(&[
        "--output",
        "json,otlp",
        "--otlp-protocol",
        protocol,
        "--otlp-endpoint",
        &endpoint,
        "--service-name",
        "probe-under-test",
    ]);
    // A runtime on the node: the write hooks are attached (see the cold-start test).
    let _warm = WarmRuntime::start(&probe);
    let pair = LingerPair::connect();
    let (client_port, server_port) = (pair.client_port, pair.server_port);
    let _server_end = pair.reset();
    let dir = TempDir::new("otlp");
    let spin = dir.copy_as("/bin/sh", "spin");
    let text = format!("hello over {protocol}");
    let out = Command::new(&spin)
        .args(["-c", &format!("echo '{text}'")])
        .output()
        .unwrap();
    assert!(out.status.success());

    let reset = probe
        .wait_for(WAIT, |r| {
            r["kind"] == "tcp_reset" && r["direction"] == "sent" && r["sport"] == client_port
        })
        .expect("the reset record");
    let span = receiver.wait_for("the reset span", |s| {
        s["signal"] == "span"
            && s["name"] == "tcp.reset.sent"
            && s["attributes"]["network.local.port"] == client_port
    });
    let log = receiver.wait_for("the Wasm log record", |l| {
        l["signal"] == "log" && l["body"] == text.as_str()
    });
    probe.stop();

    assert_eq!(
        span["transport"],
        if protocol == "grpc" { "grpc" } else { "http" }
    );
    let a = &span["attributes"];
    assert_eq!(a["network.local.address"], "127.0.0.1");
    assert_eq!(a["network.local.port"], client_port);
    assert_eq!(a["network.peer.address"], "127.0.0.1");
    assert_eq!(a["network.peer.port"], server_port);
    assert_eq!(a["network.transport"], "tcp");
    assert_eq!(a["network.type"], "ipv4");
    assert_eq!(a["isolation.layer"], "kernel.tcp");
    assert_eq!(a["tcp.reset.reason"], reset["reason"]);
    // The kernel's timestamp, as the JSON record has it.
    assert_eq!(span["start_time_unix_nano"], reset["time_unix_nano"]);
    assert_eq!(span["end_time_unix_nano"], reset["time_unix_nano"]);
    assert_eq!(
        span["parent_span_id"], "",
        "no traceparent: a trace of its own"
    );
    assert_eq!(span["trace_id"].as_str().unwrap().len(), 32);
    let resource = &span["resource"];
    assert_eq!(resource["service.name"], "probe-under-test");
    assert_eq!(resource["os.type"], "linux");
    assert!(resource["host.name"].is_string() && resource["k8s.node.name"].is_string());

    assert_eq!(log["event_name"], "wasm.output");
    assert_eq!(log["severity_text"], "INFO");
    assert_eq!(log["attributes"]["log.iostream"], "stdout");
    assert_eq!(log["attributes"]["isolation.layer"], "wasm.runtime");
    assert_eq!(log["attributes"]["probe.runtime"], "spin");
    assert_eq!(log["resource"]["service.name"], "probe-under-test");
}

#[test]
fn reset_span_and_wasm_log_over_grpc() {
    if !require_root("otlp_export::reset_span_and_wasm_log_over_grpc") {
        return;
    }
    export_once("grpc");
}

#[test]
fn reset_span_and_wasm_log_over_http() {
    if !require_root("otlp_export::reset_span_and_wasm_log_over_http") {
        return;
    }
    export_once("http/protobuf");
}

/// https:// collectors, verified against the CA in SSL_CERT_FILE (as the image sets it).
fn reset_span_over_tls(protocol: &str) {
    let dir = TempDir::new(&format!("otlp-tls-{protocol}"));
    let ca = tls_certificates(&dir.0);
    let mut receiver = OtlpReceiver::start_tls(env!("CARGO_BIN_EXE_otlp_receiver"), &dir.0);
    let (endpoint, transport) = match protocol {
        "grpc" => (format!("https://{}", receiver.grpc), "grpcs"),
        _ => (format!("https://{}", receiver.http), "https"),
    };
    let mut probe = Probe::start_with_env(
        &[
            "--output",
            "json,otlp",
            "--otlp-protocol",
            protocol,
            "--otlp-endpoint",
            &endpoint,
        ],
        &[("SSL_CERT_FILE", ca.as_os_str())],
    );
    let pair = LingerPair::connect();
    let (client_port, server_port) = (pair.client_port, pair.server_port);
    let _server_end = pair.reset();
    probe
        .wait_for(WAIT, |r| {
            r["kind"] == "tcp_reset" && r["direction"] == "sent" && r["sport"] == client_port
        })
        .expect("the reset record");
    let span = receiver.wait_for("the reset span over TLS", |s| {
        s["signal"] == "span"
            && s["name"] == "tcp.reset.sent"
            && s["attributes"]["network.local.port"] == client_port
    });
    probe.stop();
    assert_eq!(span["transport"], transport);
    assert_eq!(span["attributes"]["network.peer.port"], server_port);
}

#[test]
fn reset_span_over_grpc_with_tls() {
    if !require_root("otlp_export::reset_span_over_grpc_with_tls") {
        return;
    }
    reset_span_over_tls("grpc");
}

#[test]
fn reset_span_over_http_with_tls() {
    if !require_root("otlp_export::reset_span_over_http_with_tls") {
        return;
    }
    reset_span_over_tls("http/protobuf");
}

fn metric(addr: std::net::SocketAddr, name: &str, signal: &str) -> u64 {
    let (_, _, body) = http_get(addr, "/metrics");
    body.lines()
        .find(|l| l.starts_with(name) && l.contains(&format!("signal=\"{signal}\"")))
        .and_then(|l| l.split(" # ").next()?.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_collector_outage_is_bounded_counted_and_survived() {
    if !require_root("otlp_export::a_collector_outage_is_bounded_counted_and_survived") {
        return;
    }
    let receiver = OtlpReceiver::start(env!("CARGO_BIN_EXE_otlp_receiver"), None);
    let grpc = receiver.grpc.clone();
    let ports: Vec<u16> = [&receiver.grpc, &receiver.http]
        .iter()
        .map(|a| a.rsplit(':').next().unwrap().parse().unwrap())
        .collect();
    let mut probe = Probe::start(&[
        "--output",
        "json,otlp",
        "--otlp-endpoint",
        &format!("http://{grpc}"),
        "--otlp-queue-size",
        "50",
        "--otlp-timeout",
        "500",
        "--conntrack",
        "false",
        // Every reset a span (no folding, no budget): the queue under test needs the volume.
        "--fold-first",
        "0",
        "--otlp-max-spans",
        "0",
    ]);
    let http = probe.http_addr();
    drop(receiver); // The collector goes away.

    // 300 refused connects: 600 resets, far more spans than the queue holds.
    let ip = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    let port = closed_port(ip);
    for _ in 0..300 {
        refused_connect(ip, port);
    }
    let _ = probe.wait_for(Duration::from_secs(2), |_| false);
    let dropped = metric(http, "probe_otlp_dropped_total", "spans");
    assert!(dropped >= 500, "only {dropped} spans counted as dropped");
    let (_, _, status) = http_get(http, "/health/status");
    let status: Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["exporter"]["state"], "retrying", "{status:#}");
    assert!(
        status["exporter"]["last_error"]
            .as_str()
            .is_some_and(|e| e.starts_with("otlp:")),
        "{status:#}"
    );

    // The collector comes back on the same address: the queue drains, new spans flow.
    let exported_before = metric(http, "probe_otlp_exported_total", "spans");
    let mut receiver = OtlpReceiver::start(
        env!("CARGO_BIN_EXE_otlp_receiver"),
        Some((ports[0], ports[1])),
    );
    // Export resumes at the next retry (backoff up to 5 s); until the queue drained, new spans
    // may find it full and be dropped (counted), so the new reset is made after that.
    let resumed = Instant::now() + Duration::from_secs(30);
    while metric(http, "probe_otlp_exported_total", "spans") == exported_before {
        assert!(
            Instant::now() < resumed,
            "export did not resume after the outage"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let pair = LingerPair::connect();
    let client_port = pair.client_port;
    let _server_end = pair.reset();
    receiver.wait_for("a span after the outage", |s| {
        s["name"] == "tcp.reset.sent" && s["attributes"]["network.local.port"] == client_port
    });
    // Every span is accounted for: exported + dropped = spans made (one per event record of
    // these kinds; findings do not occur here).
    let deadline = Instant::now() + WAIT;
    loop {
        let _ = probe.wait_for(Duration::from_millis(200), |_| false);
        let resets = probe
            .seen()
            .iter()
            .filter(|r| {
                [
                    "tcp_reset",
                    "connect_failure",
                    "packet_drop",
                    "core_signal",
                    "wasm_output",
                    "conntrack_expiry",
                ]
                .contains(&r["kind"].as_str().unwrap_or(""))
            })
            .count() as u64;
        let exported = metric(http, "probe_otlp_exported_total", "spans");
        let dropped = metric(http, "probe_otlp_dropped_total", "spans");
        if exported + dropped == resets {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "exported {exported} + dropped {dropped} != {resets} spans; kinds seen: {:?}",
            probe
                .seen()
                .iter()
                .map(|r| r["kind"].as_str().unwrap_or(""))
                .collect::<std::collections::BTreeSet<_>>()
        );
    }
    probe.stop();
}

#[test]
fn a_black_holed_collector_does_not_hold_shutdown_and_its_losses_are_counted() {
    if !require_root(
        "otlp_export::a_black_holed_collector_does_not_hold_shutdown_and_its_losses_are_counted",
    ) {
        return;
    }
    // A collector that accepts connections (the kernel completes the handshake) and never
    // answers: each export attempt would hang for --otlp-timeout (10 s).
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", hole.local_addr().unwrap());
    let mut probe = Probe::start(&[
        "--output",
        "otlp",
        "--otlp-endpoint",
        &endpoint,
        "--shutdown-timeout",
        "5s",
        "--conntrack",
        "false",
    ]);
    let ip = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    let port = closed_port(ip);
    let clients: Vec<u16> = (0..5).map(|_| refused_connect(ip, port)).collect();
    for c in &clients {
        probe
            .wait_for(WAIT, |r| r["direction"] == "received" && r["sport"] == *c)
            .expect("a reset was not reported");
    }
    let started = Instant::now();
    let (status, _, log) = probe.stop_with_log();
    let took = started.elapsed();
    assert!(status.success(), "exit {status}:\n{log}");
    assert!(
        took < Duration::from_secs(6),
        "shutdown took {took:?} with --shutdown-timeout 5s:\n{log}"
    );
    // The last word on OTLP losses names what the collector never got: at least the spans of
    // the ten resets (sent and received) made here.
    let line = log
        .lines()
        .find(|l| l.contains("could not be delivered"))
        .unwrap_or_else(|| panic!("no line counting the undelivered spans:\n{log}"));
    let spans: u64 = line
        .split("shutdown: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(spans >= 2 * clients.len() as u64, "{line}");
    drop(hole);
}

/// The agent exporting HTTP/protobuf to a receiver with `faults`, batches sent 200 ms after
/// their first record; no conntrack (its settings would add log records).
fn against_faulty_collector(faults: &str) -> (Probe, OtlpReceiver) {
    let receiver = OtlpReceiver::start_faulty(env!("CARGO_BIN_EXE_otlp_receiver"), faults);
    let probe = Probe::start(&[
        "--output",
        "json,otlp",
        "--otlp-protocol",
        "http/protobuf",
        "--otlp-endpoint",
        &format!("http://{}", receiver.http),
        "--otlp-batch-delay",
        "200ms",
        "--conntrack",
        "false",
    ]);
    (probe, receiver)
}

/// What happened to the spans of `connects` refused connects (two resets each), once every
/// one is accounted for: (spans made, exported, dropped, the receiver's lines).
fn settle(
    probe: &mut Probe,
    receiver: &mut OtlpReceiver,
    connects: usize,
) -> (u64, u64, u64, Vec<Value>) {
    let ip = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    let port = closed_port(ip);
    let clients: Vec<u16> = (0..connects).map(|_| refused_connect(ip, port)).collect();
    for c in &clients {
        probe
            .wait_for(WAIT, |r| r["direction"] == "received" && r["sport"] == *c)
            .expect("a reset was not reported");
    }
    let http = probe.http_addr();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // Each refused connect makes two resets and a connect failure: a span each.
        let made = probe
            .seen()
            .iter()
            .filter(|r| r["kind"] == "tcp_reset" || r["kind"] == "connect_failure")
            .count() as u64;
        let exported = metric(http, "probe_otlp_exported_total", "spans");
        let dropped = metric(http, "probe_otlp_dropped_total", "spans");
        let lines = receiver.collect(Duration::from_millis(300)).to_vec();
        let received = lines.iter().filter(|l| l["signal"] == "span").count() as u64;
        if exported + dropped == made && received == exported {
            return (made, exported, dropped, lines);
        }
        assert!(
            Instant::now() < deadline,
            "made {made}, exported {exported}, dropped {dropped}, received {received}"
        );
        let _ = probe.wait_for(Duration::from_millis(200), |_| false);
    }
}

fn requests(lines: &[Value], path: &str) -> Vec<Value> {
    lines
        .iter()
        .filter(|l| l["signal"] == "request" && l["path"] == path)
        .cloned()
        .collect()
}

/// `probe_otlp_rejected_total{signal="spans",cause}`.
fn rejected(http: std::net::SocketAddr, cause: &str) -> u64 {
    let body = http_get(http, "/metrics").2;
    body.lines()
        .filter(|l| l.starts_with("probe_otlp_rejected_total{"))
        .filter(|l| l.contains("signal=\"spans\"") && l.contains(&format!("cause=\"{cause}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[test]
fn a_batch_the_collector_refuses_for_good_is_dropped_once_and_counted() {
    if !require_root(
        "otlp_export::a_batch_the_collector_refuses_for_good_is_dropped_once_and_counted",
    ) {
        return;
    }
    // The collector answers the first request with 400 Bad Request: not retryable.
    let (mut probe, mut receiver) = against_faulty_collector("status=400:1");
    let (made, exported, dropped, lines) = settle(&mut probe, &mut receiver, 6);
    let http = probe.http_addr();
    let traces = requests(&lines, "/v1/traces");
    let refused: Vec<&Value> = traces.iter().filter(|r| r["status"] == 400).collect();
    assert_eq!(
        refused.len(),
        1,
        "the refused batch was sent again: {traces:#?}"
    );
    let in_refused = refused[0]["records"].as_u64().unwrap();
    assert!(in_refused >= 1);
    assert_eq!(dropped, in_refused, "dropped: exactly the refused batch");
    assert_eq!(rejected(http, "rejected"), in_refused);
    assert_eq!(exported + in_refused, made);
    assert!(
        traces
            .iter()
            .filter(|r| r["status"] != 400)
            .all(|r| r["status"] == 200)
    );
    let (_, _, log) = probe.stop_with_log();
    assert!(log.contains("dropped, not retried: HTTP 400"), "{log}");
}

#[test]
fn a_batch_too_large_is_split_and_a_record_too_large_is_dropped() {
    if !require_root("otlp_export::a_batch_too_large_is_split_and_a_record_too_large_is_dropped") {
        return;
    }
    // 413 above 2,000 bytes: a batch of a dozen reset spans does not fit, a few do.
    let (mut probe, mut receiver) = against_faulty_collector("max-body=2000");
    let (made, exported, dropped, lines) = settle(&mut probe, &mut receiver, 8);
    let traces = requests(&lines, "/v1/traces");
    assert_eq!(
        (exported, dropped),
        (made, 0),
        "every span arrives: {traces:#?}"
    );
    assert!(traces.iter().any(|r| r["status"] == 413), "{traces:#?}");
    for r in traces.iter().filter(|r| r["status"] == 200) {
        assert!(r["bytes"].as_u64().unwrap() <= 2000, "{r}");
    }
    assert_eq!(rejected(probe.http_addr(), "too_large"), 0);
    probe.stop();

    // 413 above 100 bytes: no span fits alone; each is dropped once and counted.
    let (mut probe, mut receiver) = against_faulty_collector("max-body=100");
    let (made, exported, dropped, lines) = settle(&mut probe, &mut receiver, 3);
    assert_eq!((exported, dropped), (0, made));
    assert_eq!(rejected(probe.http_addr(), "too_large"), made);
    let singles = requests(&lines, "/v1/traces")
        .iter()
        .filter(|r| r["records"] == 1)
        .count() as u64;
    assert_eq!(singles, made, "each span was tried alone exactly once");
    probe.stop();
}

#[test]
fn retry_after_is_honoured() {
    if !require_root("otlp_export::retry_after_is_honoured") {
        return;
    }
    // 503 with Retry-After: 2 for the first request; then the collector takes everything.
    let (mut probe, mut receiver) = against_faulty_collector("status=503:1:2");
    let (made, exported, dropped, lines) = settle(&mut probe, &mut receiver, 4);
    assert_eq!((exported, dropped), (made, 0), "retried, nothing lost");
    let all: Vec<&Value> = lines.iter().filter(|l| l["signal"] == "request").collect();
    assert_eq!(all[0]["status"], 503, "{all:#?}");
    let (first, next) = (
        all[0]["at_ms"].as_u64().unwrap(),
        all[1]["at_ms"].as_u64().unwrap(),
    );
    assert!(
        next >= first + 2000,
        "the next request came {} ms after the 503 with Retry-After: 2",
        next - first
    );
    assert!(
        all[1]["records"].as_u64() >= all[0]["records"].as_u64(),
        "the refused batch is in the next request: {all:#?}"
    );
    probe.stop();
}

#[test]
fn an_untrusted_collector_certificate_is_named() {
    if !require_root("otlp_export::an_untrusted_collector_certificate_is_named") {
        return;
    }
    for protocol in ["grpc", "http/protobuf"] {
        let dir = TempDir::new(&format!("otlp-untrusted-{}", protocol.replace('/', "-")));
        let other = TempDir::new(&format!("otlp-other-ca-{}", protocol.replace('/', "-")));
        tls_certificates(&dir.0);
        // The node trusts another CA than the one that signed the collector's certificate.
        let other_ca = tls_certificates(&other.0);
        let receiver = OtlpReceiver::start_tls(env!("CARGO_BIN_EXE_otlp_receiver"), &dir.0);
        let endpoint = match protocol {
            "grpc" => format!("https://{}", receiver.grpc),
            _ => format!("https://{}", receiver.http),
        };
        let probe = Probe::start_with_env(
            &[
                "--output",
                "json,otlp",
                "--otlp-protocol",
                protocol,
                "--otlp-endpoint",
                &endpoint,
                "--otlp-batch-delay",
                "0ms",
            ],
            &[("SSL_CERT_FILE", other_ca.as_os_str())],
        );
        let ip = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
        refused_connect(ip, closed_port(ip));
        let deadline = Instant::now() + WAIT;
        let error = loop {
            let status: Value =
                serde_json::from_str(&http_get(probe.http_addr(), "/health/status").2).unwrap();
            if status["exporter"]["state"] == "retrying" {
                break status["exporter"]["last_error"]
                    .as_str()
                    .unwrap()
                    .to_owned();
            }
            assert!(Instant::now() < deadline, "no failed export: {status:#}");
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(
            error.contains("invalid peer certificate"),
            "{protocol}: the error does not name the certificate problem: {error}"
        );
        let (_, _, log) = probe.stop_with_log();
        assert!(
            log.contains("invalid peer certificate"),
            "{protocol}: {log}"
        );
    }
}

#[test]
fn over_the_otlp_budget_records_fold_into_exact_summaries_and_json_keeps_them_all() {
    if !require_root(
        "otlp_export::over_the_otlp_budget_records_fold_into_exact_summaries_and_json_keeps_them_all",
    ) {
        return;
    }
    let mut receiver = OtlpReceiver::start(env!("CARGO_BIN_EXE_otlp_receiver"), None);
    let endpoint = format!("http://{}", receiver.grpc);
    let mut probe = Probe::start(&[
        "--output",
        "json,otlp",
        "--otlp-endpoint",
        &endpoint,
        "--otlp-batch-delay",
        "100ms",
        "--conntrack",
        "false",
        // Every reset a record (no kernel folding): only the budget bounds the spans.
        "--fold-first",
        "0",
        "--otlp-max-spans",
        "20",
    ]);
    let http = probe.http_addr();
    // 300 refused connects: 600 resets at once, far over 20 spans/s.
    let ip = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    let port = closed_port(ip);
    for _ in 0..300 {
        refused_connect(ip, port);
    }
    let on_port =
        |r: &Value| r["kind"] == "tcp_reset" && (r["sport"] == port || r["dport"] == port);
    let deadline = Instant::now() + WAIT;
    while probe.seen().iter().filter(|r| on_port(r)).count() < 600 {
        assert!(Instant::now() < deadline, "JSON did not get all 600 resets");
        let _ = probe.wait_for(Duration::from_millis(200), |_| false);
    }
    // The summaries of the budget go out once a second: every reset and every connect
    // failure (one per refused connect) is a span or in one.
    let spans_on_port = |seen: &[Value], prefix: &str| {
        seen.iter()
            .filter(|s| {
                s["signal"] == "span"
                    && s["name"].as_str().is_some_and(|n| n.starts_with(prefix))
                    && (s["attributes"]["network.local.port"] == port
                        || s["attributes"]["network.peer.port"] == port)
            })
            .count() as u64
    };
    let folded = |seen: &[Value], kind: &str| -> u64 {
        seen.iter()
            .filter(|s| {
                s["signal"] == "span"
                    && s["attributes"]["probe.summary.folded_by"] == "otlp_budget"
                    && s["attributes"]["probe.summary.kind"] == kind
            })
            .filter_map(|s| s["attributes"]["probe.summary.count"].as_u64())
            .sum()
    };
    let deadline = Instant::now() + WAIT;
    let (resets, connects) = loop {
        let seen = receiver.collect(Duration::from_millis(300));
        let resets = (spans_on_port(seen, "tcp.reset."), folded(seen, "tcp_reset"));
        let connects = (
            spans_on_port(seen, "tcp.connect.failed"),
            folded(seen, "connect_failure"),
        );
        if resets.0 + resets.1 >= 600 && connects.0 + connects.1 >= 300
            || Instant::now() >= deadline
        {
            break (resets, connects);
        }
    };
    assert_eq!(
        resets.0 + resets.1,
        600,
        "resets: {} spans in full, {} in summaries",
        resets.0,
        resets.1
    );
    assert_eq!(
        connects.0 + connects.1,
        300,
        "connect failures: {} spans in full, {} in summaries",
        connects.0,
        connects.1
    );
    // One second's burst, and what the budget earned while the connects ran.
    let full = resets.0 + connects.0;
    assert!((20..300).contains(&full), "{full} spans in full");
    assert_eq!(
        metric_sum(http, "probe_otlp_over_budget_records_total", &[]),
        resets.1 + connects.1
    );
    let _ = probe.stop();
}

/// The sum of the points of the latest export of OTLP metric `name` whose points carry
/// `label=value` (all points when `label` is empty), and that export.
fn latest_sum(seen: &[Value], name: &str, label: (&str, &str)) -> Option<(u64, Value)> {
    let m = seen
        .iter()
        .rev()
        .find(|l| l["signal"] == "metric" && l["name"] == name)?;
    let sum = m["points"]
        .as_array()?
        .iter()
        .filter(|p| label.0.is_empty() || p["attributes"][label.0] == label.1)
        .filter_map(|p| p["value"].as_u64())
        .sum();
    Some((sum, m.clone()))
}

#[test]
fn the_event_metrics_are_exported_as_cumulative_sums_with_exemplars_of_exported_spans() {
    if !require_root(
        "otlp_export::the_event_metrics_are_exported_as_cumulative_sums_with_exemplars_of_exported_spans",
    ) {
        return;
    }
    let mut receiver = OtlpReceiver::start(env!("CARGO_BIN_EXE_otlp_receiver"), None);
    let endpoint = format!("http://{}", receiver.http);
    let mut probe = Probe::start(&[
        "--output",
        "json,otlp",
        "--otlp-protocol",
        "http/protobuf",
        "--otlp-endpoint",
        &endpoint,
        "--otlp-batch-delay",
        "100ms",
        "--otlp-metrics-interval",
        "1s",
        "--conntrack",
        "false",
    ]);
    let http = probe.http_addr();
    let ip = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    let port = closed_port(ip);
    for _ in 0..5 {
        refused_connect(ip, port);
    }
    let sent = probe
        .wait_for(WAIT, |r| {
            r["kind"] == "tcp_reset" && r["direction"] == "sent" && r["sport"] == port
        })
        .expect("a reset record");
    // Until an export equals /metrics (the node may make other resets meanwhile: both count
    // them), with each direction's five.
    let deadline = Instant::now() + WAIT;
    let (otlp, export) = loop {
        let want = metric_sum(http, "probe_tcp_resets_total", &[]);
        let seen = receiver.collect(Duration::from_millis(1200));
        if let Some((got, export)) = latest_sum(seen, "probe.tcp.resets", ("", ""))
            && got == want
            && want >= 10
        {
            break (got, export);
        }
        assert!(
            Instant::now() < deadline,
            "no OTLP export of probe.tcp.resets equal to /metrics ({want}); got {:#?}",
            latest_sum(
                receiver.collect(Duration::ZERO),
                "probe.tcp.resets",
                ("", "")
            )
        );
    };
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("otlp metrics: probe.tcp.resets {otlp} = probe_tcp_resets_total\n").as_bytes(),
    );
    assert_eq!(export["type"], "sum");
    assert_eq!(export["monotonic"], true);
    assert_eq!(export["temporality"], 2, "cumulative");
    assert_eq!(export["unit"], "{event}");
    let sent_sum = latest_sum(
        std::slice::from_ref(&export),
        "probe.tcp.resets",
        ("direction", "sent"),
    )
    .unwrap()
    .0;
    assert_eq!(
        sent_sum,
        metric_sum(http, "probe_tcp_resets_total", &["direction=\"sent\""])
    );
    for p in export["points"].as_array().unwrap() {
        assert!(
            p["start_time_unix_nano"].as_u64() <= p["time_unix_nano"].as_u64(),
            "{p}"
        );
    }
    // An exemplar names a span the receiver got: the sent reset's own (its record's span_id)
    // or a later one of that series.
    let spans: Vec<String> = receiver
        .collect(Duration::from_millis(500))
        .iter()
        .filter(|s| s["signal"] == "span")
        .filter_map(|s| s["span_id"].as_str().map(str::to_owned))
        .collect();
    let exemplars: Vec<String> = export["points"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["exemplars"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e["span_id"].as_str().map(str::to_owned))
        .collect();
    assert!(!exemplars.is_empty(), "no exemplar: {export:#}");
    assert!(
        exemplars.iter().any(|e| spans.contains(e)),
        "no exemplar names a received span: {exemplars:?}"
    );
    assert!(
        spans.contains(&sent["span_id"].as_str().unwrap().to_owned()),
        "the record's span_id is its span's"
    );
    let _ = probe.stop();
}
