use std::net::IpAddr;

use super::*;
use crate::{
    decode::Common,
    model::{Direction, Family, PacketDrop, TcpReset},
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn record(body: Body) -> Record {
    Record {
        time_unix_nano: 1,
        kind: body.kind(),
        node: "node-3".into(),
        common: Common::none(),
        body,
        k8s: None,
        trace: None,
        span: crate::model::OwnSpan::UNASSIGNED,
    }
}

/// Client 10.77.1.2:40000 -> service 10.77.9.9:6379, DNAT'ed to 10.77.2.2:6379.
fn expiry(client_port: u16) -> Record {
    record(Body::ConntrackExpiry(Box::new(ConntrackExpiry {
        netns_path: "/run/netns/router".into(),
        proto: "tcp".into(),
        tcp_state: Some("ESTABLISHED".into()),
        orig_saddr: ip("10.77.1.2"),
        orig_sport: client_port,
        orig_daddr: ip("10.77.9.9"),
        orig_dport: 6379,
        reply_saddr: ip("10.77.2.2"),
        reply_sport: 6379,
        reply_daddr: ip("10.77.1.2"),
        reply_dport: client_port,
        timeout_s: Some(3),
        timeout_sysctl: Some("nf_conntrack_tcp_timeout_established".into()),
        established_for_s: Some(7.5),
        zone: 0,
        mark: 0,
        status: vec!["ASSURED".into(), "DST_NAT".into()],
        conntrack_id: Some(1),
        orig_packets: None,
        orig_bytes: None,
        reply_packets: None,
        reply_bytes: None,
        start_unix_nano: None,
        stop_unix_nano: None,
        destroyed_unix_nano: None,
    })))
}

fn reset(local: (&str, u16), remote: (&str, u16), direction: Direction) -> Record {
    record(Body::TcpReset(TcpReset {
        direction,
        family: Family::Ipv4,
        saddr: ip(local.0),
        sport: local.1,
        daddr: ip(remote.0),
        dport: remote.1,
        tcp_state: None,
        reason: Some("NO_SOCKET".into()),
        socket_cookie: None,
    }))
}

fn drop(src: (&str, u16), dst: (&str, u16), reason: &str) -> Record {
    record(Body::PacketDrop(Box::new(PacketDrop {
        family: Family::Ipv4,
        saddr: ip(src.0),
        sport: src.1,
        daddr: ip(dst.0),
        dport: dst.1,
        reason: Some(reason.into()),
        count: 1,
        key: probe_common::DropKey {
            saddr: [0; 16],
            daddr: [0; 16],
            sport: 0,
            dport: 0,
            family: 2,
            _pad: 0,
            reason: 0,
            netns: 0,
        },
    })))
}

const WINDOW: Duration = Duration::from_secs(60);

#[test]
fn expiry_then_reset_and_drop_yield_one_reset_finding() {
    let mut c = FlowCorrelator::new(WINDOW, 16);
    let t0 = Instant::now();
    c.observe(expiry(40000), t0);
    // The router answered the client's next packet with a reset, seen from both ends.
    c.observe(
        drop(("10.77.1.2", 40000), ("10.77.9.9", 6379), "NO_SOCKET"),
        t0,
    );
    c.observe(
        reset(("10.77.9.9", 6379), ("10.77.1.2", 40000), Direction::Sent),
        t0,
    );
    c.observe(
        reset(
            ("10.77.1.2", 40000),
            ("10.77.9.9", 6379),
            Direction::Received,
        ),
        t0 + Duration::from_millis(10),
    );
    assert!(c.due(t0 + Duration::from_millis(500), "node-3").is_empty());
    let found = c.due(t0 + GRACE, "node-3");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].0, None);
    let f = &found[0].1;
    assert_eq!(f.finding, "conntrack_expiry_reset");
    assert_eq!(f.evidence.len(), 4);
    assert_eq!(f.evidence[0].record().unwrap().kind, "conntrack_expiry");
    assert_eq!(f.evidence[1].record().unwrap().kind, "packet_drop");
    assert_eq!((f.saddr, f.sport), (Some(ip("10.77.1.2")), Some(40000)));
    assert_eq!((f.daddr, f.dport), (Some(ip("10.77.9.9")), Some(6379)));
    assert_eq!(
        (f.backend_addr, f.backend_port),
        (Some(ip("10.77.2.2")), Some(6379))
    );
    assert_eq!(f.timeout_s, Some(3));
    assert_eq!(
        f.summary,
        "On node node-3 (/run/netns/router) the conntrack entry of 10.77.1.2:40000 -> \
         10.77.9.9:6379 (DNAT to 10.77.2.2:6379), established for 8 s, expired after the flow \
         was idle for net.netfilter.nf_conntrack_tcp_timeout_established=3 s; the next packet \
         was dropped (NO_SOCKET) and the connection was reset. Align that sysctl with the other \
         nodes or keep idle connections alive below 3 s (TCP keepalive, client pings)."
    );
    assert_eq!(c.pending(), 0);
    assert!(c.due(t0 + Duration::from_secs(5), "node-3").is_empty());
}

#[test]
fn followups_on_the_backend_side_of_the_nat_join_too() {
    let mut c = FlowCorrelator::new(WINDOW, 16);
    let t0 = Instant::now();
    c.observe(expiry(40001), t0);
    // The backend's reset toward the client (reply tuple endpoints).
    c.observe(
        reset(("10.77.2.2", 6379), ("10.77.1.2", 40001), Direction::Sent),
        t0,
    );
    let found = c.due(t0 + GRACE, "n");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].1.finding, "conntrack_expiry_reset");
}

#[test]
fn a_reset_seen_before_the_expiry_still_joins() {
    let mut c = FlowCorrelator::new(WINDOW, 16);
    let t0 = Instant::now();
    c.observe(
        reset(
            ("10.77.1.2", 40002),
            ("10.77.9.9", 6379),
            Direction::Received,
        ),
        t0,
    );
    c.observe(expiry(40002), t0 + Duration::from_millis(20));
    let found = c.due(t0 + Duration::from_millis(20) + GRACE, "n");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].1.evidence.len(), 2);
    // Too old to join: a reset 6 s before the expiry.
    c.observe(
        reset(
            ("10.77.1.2", 40003),
            ("10.77.9.9", 6379),
            Direction::Received,
        ),
        t0,
    );
    c.observe(expiry(40003), t0 + Duration::from_secs(6));
    assert!(c.due(t0 + Duration::from_secs(8), "n").is_empty());
}

#[test]
fn drops_alone_are_the_drop_variant() {
    let mut c = FlowCorrelator::new(WINDOW, 16);
    let t0 = Instant::now();
    c.observe(expiry(40004), t0);
    c.observe(
        drop(("10.77.1.2", 40004), ("10.77.9.9", 6379), "NETFILTER_DROP"),
        t0 + Duration::from_secs(30),
    );
    let found = c.due(t0 + Duration::from_secs(31), "n");
    assert_eq!(found[0].1.finding, "conntrack_expiry_drop");
    assert!(found[0].1.summary.contains("dropped (NETFILTER_DROP)"));
}

#[test]
fn window_and_unrelated_flows() {
    let mut c = FlowCorrelator::new(WINDOW, 16);
    let t0 = Instant::now();
    c.observe(expiry(40005), t0);
    // Another client port: not this flow.
    c.observe(
        reset(
            ("10.77.1.2", 40006),
            ("10.77.9.9", 6379),
            Direction::Received,
        ),
        t0,
    );
    // This flow, but after the window.
    c.observe(
        reset(
            ("10.77.1.2", 40005),
            ("10.77.9.9", 6379),
            Direction::Received,
        ),
        t0 + WINDOW + Duration::from_secs(1),
    );
    assert!(c.due(t0 + WINDOW + Duration::from_secs(3), "n").is_empty());
    assert_eq!(c.pending(), 0, "forgotten after the window");
}

#[test]
fn the_flow_table_is_bounded_and_counts_evictions() {
    let mut c = FlowCorrelator::new(WINDOW, 2);
    let t0 = Instant::now();
    for port in [1, 2, 3, 4] {
        c.observe(expiry(port), t0);
    }
    assert_eq!(c.pending(), 2);
    assert_eq!(c.evictions, 2);
    // The newest two are still joinable.
    c.observe(
        reset(("10.77.1.2", 4), ("10.77.9.9", 6379), Direction::Received),
        t0,
    );
    assert_eq!(c.due(t0 + GRACE, "n").len(), 1);
}

#[test]
fn drops_at_an_endpoint_are_told_apart_from_the_router_drop() {
    let mut c = FlowCorrelator::new(WINDOW, 16);
    let t0 = Instant::now();
    let mut x = expiry(40007);
    x.common.netns = Some(11);
    c.observe(x, t0);
    let mut router = drop(("10.77.1.2", 40007), ("10.77.9.9", 6379), "NETFILTER_DROP");
    router.common.netns = Some(11);
    // The client's own TCP discarding a duplicate under a slow CPU (seen under qemu TCG).
    let mut client = drop(
        ("10.77.1.2", 40007),
        ("10.77.9.9", 6379),
        "TCP_RFC7323_PAWS",
    );
    client.common.netns = Some(12);
    c.observe(client, t0);
    c.observe(router, t0);
    let found = c.due(t0 + GRACE, "n");
    let f = &found[0].1;
    assert_eq!(f.finding, "conntrack_expiry_drop");
    assert!(
        f.summary.contains(
            "; the next packet was dropped (NETFILTER_DROP) and 1 packet of the flow dropped at \
             an endpoint (TCP_RFC7323_PAWS). "
        ),
        "{}",
        f.summary
    );
    assert_eq!(f.evidence.len(), 3);
}
