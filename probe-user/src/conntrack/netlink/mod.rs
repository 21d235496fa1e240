//! ctnetlink: the DESTROY event subscription and a checked parse of its messages
//! (`nfnetlink_conntrack.h` attribute numbers). Framing and attribute iteration come from
//! `netlink-packet-core`, the socket from `netlink-sys`; no maintained crate models ctnetlink's
//! conntrack attributes, so their meaning is decoded here.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{DecodeError, NLA_TYPE_MASK, NetlinkBuffer, NlaBuffer, NlasIterator};
use thiserror::Error;

/// `NETLINK_NETFILTER`.
pub const NETLINK_NETFILTER: isize = 12;
/// `NFNLGRP_CONNTRACK_DESTROY`.
pub const NFNLGRP_CONNTRACK_DESTROY: u32 = 3;
/// `NFNLGRP_CONNTRACK_UPDATE`: followed only where DESTROY events carry no TCP state.
pub const NFNLGRP_CONNTRACK_UPDATE: u32 = 2;
/// `NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_DELETE`: what a DESTROY event is.
const MSG_CT_DELETE: u16 = (1 << 8) | 2;
/// `NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_NEW`: what NEW and UPDATE events are.
const MSG_CT_NEW: u16 = 1 << 8;
/// `sizeof(struct nfgenmsg)`.
const NFGENMSG_LEN: usize = 4;

// enum ctattr_type
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
const CTA_PROTOINFO: u16 = 4;
const CTA_MARK: u16 = 8;
const CTA_COUNTERS_ORIG: u16 = 9;
const CTA_COUNTERS_REPLY: u16 = 10;
const CTA_ID: u16 = 12;
const CTA_ZONE: u16 = 18;
const CTA_TIMESTAMP: u16 = 20;
const CTA_TIMESTAMP_EVENT: u16 = 27;
// enum ctattr_tuple / ctattr_ip / ctattr_l4proto
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
// enum ctattr_protoinfo / ctattr_protoinfo_tcp
const CTA_PROTOINFO_TCP: u16 = 1;
const CTA_PROTOINFO_TCP_STATE: u16 = 1;
// enum ctattr_counters / ctattr_tstamp
const CTA_COUNTERS_PACKETS: u16 = 1;
const CTA_COUNTERS_BYTES: u16 = 2;
const CTA_TIMESTAMP_START: u16 = 1;
const CTA_TIMESTAMP_STOP: u16 = 2;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// `enum tcp_conntrack` (uapi nf_conntrack_tcp.h).
pub const TCP_CONNTRACK_ESTABLISHED: u8 = 3;
const TCP_CONNTRACK_NAMES: [&str; 10] = [
    "NONE",
    "SYN_SENT",
    "SYN_RECV",
    "ESTABLISHED",
    "FIN_WAIT",
    "CLOSE_WAIT",
    "LAST_ACK",
    "TIME_WAIT",
    "CLOSE",
    "SYN_SENT2",
];

/// The sysctl holding the timeout of each `tcp_conntrack` state, by state number.
const TCP_TIMEOUT_SYSCTLS: [&str; 10] = [
    "",
    "nf_conntrack_tcp_timeout_syn_sent",
    "nf_conntrack_tcp_timeout_syn_recv",
    "nf_conntrack_tcp_timeout_established",
    "nf_conntrack_tcp_timeout_fin_wait",
    "nf_conntrack_tcp_timeout_close_wait",
    "nf_conntrack_tcp_timeout_last_ack",
    "nf_conntrack_tcp_timeout_time_wait",
    "nf_conntrack_tcp_timeout_close",
    "nf_conntrack_tcp_timeout_syn_sent",
];

/// `enum ip_conntrack_status` bits worth naming.
const STATUS_BITS: [(u32, &str); 6] = [
    (1 << 1, "SEEN_REPLY"),
    (1 << 2, "ASSURED"),
    (1 << 4, "SRC_NAT"),
    (1 << 5, "DST_NAT"),
    (1 << 13, "UNTRACKED"),
    (1 << 14, "OFFLOAD"),
];

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("malformed netlink message: {0}")]
    Netlink(String),
    #[error("conntrack event without its {0} attribute")]
    Missing(&'static str),
    #[error("conntrack attribute {what} has {len} bytes, expected {need}")]
    Length {
        what: &'static str,
        len: usize,
        need: usize,
    },
}

impl From<DecodeError> for ParseError {
    fn from(e: DecodeError) -> Self {
        Self::Netlink(e.to_string())
    }
}

/// One direction of a conntrack entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

/// A conntrack entry the kernel destroyed, as ctnetlink reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destroyed {
    pub orig: Tuple,
    pub reply: Tuple,
    /// `enum tcp_conntrack` for TCP entries.
    pub tcp_state: Option<u8>,
    /// `enum ip_conntrack_status` bits.
    pub status: u32,
    pub mark: u32,
    pub zone: u16,
    pub id: Option<u32>,
    /// (packets, bytes) per direction, when accounting is on (`nf_conntrack_acct`).
    pub counters_orig: Option<(u64, u64)>,
    pub counters_reply: Option<(u64, u64)>,
    /// Wall-clock ns of creation and of the end of the entry's life, when
    /// `nf_conntrack_timestamp` is on. For an expired entry the kernel sets `stop` to the
    /// moment the timeout ran out, not to when the entry was reaped.
    pub start_ns: Option<u64>,
    pub stop_ns: Option<u64>,
    /// Wall-clock ns of the event itself (when the entry was reaped), on kernels that send it.
    pub event_ns: Option<u64>,
}

impl Destroyed {
    /// An established TCP entry that went away without FIN or RST (those move it to
    /// another state first): its timeout ran out, or someone deleted it by hand.
    pub fn is_expiry(&self) -> bool {
        self.orig.proto == IPPROTO_TCP && self.tcp_state == Some(TCP_CONNTRACK_ESTABLISHED)
    }

    pub fn status_names(&self) -> Vec<String> {
        STATUS_BITS
            .iter()
            .filter(|(bit, _)| self.status & bit != 0)
            .map(|(_, name)| (*name).to_owned())
            .collect()
    }
}

pub fn tcp_state_name(state: u8) -> String {
    TCP_CONNTRACK_NAMES
        .get(usize::from(state))
        .map_or_else(|| format!("STATE_{state}"), |s| (*s).to_owned())
}

/// The sysctl (under net.netfilter.) whose value is the timeout of TCP state `state`.
pub fn tcp_timeout_sysctl(state: u8) -> Option<&'static str> {
    TCP_TIMEOUT_SYSCTLS
        .get(usize::from(state))
        .copied()
        .filter(|s| !s.is_empty())
}

pub fn proto_name(proto: u8) -> String {
    match proto {
        IPPROTO_TCP => "tcp".into(),
        IPPROTO_UDP => "udp".into(),
        1 => "icmp".into(),
        58 => "icmpv6".into(),
        132 => "sctp".into(),
        other => other.to_string(),
    }
}

/// Parses one datagram from the socket: every DESTROY message in it (other message types are
/// skipped; a malformed message is an error for that message only).
pub fn parse_datagram(bytes: &[u8]) -> Vec<Result<Destroyed, ParseError>> {
    messages(bytes, MSG_CT_DELETE)
}

/// The TCP state changes in a datagram's NEW/UPDATE messages: (conntrack id, state). They have
/// the same attributes as DESTROY messages; one without an id or a TCP state is skipped.
pub fn parse_updates(bytes: &[u8]) -> Vec<(u32, u8)> {
    messages(bytes, MSG_CT_NEW)
        .into_iter()
        .filter_map(|m| m.ok().and_then(|d| d.id.zip(d.tcp_state)))
        .collect()
}

fn messages(mut bytes: &[u8], message_type: u16) -> Vec<Result<Destroyed, ParseError>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let msg = match NetlinkBuffer::new_checked(bytes) {
            Ok(m) => m,
            Err(e) => {
                out.push(Err(e.into()));
                break;
            }
        };
        let len = msg.length() as usize;
        if msg.message_type() == message_type {
            out.push(parse_destroy(msg.payload()));
        }
        // Messages are 4-byte aligned within the datagram.
        let next = len.div_ceil(4) * 4;
        if next == 0 || next > bytes.len() {
            break;
        }
        bytes = &bytes[next..];
    }
    out
}

fn parse_destroy(payload: &[u8]) -> Result<Destroyed, ParseError> {
    let attrs = payload.get(NFGENMSG_LEN..).ok_or(ParseError::Length {
        what: "nfgenmsg",
        len: payload.len(),
        need: NFGENMSG_LEN,
    })?;
    let mut orig = None;
    let mut reply = None;
    let mut d = Destroyed {
        orig: EMPTY_TUPLE,
        reply: EMPTY_TUPLE,
        tcp_state: None,
        status: 0,
        mark: 0,
        zone: 0,
        id: None,
        counters_orig: None,
        counters_reply: None,
        start_ns: None,
        stop_ns: None,
        event_ns: None,
    };
    for nla in NlasIterator::new(attrs) {
        let nla = nla?;
        let v = nla.value();
        match kind(&nla) {
            CTA_TUPLE_ORIG => orig = Some(tuple(v)?),
            CTA_TUPLE_REPLY => reply = Some(tuple(v)?),
            CTA_STATUS => d.status = be_u32(v, "CTA_STATUS")?,
            CTA_MARK => d.mark = be_u32(v, "CTA_MARK")?,
            CTA_ID => d.id = Some(be_u32(v, "CTA_ID")?),
            CTA_ZONE => d.zone = be_u16(v, "CTA_ZONE")?,
            CTA_PROTOINFO => d.tcp_state = tcp_state(v)?,
            CTA_COUNTERS_ORIG => d.counters_orig = counters(v)?,
            CTA_COUNTERS_REPLY => d.counters_reply = counters(v)?,
            CTA_TIMESTAMP_EVENT => d.event_ns = Some(be_u64(v, "CTA_TIMESTAMP_EVENT")?),
            CTA_TIMESTAMP => {
                for inner in NlasIterator::new(v) {
                    let inner = inner?;
                    match kind(&inner) {
                        CTA_TIMESTAMP_START => {
                            d.start_ns = Some(be_u64(inner.value(), "CTA_TIMESTAMP_START")?);
                        }
                        CTA_TIMESTAMP_STOP => {
                            d.stop_ns = Some(be_u64(inner.value(), "CTA_TIMESTAMP_STOP")?);
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    d.orig = orig.ok_or(ParseError::Missing("CTA_TUPLE_ORIG"))?;
    d.reply = reply.ok_or(ParseError::Missing("CTA_TUPLE_REPLY"))?;
    Ok(d)
}

const EMPTY_TUPLE: Tuple = Tuple {
    src: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    dst: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    sport: 0,
    dport: 0,
    proto: 0,
};

fn kind(nla: &NlaBuffer<&[u8]>) -> u16 {
    nla.kind() & NLA_TYPE_MASK
}

fn tuple(v: &[u8]) -> Result<Tuple, ParseError> {
    let mut t = EMPTY_TUPLE;
    let (mut src, mut dst) = (None, None);
    for nla in NlasIterator::new(v) {
        let nla = nla?;
        match kind(&nla) {
            CTA_TUPLE_IP => {
                for ip in NlasIterator::new(nla.value()) {
                    let ip = ip?;
                    let v = ip.value();
                    match kind(&ip) {
                        CTA_IP_V4_SRC => {
                            src = Some(IpAddr::V4(Ipv4Addr::from(arr::<4>(v, "CTA_IP_V4_SRC")?)))
                        }
                        CTA_IP_V4_DST => {
                            dst = Some(IpAddr::V4(Ipv4Addr::from(arr::<4>(v, "CTA_IP_V4_DST")?)))
                        }
                        CTA_IP_V6_SRC => {
                            src = Some(IpAddr::V6(Ipv6Addr::from(arr::<16>(v, "CTA_IP_V6_SRC")?)))
                        }
                        CTA_IP_V6_DST => {
                            dst = Some(IpAddr::V6(Ipv6Addr::from(arr::<16>(v, "CTA_IP_V6_DST")?)))
                        }
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for p in NlasIterator::new(nla.value()) {
                    let p = p?;
                    match kind(&p) {
                        CTA_PROTO_NUM => t.proto = arr::<1>(p.value(), "CTA_PROTO_NUM")?[0],
                        CTA_PROTO_SRC_PORT => t.sport = be_u16(p.value(), "CTA_PROTO_SRC_PORT")?,
                        CTA_PROTO_DST_PORT => t.dport = be_u16(p.value(), "CTA_PROTO_DST_PORT")?,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    t.src = src.ok_or(ParseError::Missing("CTA_IP_*_SRC"))?;
    t.dst = dst.ok_or(ParseError::Missing("CTA_IP_*_DST"))?;
    Ok(t)
}

fn tcp_state(v: &[u8]) -> Result<Option<u8>, ParseError> {
    for nla in NlasIterator::new(v) {
        let nla = nla?;
        if kind(&nla) != CTA_PROTOINFO_TCP {
            continue;
        }
        for inner in NlasIterator::new(nla.value()) {
            let inner = inner?;
            if kind(&inner) == CTA_PROTOINFO_TCP_STATE {
                return Ok(Some(arr::<1>(inner.value(), "CTA_PROTOINFO_TCP_STATE")?[0]));
            }
        }
    }
    Ok(None)
}

fn counters(v: &[u8]) -> Result<Option<(u64, u64)>, ParseError> {
    let (mut packets, mut bytes) = (None, None);
    for nla in NlasIterator::new(v) {
        let nla = nla?;
        match kind(&nla) {
            CTA_COUNTERS_PACKETS => packets = Some(be_u64(nla.value(), "CTA_COUNTERS_PACKETS")?),
            CTA_COUNTERS_BYTES => bytes = Some(be_u64(nla.value(), "CTA_COUNTERS_BYTES")?),
            _ => {}
        }
    }
    Ok(packets.zip(bytes))
}

fn arr<const N: usize>(v: &[u8], what: &'static str) -> Result<[u8; N], ParseError> {
    v.get(..N)
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .ok_or(ParseError::Length {
            what,
            len: v.len(),
            need: N,
        })
}

fn be_u16(v: &[u8], what: &'static str) -> Result<u16, ParseError> {
    arr::<2>(v, what).map(u16::from_be_bytes)
}

fn be_u32(v: &[u8], what: &'static str) -> Result<u32, ParseError> {
    arr::<4>(v, what).map(u32::from_be_bytes)
}

fn be_u64(v: &[u8], what: &'static str) -> Result<u64, ParseError> {
    arr::<8>(v, what).map(u64::from_be_bytes)
}

#[cfg(test)]
mod tests;
