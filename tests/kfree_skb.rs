//! Root e2e: `kfree_skb` (probe-ebpf/src/kfree_skb.rs): TCP packets the kernel drops, counted
//! per flow and drop reason.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use probe_tests::*;

const PORT: &str = "7070";

/// Connects through a DROP rule and gives up right after the first SYN retransmission: exactly
/// two SYNs are dropped (the kernel's retransmission schedule does not matter). Returns the
/// client port.
fn dropped_connect(to: SocketAddr) -> u16 {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(to), Type::STREAM, None).expect("socket");
    let local = SocketAddr::new(to.ip(), 0);
    s.bind(&local.into()).expect("bind");
    let port = s.local_addr().unwrap().as_socket().unwrap().port();
    s.set_nonblocking(true).unwrap();
    let err = s
        .connect(&to.into())
        .expect_err("a non-blocking connect is in progress");
    assert_eq!(err.raw_os_error(), Some(libc::EINPROGRESS), "{err}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info = probe_tests::connect::tcp_info(&s);
        assert_eq!(info.tcpi_state, 2, "still SYN_SENT");
        if info.tcpi_total_retrans >= 1 {
            assert_eq!(info.tcpi_total_retrans, 1);
            break;
        }
        assert!(Instant::now() < deadline, "no SYN retransmission");
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(s);
    port
}

fn drops_of(records: &[Value], sport: u16) -> Vec<Value> {
    records
        .iter()
        .filter(|r| r["kind"] == "packet_drop" && r["sport"] == sport)
        .cloned()
        .collect()
}

#[test]
fn netfilter_drops_are_counted_per_flow_and_reason() {
    if !require_root("kfree_skb::netfilter_drops_are_counted_per_flow_and_reason") {
        return;
    }
    assert!(
        have("iptables") && have("ip6tables"),
        "iptables is missing (`cargo xtask test` installs it)"
    );
    let ns = Netns::new("drop");
    for tool in ["iptables", "ip6tables"] {
        ns.exec(&[
            tool, "-A", "INPUT", "-p", "tcp", "--dport", PORT, "-j", "DROP",
        ]);
    }
    let mut probe = Probe::start(&["--conntrack", "false"]);
    let reason = probe.expect_if("drop_reason", "NETFILTER_DROP".into());
    let (v4, v6) = ns.enter(|| {
        (
            dropped_connect("127.0.0.1:7070".parse().unwrap()),
            dropped_connect("[::1]:7070".parse().unwrap()),
        )
    });
    // Both SYNs of each flow: the second may only be visible in the kernel map (read at most
    // once per second while the flow is active).
    let deadline = Instant::now() + Duration::from_secs(10);
    let total = |records: &[Value], port| -> u64 {
        drops_of(records, port)
            .iter()
            .map(|r| r["count"].as_u64().unwrap())
            .sum()
    };
    loop {
        let _ = probe.wait_for(Duration::from_millis(200), |_| false);
        let seen = probe.seen();
        if total(seen, v4) >= 2 && total(seen, v6) >= 2 || Instant::now() > deadline {
            break;
        }
    }
    // probe_packet_drops_total adds up every drop record's count (no pod here).
    let written: u64 = probe
        .seen()
        .iter()
        .filter(|r| r["kind"] == "packet_drop")
        .map(|r| r["count"].as_u64().unwrap())
        .sum();
    let counted = wait_metric(probe.http_addr(), "probe_packet_drops_total", &[], written);
    assert_eq!(counted, written, "probe_packet_drops_total");
    let records = probe.stop();

    for (port, family, addr) in [(v4, "ipv4", "127.0.0.1"), (v6, "ipv6", "::1")] {
        let drops = drops_of(&records, port);
        assert!(
            (1..=2).contains(&drops.len()),
            "one or two records for two drops: {drops:#?}"
        );
        assert_eq!(total(&records, port), 2, "{drops:#?}");
        for d in &drops {
            assert_eq!(d["family"], family);
            assert_eq!(d["saddr"], addr);
            assert_eq!(d["daddr"], addr);
            assert_eq!(d["dport"], 7070);
            assert_eq!(d["reason"], reason);
            assert_eq!(d["netns"], ns.inode());
        }
    }
}
