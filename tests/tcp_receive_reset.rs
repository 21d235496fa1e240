//! Root e2e: `tcp:tcp_receive_reset` (probe-ebpf/src/tcp_receive_reset.rs).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
    time::Duration,
};

use probe_tests::*;

const WAIT: Duration = Duration::from_secs(10);

#[test]
fn peer_of_a_linger_close_receives_the_reset() {
    if !require_root("tcp_receive_reset::peer_of_a_linger_close_receives_the_reset") {
        return;
    }
    let mut probe = Probe::start(&[]);
    let pair = LingerPair::connect();
    let (client_port, server_port) = (pair.client_port, pair.server_port);
    let cookie = socket_cookie(pair.accepted.as_raw_fd());
    let accepted = pair.reset();
    probe
        .wait_for(WAIT, |r| {
            r["direction"] == "received" && r["dport"] == client_port
        })
        .expect("the peer's reset was not reported");
    let records = probe.stop();
    drop(accepted);

    let received = resets(&records, client_port, "received");
    assert_eq!(
        received.len(),
        1,
        "exactly one received reset expected: {received:#?}"
    );
    let r = &received[0];
    assert_eq!(r["family"], "ipv4");
    assert_eq!(r["saddr"], "127.0.0.1");
    assert_eq!(r["sport"], server_port);
    assert_eq!(r["daddr"], "127.0.0.1");
    assert_eq!(r["dport"], client_port);
    assert_eq!(r["tcp_state"], "ESTABLISHED");
    assert_eq!(
        r["reason"],
        Value::Null,
        "tcp_receive_reset has no reason field"
    );
    assert_eq!(r["socket_cookie"], cookie);
    // The accepted socket belongs to this process's cgroup and netns...
    assert_eq!(r["cgroup_id"], own_cgroup_id());
    assert_eq!(r["netns"], own_netns());
    // ...but nobody owned it when the RST arrived: it was handled in softirq, so no task.
    assert_eq!(
        (&r["pid"], &r["tid"], &r["comm"]),
        (&Value::Null, &Value::Null, &Value::Null)
    );
}

fn refused_client_receives_the_reset(ip: IpAddr, family: &str) {
    let mut probe = Probe::start(&[]);
    let port = closed_port(ip);
    let client = refused_connect(ip, port);
    probe
        .wait_for(WAIT, |r| {
            r["direction"] == "received" && r["sport"] == client
        })
        .expect("the client's reset was not reported");
    let records = probe.stop();

    let received = resets(&records, port, "received");
    assert_eq!(
        received.len(),
        1,
        "exactly one received reset expected: {received:#?}"
    );
    let r = &received[0];
    assert_eq!(r["family"], family);
    assert_eq!(r["saddr"], ip.to_string());
    assert_eq!(r["sport"], client);
    assert_eq!(r["daddr"], ip.to_string());
    assert_eq!(r["dport"], port);
    assert_eq!(r["tcp_state"], "SYN_SENT");
    assert_eq!(r["cgroup_id"], own_cgroup_id());
    assert_eq!(r["netns"], own_netns());
    // Handled either in softirq (no task) or from the socket backlog by the connecting task
    // itself: never anybody else.
    if !r["pid"].is_null() {
        assert_eq!(r["pid"], std::process::id());
    }
}

#[test]
fn refused_connect_ipv4() {
    if require_root("tcp_receive_reset::refused_connect_ipv4") {
        refused_client_receives_the_reset(IpAddr::V4(Ipv4Addr::LOCALHOST), "ipv4");
    }
}

#[test]
fn refused_connect_ipv6() {
    if require_root("tcp_receive_reset::refused_connect_ipv6") {
        refused_client_receives_the_reset(IpAddr::V6(Ipv6Addr::LOCALHOST), "ipv6");
    }
}

#[test]
fn v4_mapped_ipv6_socket_is_shown_as_ipv4() {
    if !require_root("tcp_receive_reset::v4_mapped_ipv6_socket_is_shown_as_ipv4") {
        return;
    }
    let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
    let mut probe = Probe::start(&[]);
    let port = closed_port(IpAddr::V4(Ipv4Addr::LOCALHOST));
    // A dual-stack AF_INET6 socket talking IPv4.
    let client = refused_connect(mapped, port);
    probe
        .wait_for(WAIT, |r| {
            r["direction"] == "received" && r["sport"] == client
        })
        .expect("the client's reset was not reported");
    let records = probe.stop();
    let received = resets(&records, port, "received");
    assert_eq!(received.len(), 1, "{received:#?}");
    let r = &received[0];
    assert_eq!(r["family"], "ipv4");
    assert_eq!(r["saddr"], "127.0.0.1");
    assert_eq!(r["daddr"], "127.0.0.1");
    assert_eq!(
        (r["sport"].as_u64(), r["dport"].as_u64()),
        (Some(client.into()), Some(port.into()))
    );
}
