//! Root e2e: `tcp_v6_send_reset` (probe-ebpf/src/tcp_v6_send_reset.rs): IPv6 resets sent
//! without a socket, from the function hook where the kernel's `tcp:tcp_send_reset` is not
//! called for them (before 6.10), from that tracepoint where it is; never twice.

use std::net::{IpAddr, Ipv6Addr};

use probe_tests::*;

#[test]
fn closed_port_resets_are_reported_once_each() {
    if require_root("tcp_v6_send_reset::closed_port_resets_are_reported_once_each") {
        unowned_resets_are_reported_once_each(IpAddr::V6(Ipv6Addr::LOCALHOST), "ipv6");
    }
}
