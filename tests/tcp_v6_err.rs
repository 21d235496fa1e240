//! Root e2e: `tcp_v6_err` (probe-ebpf/src/tcp_v6_err.rs): the ICMPv6 error that ended an IPv6
//! connect, by type and code. In a network namespace of the test's, ip6tables REJECTs SYNs to
//! one port with `icmp6-addr-unreachable` (type 1 code 3) and to another with
//! `icmp6-adm-prohibited` (type 1 code 1). Where no hook of `connect_icmp` attaches, the test
//! says so and checks nothing.

use std::{net::SocketAddr, time::Duration};

use probe_tests::{connect::kernel_ends, *};

const ADDR_UNREACHABLE: u16 = 7095;
const PROHIBITED: u16 = 7096;

#[test]
fn an_icmpv6_error_is_named_by_type_and_code() {
    if !require_root("tcp_v6_err::an_icmpv6_error_is_named_by_type_and_code") {
        return;
    }
    assert!(
        have("ip6tables"),
        "ip6tables is missing (`cargo xtask test` installs it)"
    );
    let ns = Netns::new("icmp6");
    for (port, with) in [
        (ADDR_UNREACHABLE, "icmp6-addr-unreachable"),
        (PROHIBITED, "icmp6-adm-prohibited"),
    ] {
        ns.exec(&[
            "ip6tables",
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
    let to = |port| SocketAddr::new("::1".parse().unwrap(), port);
    // The kernel's errno for each code (icmpv6_err_convert): EHOSTUNREACH and EACCES.
    let (unreachable, prohibited) = ns.enter(move || {
        (
            kernel_ends(to(ADDR_UNREACHABLE), None, libc::EHOSTUNREACH),
            kernel_ends(to(PROHIBITED), None, libc::EACCES),
        )
    });
    for ((sport, syns), dport, code, outcome, error, meaning) in [
        (
            unreachable,
            ADDR_UNREACHABLE,
            3,
            "unreachable",
            "EHOSTUNREACH",
            "address unreachable",
        ),
        (
            prohibited,
            PROHIBITED,
            1,
            "unreachable",
            "EACCES",
            "administratively prohibited",
        ),
    ] {
        let r = probe
            .wait_for(Duration::from_secs(20), |r| {
                r["kind"] == "connect_failure" && r["sport"] == sport
            })
            .unwrap_or_else(|| panic!("no connect_failure record from port {sport}"));
        for (key, want) in [
            ("family", Value::from("ipv6")),
            ("dport", dport.into()),
            ("outcome", outcome.into()),
            ("error", error.into()),
            ("syns", syns.into()),
            ("icmp_type", 1.into()),
            ("icmp_code", code.into()),
            ("icmp", meaning.into()),
        ] {
            assert_eq!(r[key], want, "{key} in {r:#}");
        }
    }
    probe.stop();
}
