//! Root e2e: `inet_sock_set_state` (probe-ebpf/src/inet_sock_set_state.rs): connects that end
//! without reaching ESTABLISHED, one `connect_failure` record each, in a network namespace of
//! the test's: SYNs dropped by iptables until the kernel gives up (`TCP_SYNCNT` 1, `ETIMEDOUT`,
//! the SYNs as the socket's `TCP_INFO` counts them), the application giving up after the first
//! retransmission (two SYNs, no error), an ICMP host unreachable (iptables REJECT), and a closed port (refused). IPv4 and
//! IPv6, exact 4-tuples, SYN counts and errors.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use probe_tests::{
    connect::{kernel_ends, socket, tcp_info},
    *,
};

const DROPPED: u16 = 7081;
const REJECTED: u16 = 7082;
const CLOSED: u16 = 7083;
/// A Service the API fake lists without endpoints, and the REJECT kube-proxy installs for it.
const SERVICE_IP: &str = "10.96.3.4";
const SERVICE_PORT: u16 = 6379;
const NODE: &str = "node-connect";

/// A non-blocking connect through the DROP rule, closed right after the first retransmission
/// (what a client's own dial timeout does). The client port.
fn application_gives_up(to: SocketAddr) -> u16 {
    let (s, port) = socket(to);
    s.set_nonblocking(true).unwrap();
    let err = s.connect(&to.into()).expect_err("in progress");
    assert_eq!(err.raw_os_error(), Some(libc::EINPROGRESS), "{err}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while tcp_info(&s).tcpi_total_retrans == 0 {
        assert!(Instant::now() < deadline, "no SYN retransmission");
        std::thread::sleep(Duration::from_millis(5));
    }
    let info = tcp_info(&s);
    assert_eq!(
        (info.tcpi_state, info.tcpi_total_retrans),
        (2, 1),
        "SYN_SENT, one retransmit"
    );
    drop(s);
    port
}

/// A connect that fails at once with `errno`. The client port.
fn fails_with(to: SocketAddr, errno: i32) -> u16 {
    let (s, port) = socket(to);
    let err = s.connect(&to.into()).expect_err("a failed connect");
    assert_eq!(err.raw_os_error(), Some(errno), "{err}");
    port
}

/// The record of the connect from `sport`.
fn record(probe: &mut Probe, sport: u16, what: &str) -> Value {
    probe
        .wait_for(Duration::from_secs(20), |r| {
            r["kind"] == "connect_failure" && r["sport"] == sport
        })
        .unwrap_or_else(|| panic!("no connect_failure record for {what} (port {sport})"))
}

/// The finding about the connect from `sport`.
fn finding(probe: &mut Probe, sport: u16) -> Value {
    probe
        .wait_for(Duration::from_secs(20), |r| {
            r["kind"] == "finding" && r["sport"] == sport
        })
        .unwrap_or_else(|| panic!("no finding for the connect from port {sport}"))
}

/// Whether the exposition `m` has the sample `sample` (name, labels and value), with or
/// without an exemplar.
fn has(m: &str, sample: &str) -> bool {
    m.lines().any(|l| {
        l == sample
            || l.strip_prefix(sample)
                .is_some_and(|rest| rest.starts_with(" #"))
    })
}

#[test]
fn failed_connects_say_how_they_ended() {
    if !require_root("inet_sock_set_state::failed_connects_say_how_they_ended") {
        return;
    }
    assert!(
        have("iptables") && have("ip6tables"),
        "iptables is missing (`cargo xtask test` installs it)"
    );
    let ns = Netns::new("connect");
    for (tool, reject) in [
        ("iptables", "icmp-host-unreachable"),
        ("ip6tables", "icmp6-addr-unreachable"),
    ] {
        let port = |p: u16| p.to_string();
        ns.exec(&[
            tool,
            "-A",
            "INPUT",
            "-p",
            "tcp",
            "--syn",
            "--dport",
            &port(DROPPED),
            "-j",
            "DROP",
        ]);
        ns.exec(&[
            tool,
            "-A",
            "INPUT",
            "-p",
            "tcp",
            "--syn",
            "--dport",
            &port(REJECTED),
            "-j",
            "REJECT",
            "--reject-with",
            reject,
        ]);
    }
    // What kube-proxy does for a Service without endpoints: its cluster IP answers with an ICMP
    // port unreachable (`KUBE-SERVICES ... has no endpoints -j REJECT`).
    ns.exec(&[
        "ip",
        "addr",
        "add",
        &format!("{SERVICE_IP}/32"),
        "dev",
        "lo",
    ]);
    ns.exec(&[
        "iptables",
        "-A",
        "INPUT",
        "-d",
        SERVICE_IP,
        "-p",
        "tcp",
        "--dport",
        &SERVICE_PORT.to_string(),
        "-j",
        "REJECT",
        "--reject-with",
        "icmp-port-unreachable",
    ]);
    let fake = KubeFake::start();
    fake.apply(
        "services",
        serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "redis", "namespace": "shop"},
            "spec": {"clusterIP": SERVICE_IP, "clusterIPs": [SERVICE_IP],
                "ports": [{"port": SERVICE_PORT}]}
        }),
    );
    let kubeconfig = fake.kubeconfig(&std::env::temp_dir());
    let mut probe = Probe::start_with_env(
        &[
            "--conntrack",
            "false",
            "--fold-first",
            "0",
            "--node-name",
            NODE,
        ],
        &[("KUBECONFIG", kubeconfig.as_os_str())],
    );
    if probe.hook("connect_failure").is_none() {
        return;
    }
    // Without the drop hook's reasons (before 5.17) a drop's reason is unknown.
    let reason = match probe.expect_if("drop_reason", "NETFILTER_DROP".into()) {
        Value::Null => "unknown".to_owned(),
        r => r.as_str().unwrap().to_owned(),
    };
    let drops_seen = probe.hook("drops").is_some();
    // No pod of this node; the Service is listed before the agent starts.
    wait_synced(probe.http_addr(), 0, Duration::from_secs(15));
    let netns = ns.inode();
    for (ip, family) in [("127.0.0.1", "ipv4"), ("::1", "ipv6")] {
        let to = |port: u16| SocketAddr::new(ip.parse().unwrap(), port);
        let ((timed_out, kernel_syns), given_up, (unreachable, icmp_syns), refused) =
            ns.enter(move || {
                let timed_out = kernel_ends(to(DROPPED), Some(1), libc::ETIMEDOUT);
                assert!(timed_out.1 >= 2, "the SYN was sent again");
                (
                    timed_out,
                    application_gives_up(to(DROPPED)),
                    kernel_ends(to(REJECTED), None, libc::EHOSTUNREACH),
                    fails_with(to(CLOSED), libc::ECONNREFUSED),
                )
            });
        let cases = [
            (
                timed_out,
                DROPPED,
                "timed_out",
                "kernel",
                Value::from("ETIMEDOUT"),
                kernel_syns,
            ),
            (
                given_up,
                DROPPED,
                "timed_out",
                "application",
                Value::Null,
                2,
            ),
            (
                unreachable,
                REJECTED,
                "unreachable",
                "kernel",
                "EHOSTUNREACH".into(),
                icmp_syns,
            ),
            (
                refused,
                CLOSED,
                "refused",
                "kernel",
                "ECONNREFUSED".into(),
                1,
            ),
        ];
        // The SYNs the DROP and REJECT rules dropped are the cause of those three.
        if drops_seen {
            for (sport, syns) in [
                (timed_out, kernel_syns),
                (given_up, 2),
                (unreachable, icmp_syns),
            ] {
                let f = finding(&mut probe, sport);
                assert_eq!(f["finding"], "connect_dropped", "{f:#}");
                assert_eq!(f["evidence"][1]["drops"][&reason], syns, "{f:#}");
                let summary = f["summary"].as_str().unwrap();
                assert!(
                    summary.contains(&format!("dropped on node {NODE}"))
                        && summary.contains(&format!("({reason} ×{syns})")),
                    "{summary}"
                );
            }
        } else {
            println!("unsupported: connect_dropped findings: no drop hook on this kernel");
        }
        for (sport, dport, outcome, closed_by, error, syns) in cases {
            let r = record(&mut probe, sport, outcome);
            assert_eq!(r["family"], family, "{r:#}");
            assert_eq!(
                (r["saddr"].as_str(), r["daddr"].as_str()),
                (Some(ip), Some(ip))
            );
            assert_eq!(r["dport"], dport, "{r:#}");
            assert_eq!(r["outcome"], outcome, "{r:#}");
            assert_eq!(r["closed_by"], closed_by, "{r:#}");
            assert_eq!(r["error"], error, "{r:#}");
            assert_eq!(r["syns"], syns, "{r:#}");
            assert_eq!(r["netns"], netns, "{r:#}");
            // Only the application's close runs in its own task.
            if closed_by == "application" {
                assert_eq!(r["pid"], std::process::id(), "{r:#}");
            }
        }
    }
    // The Service without endpoints: refused (ICMP port unreachable), and the finding names it.
    let (svc_port, svc_syns) = ns.enter(|| {
        kernel_ends(
            SocketAddr::new(SERVICE_IP.parse().unwrap(), SERVICE_PORT),
            None,
            libc::ECONNREFUSED,
        )
    });
    let r = record(&mut probe, svc_port, "the Service without endpoints");
    assert_eq!(
        (&r["outcome"], &r["syns"], &r["peer.k8s.service.name"]),
        (
            &Value::from("refused"),
            &Value::from(svc_syns),
            &Value::from("redis")
        ),
        "{r:#}"
    );
    let f = finding(&mut probe, svc_port);
    assert_eq!(f["finding"], "connect_service_no_endpoints", "{f:#}");
    assert_eq!(f["evidence"][1]["service"], "shop/redis", "{f:#}");
    assert_eq!(f["evidence"][1]["ready_endpoints"], 0, "{f:#}");
    let summary = f["summary"].as_str().unwrap();
    assert!(
        summary.contains(&format!(
            "to {SERVICE_IP}:{SERVICE_PORT} (Service shop/redis, 0 ready endpoints) refused"
        )),
        "{summary}"
    );
    // The node's own series (the test is in no pod): two of each connect, one per family,
    // once the next sweep of the kernel's counts has run.
    let series: Vec<String> = [
        ("timed_out", "ETIMEDOUT"),
        ("timed_out", "none"),
        ("unreachable", "EHOSTUNREACH"),
        ("refused", "ECONNREFUSED"),
    ]
    .iter()
    .map(|(outcome, error)| {
        // The Service's connect is a third refused one.
        let n = if *outcome == "refused" { 3 } else { 2 };
        format!(
            "probe_tcp_connect_failures_total{{outcome=\"{outcome}\",error=\"{error}\",namespace=\"\",pod=\"\",container=\"\",workload_kind=\"\",workload=\"\"}} {n}"
        )
    })
    .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut m = String::new();
    while Instant::now() < deadline {
        m = http_get(probe.http_addr(), "/metrics").2;
        if series.iter().all(|s| has(&m, s)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    probe.stop();
    for s in &series {
        assert!(has(&m, s), "{s} not in\n{m}");
    }
}
