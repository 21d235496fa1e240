//! Connects that fail: an active open (`SYN_SENT`) that ends (`CLOSE`) without reaching
//! `ESTABLISHED`, seen on `sock:inet_sock_set_state`, with the socket's error (refused, timed
//! out, unreachable, or none: the application gave up) and its SYN retransmits.

use core::mem::size_of;

use crate::{ABSENT, EventHeader};

/// Offsets the connect-failure hook reads: the `sock:inet_sock_set_state` record's fields
/// (tracefs `format`), members of the socket (BTF) and the two TCP state numbers (BTF).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectLayout {
    pub skaddr: u32,
    pub oldstate: u32,
    pub newstate: u32,
    pub sport: u32,
    pub dport: u32,
    pub family: u32,
    pub protocol: u32,
    pub saddr: u32,
    pub daddr: u32,
    pub saddr_v6: u32,
    pub daddr_v6: u32,
    /// `struct sock::sk_err` and `sk_err_soft` (int).
    pub sk_err: u32,
    pub sk_err_soft: u32,
    /// `struct tcp_sock::total_retrans` (u32): the SYNs sent again.
    pub total_retrans: u32,
    /// The values of `TCP_SYN_SENT` and `TCP_CLOSE`.
    pub syn_sent: u32,
    pub close: u32,
}
const _: () = assert!(size_of::<ConnectLayout>() == 64);

impl ConnectLayout {
    pub const ABSENT: Self = Self {
        skaddr: ABSENT,
        oldstate: ABSENT,
        newstate: ABSENT,
        sport: ABSENT,
        dport: ABSENT,
        family: ABSENT,
        protocol: ABSENT,
        saddr: ABSENT,
        daddr: ABSENT,
        saddr_v6: ABSENT,
        daddr_v6: ABSENT,
        sk_err: ABSENT,
        sk_err_soft: ABSENT,
        total_retrans: ABSENT,
        syn_sent: ABSENT,
        close: ABSENT,
    };
}

/// `ConnectFailureEvent::error`, `soft_error` or `retransmits` the kernel could not read (no
/// BTF for the socket's members).
pub const UNKNOWN: u32 = u32::MAX;

/// [`ConnectFailureEvent::icmp`]: an ICMP error was seen.
pub const ICMP_SEEN: u32 = 1 << 16;

/// Key of `maps::CONNECT_ICMP`: a TCP flow as the packet an ICMP error quotes names it, this
/// host's end first (the quoted packet is one this host sent).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IcmpFlow {
    /// IPv4 addresses use the first 4 bytes.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Host byte order.
    pub sport: u16,
    pub dport: u16,
    /// [`crate::family`].
    pub family: u16,
    pub _pad: u16,
}
const _: () = assert!(size_of::<IcmpFlow>() == 40);

/// Flows whose last ICMP error is kept until their connect ends (LRU).
pub const CONNECT_ICMP_FLOWS: u32 = 4096;

/// `IPPROTO_TCP`: the record's `protocol` of a TCP socket (uapi).
pub const IPPROTO_TCP: u16 = 6;

/// An active open that ended without reaching `ESTABLISHED`. `saddr:sport` is this host's end.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectFailureEvent {
    pub header: EventHeader,
    /// Socket cookie; 0 when the kernel never assigned one.
    pub socket_cookie: u64,
    /// IPv4 addresses use the first 4 bytes.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Host byte order.
    pub sport: u16,
    pub dport: u16,
    /// [`crate::family`].
    pub family: u16,
    pub _pad: u16,
    /// `sk_err` when the socket closed (an errno: `ECONNREFUSED`, `ETIMEDOUT`,
    /// `EHOSTUNREACH`...); 0 when the application closed it first; [`UNKNOWN`].
    pub error: u32,
    /// `sk_err_soft`: an ICMP error received meanwhile that did not end the connect.
    pub soft_error: u32,
    /// SYNs sent again (`tcp_sock::total_retrans`); [`UNKNOWN`].
    pub retransmits: u32,
    /// The last ICMP error the connect's flow received ([`ICMP_SEEN`] with the type in bits
    /// 8-15 and the code in bits 0-7), 0 when none was seen (or no hook sees them here).
    pub icmp: u32,
}
const _: () = assert!(size_of::<ConnectFailureEvent>() == 120);
