//! Root e2e: `tcp_v4_err` (probe-ebpf/src/tcp_v4_err.rs): the ICMP error that ended an IPv4
//! connect, by type and code, on its `connect_failure` record. In a network namespace of the
//! test's, iptables REJECTs SYNs to one port with `icmp-host-unreachable` (type 3 code 1) and
//! to another with `icmp-admin-prohibited` (type 3 code 13); the socket's errno is
//! `EHOSTUNREACH` for both: only the ICMP hook tells them apart. Where no hook of
//! `connect_icmp` attaches (no kprobes nor fentry), the test says so and checks nothing.

use std::{net::SocketAddr, time::Duration};

use probe_tests::{connect::kernel_ends, *};

const HOST_UNREACHABLE: u16 = 7093;
const PROHIBITED: u16 = 7094;

#[test]
fn an_icmp_error_is_named_by_type_and_code() {
    if !require_root("tcp_v4_err::an_icmp_error_is_named_by_type_and_code") {
        return;
    }
    assert!(
        have("iptables"),
        "iptables is missing (`cargo xtask test` installs it)"
    );
    let ns = Netns::new("icmp4");
    for (port, with) in [
        (HOST_UNREACHABLE, "icmp-host-unreachable"),
        (PROHIBITED, "icmp-admin-prohibited"),
    ] {
        ns.exec(&[
            "iptables",
            "-A",
            "INPUT",
            "-p",
            "tcp",
            "--syn",
            "--dport",
            &port.to_string(),
            "-j",
            "REJECT",
            "--reject-with",
            with,
        ]);
    }
    let mut probe = Probe::start(&["--conntrack", "false", "--fold-first", "0"]);
    if probe.hook("connect_failure").is_none() || probe.hook("connect_icmp").is_none() {
        return;
    }
    let to = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let (unreachable, prohibited) = ns.enter(move || {
        (
            kernel_ends(to(HOST_UNREACHABLE), None, libc::EHOSTUNREACH),
            kernel_ends(to(PROHIBITED), None, libc::EHOSTUNREACH),
        )
    });
    for ((sport, syns), dport, code, meaning) in [
        (unreachable, HOST_UNREACHABLE, 1, "host unreachable"),
        (prohibited, PROHIBITED, 13, "administratively prohibited"),
    ] {
        let r = probe
            .wait_for(Duration::from_secs(20), |r| {
                r["kind"] == "connect_failure" && r["sport"] == sport
            })
            .unwrap_or_else(|| panic!("no connect_failure record from port {sport}"));
        for (key, want) in [
            ("family", Value::from("ipv4")),
            ("dport", dport.into()),
            ("outcome", "unreachable".into()),
            ("error", "EHOSTUNREACH".into()),
            ("syns", syns.into()),
            ("icmp_type", 3.into()),
            ("icmp_code", code.into()),
            ("icmp", meaning.into()),
        ] {
            assert_eq!(r[key], want, "{key} in {r:#}");
        }
    }
    probe.stop();
}
