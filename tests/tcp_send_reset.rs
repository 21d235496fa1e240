//! Root e2e: `tcp:tcp_send_reset` (probe-ebpf/src/tcp_send_reset.rs).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use probe_tests::*;

const WAIT: Duration = Duration::from_secs(10);

fn closed_port_sends_one_no_socket_reset(ip: IpAddr, family: &str) {
    let mut probe = Probe::start(&[]);
    // Kernels before 6.10 have no reset reasons (and no record field for them).
    let reason = probe.expect_if("reset_reason", "NO_SOCKET".into());
    let port = closed_port(ip);
    let client = refused_connect(ip, port);
    // The client's received reset comes after the sent one.
    probe
        .wait_for(WAIT, |r| {
            r["direction"] == "received" && r["sport"] == client
        })
        .expect("the client's reset was not reported");
    let records = probe.stop();

    let sent = resets(&records, port, "sent");
    assert_eq!(sent.len(), 1, "exactly one sent reset expected: {sent:#?}");
    let r = &sent[0];
    // The responder's view: local = the closed port, remote = the client.
    assert_eq!(r["family"], family);
    assert_eq!(r["saddr"], ip.to_string());
    assert_eq!(r["sport"], port);
    assert_eq!(r["daddr"], ip.to_string());
    assert_eq!(r["dport"], client);
    assert_eq!(r["reason"], reason);
    // No socket exists: no state, cookie or cgroup; built in softirq: no task.
    assert_eq!(r["tcp_state"], Value::Null);
    assert_eq!(r["socket_cookie"], Value::Null);
    assert_eq!(r["cgroup_id"], Value::Null);
    assert_eq!(
        (&r["pid"], &r["tid"], &r["comm"]),
        (&Value::Null, &Value::Null, &Value::Null)
    );
    // The namespace of the device the SYN arrived on.
    assert_eq!(r["netns"], own_netns());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let t = r["time_unix_nano"].as_u64().expect("time_unix_nano");
    assert!(
        t <= now && now - t < 60_000_000_000,
        "event time {t} vs now {now}"
    );
}

#[test]
fn closed_port_ipv4() {
    if require_root("tcp_send_reset::closed_port_ipv4") {
        closed_port_sends_one_no_socket_reset(IpAddr::V4(Ipv4Addr::LOCALHOST), "ipv4");
    }
}

#[test]
fn closed_port_ipv6() {
    if require_root("tcp_send_reset::closed_port_ipv6") {
        closed_port_sends_one_no_socket_reset(IpAddr::V6(Ipv6Addr::LOCALHOST), "ipv6");
    }
}

#[test]
fn linger_zero_close_names_the_closing_task() {
    if !require_root("tcp_send_reset::linger_zero_close_names_the_closing_task") {
        return;
    }
    let mut probe = Probe::start(&[]);
    let reason = probe.expect_if("reset_reason", "TCP_STATE".into());
    let pair = LingerPair::connect();
    let (client_port, server_port) = (pair.client_port, pair.server_port);
    let cookie = socket_cookie(pair.client.as_raw_fd());
    let (tid, comm) = current_thread();
    let accepted = pair.reset();
    probe
        .wait_for(WAIT, |r| {
            r["direction"] == "received" && r["dport"] == client_port
        })
        .expect("the peer's reset was not reported");
    let records = probe.stop();
    drop(accepted);

    let sent = resets(&records, client_port, "sent");
    assert_eq!(sent.len(), 1, "exactly one sent reset expected: {sent:#?}");
    let r = &sent[0];
    assert_eq!(r["family"], "ipv4");
    assert_eq!(r["saddr"], "127.0.0.1");
    assert_eq!(r["sport"], client_port);
    assert_eq!(r["daddr"], "127.0.0.1");
    assert_eq!(r["dport"], server_port);
    // close() with SO_LINGER {1, 0} goes through tcp_disconnect(), which moves the socket to
    // CLOSE before sending the reset with reason TCP_STATE: what this kernel reports.
    assert_eq!(r["tcp_state"], "CLOSE");
    assert_eq!(r["reason"], reason);
    assert_eq!(r["pid"], std::process::id());
    assert_eq!(r["tid"], tid);
    assert_eq!(r["comm"], comm);
    assert_eq!(r["socket_cookie"], cookie);
    assert_eq!(r["cgroup_id"], own_cgroup_id());
    assert_eq!(r["netns"], own_netns());
}
