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
    // The whole agent: every capability is listed with its hook.
    let mut probe = Probe::start(&["--http-trace-context", "true"]);
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
            "connect_failure",
            "connect_icmp",
            "retransmits",
            "drops",
            "drop_reason",
            "http_request_head",
            "http_request_tls",
            "http_request_received",
            "http_request_tls_received",
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
            // The write gate's programs are attached only while a runtime is on the node
            // (attached_programs_are_what_the_kernel_shows).
            if report["on_demand"] != true {
                assert_eq!(report["attached"], true, "{report}");
            }
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

    // The classic text format to a client that does not ask for OpenMetrics (curl,
    // promtool); OpenMetrics, with exemplars and `# EOF`, to one that does (Prometheus).
    let (code, headers, metrics) = http_get(addr, "/metrics");
    assert_eq!(code, 200);
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "content-type" && v.starts_with("text/plain; version=0.0.4")),
        "{headers:?}"
    );
    assert!(!metrics.contains("# EOF"));
    let (code, headers, open) = http_get_with(
        addr,
        "/metrics",
        "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n",
    );
    assert_eq!(code, 200);
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "content-type" && v.starts_with("application/openmetrics-text")),
        "{headers:?}"
    );
    assert!(open.trim_end().ends_with("# EOF"));
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
    // `promtool check metrics` (Debian's prometheus package, installed by `cargo xtask test`)
    // accepts the exposition: it parses, and it follows Prometheus' naming rules.
    probe_tests::prometheus::promtool(&["check", "metrics"], &metrics);

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

/// Sets the agent's RLIMIT_NOFILE (as a node's default of 1024 has it).
fn limit_open_files(pid: u32, n: u64) {
    let limit = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: prlimit on a live pid with a valid new limit and no old-limit pointer.
    let rc = unsafe {
        libc::prlimit(
            pid as i32,
            libc::RLIMIT_NOFILE,
            &limit,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics")) as u64
}

#[test]
fn idle_and_half_sent_connections_cannot_starve_health_checks() {
    use std::io::{Read as _, Write as _};
    if !require_root("http_endpoints::idle_and_half_sent_connections_cannot_starve_health_checks") {
        return;
    }
    const CONNECTIONS: usize = 1000;
    let probe = Probe::start(&["--http-idle-timeout", "3s"]);
    let addr = probe.http_addr();
    limit_open_files(probe.pid(), 1024);
    // 1,000 connections that send nothing, or half a request head, and never finish.
    let mut open: Vec<std::net::TcpStream> = (0..CONNECTIONS)
        .map(|i| {
            let mut s = std::net::TcpStream::connect(addr).expect("connecting");
            if i % 2 == 1 {
                s.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")
                    .unwrap();
            }
            s
        })
        .collect();
    // Health checks are answered at once, however many connections are held.
    for _ in 0..5 {
        let (code, _, body) = http_get(addr, "/health/live");
        assert_eq!((code, body.as_str()), (200, "ok\n"));
    }
    // Every held connection is closed by the agent: at the cap (128 by default), or after the
    // idle timeout.
    for s in &mut open {
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut buf = [0u8; 512];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                // hyper answers a request head that timed out with 408 before it closes.
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("a held connection was not closed: {e}"),
            }
        }
    }
    let metrics = http_get(addr, "/metrics").2;
    let idle = counter(&metrics, "probe_http_connections_closed_idle_total");
    let evicted = counter(&metrics, "probe_http_connections_evicted_total");
    eprintln!("{CONNECTIONS} held connections: {evicted} evicted at the cap, {idle} closed idle");
    assert_eq!(idle + evicted, CONNECTIONS as u64, "{metrics}");
    assert!(evicted >= (CONNECTIONS - 128) as u64, "{evicted} evicted");
    assert_eq!(http_get(addr, "/health/live").0, 200);
    let (status, _, log) = probe.stop_with_log();
    assert!(status.success(), "{log}");
}

/// `bpftool -j ARGS` as JSON.
fn bpftool(args: &[&str]) -> Vec<Value> {
    let out = std::process::Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .expect("bpftool (installed by cargo xtask test)");
    assert!(
        out.status.success(),
        "bpftool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("bpftool prints JSON")
}

/// Names of the programs with an attachment now (a BPF link or a perf event), as bpftool
/// shows them.
fn attached_in_kernel() -> std::collections::BTreeSet<String> {
    let ids: std::collections::BTreeSet<u64> = bpftool(&["link", "show"])
        .into_iter()
        .chain(bpftool(&["perf", "show"]))
        .filter_map(|l| l["prog_id"].as_u64())
        .collect();
    bpftool(&["prog", "show"])
        .into_iter()
        .filter(|p| p["id"].as_u64().is_some_and(|id| ids.contains(&id)))
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect()
}

/// Every program's `attached` in /health/status and `probe_program_attached` is what the
/// kernel shows; returns the on-demand programs and whether they are attached.
fn reports_match_the_kernel(probe: &Probe) -> Vec<(String, bool)> {
    let addr = probe.http_addr();
    let status: Value = serde_json::from_str(&http_get(addr, "/health/status").2).unwrap();
    let metrics = http_get(addr, "/metrics").2;
    let kernel = attached_in_kernel();
    let mut on_demand = Vec::new();
    for p in status["programs"].as_array().unwrap() {
        let name = p["program"].as_str().unwrap();
        // bpftool shows the whole name (from BTF), else the kernel's 15 characters.
        let short: String = name.chars().take(15).collect();
        let attached = p["attached"].as_bool().unwrap();
        assert_eq!(
            attached,
            kernel.contains(name) || kernel.contains(&short),
            "{name}: reported {p}, the kernel's attached programs: {kernel:?}"
        );
        assert_eq!(
            metric(&metrics, "probe_program_attached", ("program", name)),
            Some(f64::from(u8::from(attached))),
            "{name}"
        );
        if p["on_demand"] == true {
            on_demand.push((name.to_owned(), attached));
        }
    }
    on_demand
}

#[test]
fn attached_programs_are_what_the_kernel_shows() {
    if !require_root("http_endpoints::attached_programs_are_what_the_kernel_shows") {
        return;
    }
    // The whole agent: every program it can load, the TLS uprobes included.
    let probe = Probe::start(&["--http-trace-context", "true"]);
    if write_hooks(&probe).is_null() {
        eprintln!(
            "\n!!!!! write hooks: unsupported on this kernel (no write gate): only the \
             always-attached programs are compared !!!!!\n"
        );
        assert!(reports_match_the_kernel(&probe).is_empty());
        return;
    }
    // No runtime on the node: the write gate's programs are detached, and say so.
    wait_write_hooks(&probe, "detached");
    let idle = reports_match_the_kernel(&probe);
    assert!(!idle.is_empty(), "the write gate's programs are reported");
    assert!(idle.iter().all(|(_, a)| !a), "{idle:?}");
    // A runtime appears: attached, in the kernel and in the reports.
    let warm = WarmRuntime::start(&probe);
    let busy = reports_match_the_kernel(&probe);
    assert!(busy.iter().all(|(_, a)| *a), "{busy:?}");
    assert_eq!(busy.len(), idle.len());
    // It goes away: detached again (after the gate's linger).
    drop(warm);
    wait_write_hooks(&probe, "detached");
    let after = reports_match_the_kernel(&probe);
    assert!(after.iter().all(|(_, a)| !a), "{after:?}");
    probe.stop();
}
