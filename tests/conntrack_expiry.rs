//! Root e2e: conntrack expiries (ctnetlink DESTROY events, probe-user/src/conntrack) joined with
//! what happened next. The idle-Redis failure, reproduced: a client netns, a router netns that
//! DNATs a "service" address to a server netns running a real redis-server, and the router's
//! `nf_conntrack_tcp_timeout_established` lowered to a few seconds.

use std::time::{Duration, Instant};

use probe_tests::{redis_nat::*, *};

const WAIT: Duration = Duration::from_secs(15);

/// Without a finding: passes (loudly "unsupported") only where the agent itself reports that
/// this kernel's conntrack destroy events carry no TCP state, and it then made no expiry up.
fn expiries_untold_here(probe: Probe, port: u16, what: &str) {
    let status: Value =
        serde_json::from_str(&http_get(probe.http_addr(), "/health/status").2).unwrap();
    let untold = status["conntrack"]["destroys_without_tcp_state"]
        .as_u64()
        .unwrap_or(0);
    if untold == 0 {
        panic!("{what}; records: {:#?}", probe.seen());
    }
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!(
            "\n!!!!! conntrack_expiry: unsupported on this kernel: its destroy events carry no TCP state ({untold} seen) !!!!!\n"
        )
        .as_bytes(),
    );
    let records = probe.stop();
    assert!(of_kind(&records, "conntrack_expiry", port).is_empty());
    assert!(of_kind(&records, "finding", port).is_empty());
}

fn of_kind<'a>(records: &'a [Value], kind: &str, port: u16) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| {
            r["kind"] == kind
                && (r["orig_sport"] == port || r["sport"] == port || r["dport"] == port)
        })
        .collect()
}

#[test]
fn idle_redis_connection_dies_when_its_dnat_entry_expires() {
    if !require_root("conntrack_expiry::idle_redis_connection_dies_when_its_dnat_entry_expires") {
        return;
    }
    assert!(
        have("redis-server") && have("iptables"),
        "redis-server and iptables are needed (`cargo xtask test` installs them)"
    );
    let topo = Topology::start(false);
    let path = topo.router.path();
    let mut probe = Probe::start(&[
        "--conntrack",
        "false",
        "--conntrack-netns",
        &path,
        "--conntrack-settings-interval",
        "500ms",
        "--conntrack-timestamps",
        "true",
    ]);
    let no_socket = probe.expect_if("reset_reason", "NO_SOCKET".into());
    let settings_with = |value: u64| {
        let path = path.clone();
        move |r: &Value| {
            r["kind"] == "conntrack_settings"
                && r["netns_path"] == path
                && r[TIMEOUT_SYSCTL] == value
        }
    };
    probe
        .wait_for(WAIT, settings_with(432_000))
        .expect("the router's settings with the default timeout");

    // Default timeout: an idle connection survives.
    let (mut calm, calm_port) = topo.connect();
    std::thread::sleep(Duration::from_secs(SHORT_TIMEOUT + 2));
    assert_eq!(ping(&mut calm).expect("PING after idling"), "+PONG\r\n");
    drop(calm);

    // The drifted node: the same idle time now outlives the entry.
    topo.router
        .sysctl(TIMEOUT_SYSCTL, &SHORT_TIMEOUT.to_string());
    probe
        .wait_for(WAIT, settings_with(SHORT_TIMEOUT))
        .expect("conntrack_settings did not show the changed timeout");
    let opened = Instant::now();
    let (mut idle, port) = topo.connect();
    // Past the timeout (the last packet, the client's ACK of the first PONG, left at once): the
    // PING's conntrack lookup finds the entry expired and evicts it then, if the kernel's
    // garbage collector (a work item) has not reached it yet.
    std::thread::sleep(Duration::from_millis(SHORT_TIMEOUT * 1000 + 700));
    let err = ping(&mut idle).expect_err("the PING after the expiry must fail");
    let evicted_by = opened.elapsed().as_secs_f64();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    if probe
        .wait_for(WAIT, |r| r["kind"] == "finding" && r["sport"] == port)
        .is_none()
    {
        panic!(
            "no finding for the expired flow; records: {:#?}",
            probe.seen()
        );
    }
    let records = probe.stop();

    let expiries = of_kind(&records, "conntrack_expiry", port);
    assert_eq!(expiries.len(), 1, "{expiries:#?}");
    let x = expiries[0];
    for (key, want) in [
        ("netns_path", Value::from(path.as_str())),
        ("netns", Value::from(topo.router.inode())),
        ("proto", "tcp".into()),
        ("tcp_state", "ESTABLISHED".into()),
        ("orig_saddr", CLIENT.into()),
        ("orig_sport", port.into()),
        ("orig_daddr", SERVICE.into()),
        ("orig_dport", 6379.into()),
        ("reply_saddr", BACKEND.into()),
        ("reply_sport", 6379.into()),
        ("reply_daddr", CLIENT.into()),
        ("reply_dport", port.into()),
        ("timeout_s", SHORT_TIMEOUT.into()),
        (
            "timeout_sysctl",
            "nf_conntrack_tcp_timeout_established".into(),
        ),
        ("zone", 0.into()),
        ("mark", 0.into()),
    ] {
        assert_eq!(x[key], want, "{key} in {x:#}");
    }
    assert!(
        x["status"]
            .as_array()
            .unwrap()
            .contains(&Value::from("DST_NAT")),
        "{x:#}"
    );
    // One PING, then idle: the entry cannot die before its timeout ran out, 3 s after it was
    // created (the kernel counts in jiffies: a few ms either way), and died at the latest when
    // the late PING looked it up (kernel timestamps; a few ms for the clocks' granularity).
    let lived = x["established_for_s"].as_f64().expect("established_for_s");
    assert!(
        (2.9..evicted_by + 0.02).contains(&lived),
        "lived {lived} s, evicted by {evicted_by} s"
    );

    let findings = of_kind(&records, "finding", port);
    assert_eq!(findings.len(), 1, "{findings:#?}");
    let f = findings[0];
    assert_eq!(f["finding"], "conntrack_expiry_reset");
    assert_eq!(f["node"], x["node"]);
    assert_eq!(f["netns"], x["netns"]);
    for (key, want) in [
        ("saddr", Value::from(CLIENT)),
        ("sport", port.into()),
        ("daddr", SERVICE.into()),
        ("dport", 6379.into()),
        ("backend_addr", BACKEND.into()),
        ("backend_port", 6379.into()),
        ("timeout_s", SHORT_TIMEOUT.into()),
    ] {
        assert_eq!(f[key], want, "{key} in {f:#}");
    }
    let summary = f["summary"].as_str().unwrap();
    for needle in [
        format!("{TIMEOUT_SYSCTL}={SHORT_TIMEOUT} s"),
        format!("{CLIENT}:{port} -> {SERVICE}:6379 (DNAT to {BACKEND}:6379)"),
        format!("On node {}", x["node"].as_str().unwrap()),
        "reset".to_owned(),
    ] {
        assert!(summary.contains(&needle), "{needle:?} not in {summary:?}");
    }
    let evidence = f["evidence"].as_array().unwrap();
    assert_eq!(evidence[0], *x, "the expiry is the first evidence");
    // The router's reset to the client and the client's receipt of it.
    let resets: Vec<&Value> = evidence
        .iter()
        .filter(|e| e["kind"] == "tcp_reset")
        .collect();
    assert!(
        resets.iter().any(|r| r["direction"] == "sent"
            && r["saddr"] == SERVICE
            && r["daddr"] == CLIENT
            && r["dport"] == port
            && r["netns"] == topo.router.inode()),
        "{evidence:#?}"
    );
    assert!(
        resets.iter().any(|r| r["direction"] == "received"
            && r["saddr"] == CLIENT
            && r["sport"] == port
            && r["netns"] == topo.client.inode()),
        "{evidence:#?}"
    );
    // The packet that found no entry was not DNAT'ed and met no socket on the router.
    assert!(
        resets
            .iter()
            .any(|r| r["direction"] == "sent" && r["reason"] == no_socket),
        "{evidence:#?}"
    );

    // The connection that idled under the default timeout: no expiry, no finding.
    assert!(of_kind(&records, "conntrack_expiry", calm_port).is_empty());
    assert!(of_kind(&records, "finding", calm_port).is_empty());
    drop(idle);
}

#[test]
fn a_namespace_that_cannot_be_watched_is_reported_and_the_rest_runs() {
    if !require_root(
        "conntrack_expiry::a_namespace_that_cannot_be_watched_is_reported_and_the_rest_runs",
    ) {
        return;
    }
    let ns = Netns::new("ok");
    let missing = "/run/netns/pt-does-not-exist";
    let mut probe = Probe::start(&[
        "--conntrack",
        "false",
        "--conntrack-netns",
        &format!("{missing},{}", ns.path()),
    ]);
    let good = ns.path();
    probe
        .wait_for(WAIT, |r| {
            r["kind"] == "conntrack_settings" && r["netns_path"] == good
        })
        .expect("the namespace that exists is watched");
    let (status, _, body) = http_get(probe.http_addr(), "/health/status");
    assert_eq!(status, 200);
    let doc: Value = serde_json::from_str(&body).unwrap();
    let watches = doc["conntrack"]["watches"].as_array().unwrap();
    assert_eq!(watches.len(), 2, "{watches:#?}");
    assert_eq!(watches[0]["netns"], missing);
    assert_eq!(watches[0]["subscribed"], false);
    let error = watches[0]["error"].as_str().unwrap();
    assert!(
        error.contains(missing) && error.contains("No such file"),
        "{error}"
    );
    assert_eq!(watches[1]["subscribed"], true);
    assert_eq!(watches[1]["inode"], ns.inode());
    probe.stop();
}

#[test]
fn with_invalid_packets_dropped_the_connection_dies_silently() {
    if !require_root("conntrack_expiry::with_invalid_packets_dropped_the_connection_dies_silently")
    {
        return;
    }
    assert!(
        have("redis-server") && have("iptables"),
        "redis-server and iptables are needed (`cargo xtask test` installs them)"
    );
    let topo = Topology::start(true);
    topo.router
        .sysctl(TIMEOUT_SYSCTL, &SHORT_TIMEOUT.to_string());
    let path = topo.router.path();
    let mut probe = Probe::start(&["--conntrack", "false", "--conntrack-netns", &path]);
    // Kernels before 5.17 give no drop reason: null, and the finding says so.
    let reason = probe.expect_if("drop_reason", "NETFILTER_DROP".into());
    let (mut idle, port) = topo.connect();
    std::thread::sleep(Duration::from_secs(SHORT_TIMEOUT + 2));
    idle.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let err = ping(&mut idle).expect_err("no answer after the expiry");
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "{err}"
    );
    let Some(finding) = probe.wait_for(WAIT, |r| r["kind"] == "finding" && r["sport"] == port)
    else {
        expiries_untold_here(probe, port, "no finding for the silently dropped flow");
        return;
    };
    let records = probe.stop();
    drop(idle);

    assert_eq!(finding["finding"], "conntrack_expiry_drop");
    assert_eq!(finding["timeout_s"], SHORT_TIMEOUT);
    assert!(
        finding["summary"].as_str().unwrap().contains(&format!(
            "dropped ({})",
            reason.as_str().unwrap_or("unknown reason")
        )),
        "{finding:#}"
    );
    // The PING and its retransmissions, dropped by the router's netfilter and counted per
    // flow in the kernel. (The endpoints' TCP stacks may drop a duplicate of the same flow
    // for their own reasons, e.g. TCP_RFC7323_PAWS under a slow emulated CPU: those are in
    // their namespaces, not the router's.)
    let drops: Vec<&Value> = records
        .iter()
        .filter(|r| {
            r["kind"] == "packet_drop" && r["sport"] == port && r["netns"] == topo.router.inode()
        })
        .collect();
    assert!(!drops.is_empty(), "no drop in the router's namespace");
    for d in &drops {
        assert_eq!(d["reason"], reason);
        assert_eq!(
            (d["saddr"].as_str(), d["daddr"].as_str()),
            (Some(CLIENT), Some(SERVICE))
        );
        assert_eq!(d["dport"], 6379);
    }
    assert!(
        of_kind(&records, "tcp_reset", port).is_empty(),
        "a silent death: no reset"
    );
    // Without timestamps (left off here) the age is unknown, and the finding says so by
    // omission rather than guessing.
    assert_eq!(finding["established_for_s"], Value::Null);
}
