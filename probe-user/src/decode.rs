//! Checked decode of raw ring-buffer records into owned events. Lengths are checked before
//! any read; kinds, directions and families are decoded with `TryFrom`; numeric kernel
//! enumerations are named with tables resolved at load time.

use std::{
    collections::HashMap,
    mem::size_of,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use probe_common::{
    EventHeader, HDR_CGROUP, HDR_NETNS, HDR_TASK, REASON_NONE, TcpResetEvent, direction, family,
    kind,
};
use serde::Serialize;
use thiserror::Error;

use crate::{
    loader::{btf::Btf, tracefs::Format},
    record::{Body, Direction, Family, TcpReset},
};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than the {need}-byte {what}")]
    Short {
        len: usize,
        need: usize,
        what: &'static str,
    },
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
    #[error("tcp_reset with invalid direction {0}")]
    Direction(u16),
    #[error("tcp_reset with unknown address family {0}")]
    Family(u16),
}

/// Event kinds the kernel sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    TcpReset,
}

impl TryFrom<u32> for Kind {
    type Error = DecodeError;
    fn try_from(v: u32) -> Result<Self, DecodeError> {
        match v {
            kind::TCP_RESET => Ok(Self::TcpReset),
            other => Err(DecodeError::UnknownKind(other)),
        }
    }
}

impl TryFrom<u16> for Direction {
    type Error = DecodeError;
    fn try_from(v: u16) -> Result<Self, DecodeError> {
        match v {
            direction::SENT => Ok(Self::Sent),
            direction::RECEIVED => Ok(Self::Received),
            other => Err(DecodeError::Direction(other)),
        }
    }
}

impl TryFrom<u16> for Family {
    type Error = DecodeError;
    fn try_from(v: u16) -> Result<Self, DecodeError> {
        match v {
            family::INET => Ok(Self::Ipv4),
            family::INET6 => Ok(Self::Ipv6),
            other => Err(DecodeError::Family(other)),
        }
    }
}

/// Kernel enumerations by name, resolved at load time from BTF and tracefs formats.
#[derive(Debug, Clone, Default)]
pub struct SymbolTables {
    /// TCP state number -> name without the `TCP_` prefix ("ESTABLISHED").
    pub tcp_states: HashMap<u32, String>,
    /// `enum sk_rst_reason` value -> name ("NO_SOCKET").
    pub reset_reasons: HashMap<u32, String>,
}

impl SymbolTables {
    /// TCP states from BTF (the anonymous enum holding `TCP_ESTABLISHED`), reset reasons from
    /// the `tcp_send_reset` print format, falling back to BTF's `enum sk_rst_reason`.
    pub fn resolve(btf: Option<&Btf>, send_reset: Option<&Format>) -> Self {
        let mut tables = Self::default();
        if let Some(btf) = btf {
            tables.tcp_states = to_u32_keys(btf.enum_names_with("TCP_ESTABLISHED", "TCP_"));
            tables.reset_reasons =
                to_u32_keys(btf.enum_names_with("SK_RST_REASON_NO_SOCKET", "SK_RST_REASON_"));
        }
        if let Some(pairs) = send_reset.and_then(|f| f.symbols.get("reason")) {
            for (value, name) in pairs {
                let number = value
                    .parse::<i64>()
                    .ok()
                    .or_else(|| btf.and_then(|b| b.enumerator(value)));
                if let Some(n) = number.and_then(|n| u32::try_from(n).ok()) {
                    tables.reset_reasons.insert(n, name.clone());
                }
            }
        }
        tables
    }

    fn state(&self, state: u32) -> Option<String> {
        (state != 0).then(|| {
            self.tcp_states
                .get(&state)
                .cloned()
                .unwrap_or_else(|| format!("STATE_{state}"))
        })
    }

    fn reason(&self, reason: u32) -> Option<String> {
        (reason != REASON_NONE).then(|| {
            self.reset_reasons
                .get(&reason)
                .cloned()
                .unwrap_or_else(|| format!("REASON_{reason}"))
        })
    }
}

fn to_u32_keys(map: HashMap<i64, String>) -> HashMap<u32, String> {
    map.into_iter()
        .filter_map(|(k, v)| u32::try_from(k).ok().map(|k| (k, v)))
        .collect()
}

/// Keys every event carries; `None` where the kernel could not know the value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Common {
    #[serde(skip)]
    pub ktime_ns: u64,
    pub netns: Option<u32>,
    pub cgroup_id: Option<u64>,
    pub pid: Option<u32>,
    pub tid: Option<u32>,
    pub comm: Option<String>,
}

impl Common {
    /// For records made in userspace (loss records): nothing kernel-side is known.
    pub fn none() -> Self {
        Self {
            ktime_ns: 0,
            netns: None,
            cgroup_id: None,
            pid: None,
            tid: None,
            comm: None,
        }
    }
}

/// A decoded kernel event.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub common: Common,
    pub body: Body,
}

/// Reads a `T` from the start of `bytes` after checking the length.
fn read_pod<T: aya::Pod>(bytes: &[u8], what: &'static str) -> Result<T, DecodeError> {
    let need = size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::Short {
            len: bytes.len(),
            need,
            what,
        });
    }
    // SAFETY: the length is checked above and `T: Pod` (repr(C) integers only, no padding), so
    // any bytes are a valid `T`; read_unaligned has no alignment requirement.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

pub fn decode(bytes: &[u8], tables: &SymbolTables) -> Result<Decoded, DecodeError> {
    let header: EventHeader = read_pod(bytes, "event header")?;
    match Kind::try_from(header.kind)? {
        Kind::TcpReset => {
            let ev: TcpResetEvent = read_pod(bytes, "tcp_reset event")?;
            Ok(Decoded {
                common: common(&ev.header),
                body: Body::TcpReset(tcp_reset(&ev, tables)?),
            })
        }
    }
}

fn common(h: &EventHeader) -> Common {
    let task = h.flags & HDR_TASK != 0;
    Common {
        ktime_ns: h.ktime_ns,
        netns: (h.flags & HDR_NETNS != 0).then_some(h.netns),
        cgroup_id: (h.flags & HDR_CGROUP != 0).then_some(h.cgroup_id),
        pid: task.then_some(h.pid),
        tid: task.then_some(h.tid),
        comm: task.then(|| comm(&h.comm)),
    }
}

fn comm(raw: &[u8]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

fn tcp_reset(ev: &TcpResetEvent, tables: &SymbolTables) -> Result<TcpReset, DecodeError> {
    let direction = Direction::try_from(ev.direction)?;
    let mut fam = Family::try_from(ev.family)?;
    let (saddr, daddr) = match fam {
        Family::Ipv4 => (ipv4(&ev.saddr), ipv4(&ev.daddr)),
        Family::Ipv6 => {
            let (s, d) = (Ipv6Addr::from(ev.saddr), Ipv6Addr::from(ev.daddr));
            // A v4 connection on a dual-stack socket: show it as the IPv4 it is.
            match (s.to_ipv4_mapped(), d.to_ipv4_mapped()) {
                (Some(s4), Some(d4)) => {
                    fam = Family::Ipv4;
                    (IpAddr::V4(s4), IpAddr::V4(d4))
                }
                _ => (IpAddr::V6(s), IpAddr::V6(d)),
            }
        }
    };
    Ok(TcpReset {
        direction,
        family: fam,
        saddr,
        sport: ev.sport,
        daddr,
        dport: ev.dport,
        tcp_state: tables.state(ev.state),
        reason: tables.reason(ev.reason),
        socket_cookie: (ev.socket_cookie != 0).then_some(ev.socket_cookie),
    })
}

fn ipv4(raw: &[u8; 16]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tables() -> SymbolTables {
        SymbolTables {
            tcp_states: HashMap::from([(1, "ESTABLISHED".into()), (7, "CLOSE".into())]),
            reset_reasons: HashMap::from([(1, "NO_SOCKET".into())]),
        }
    }

    fn header(flags: u32) -> EventHeader {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"curl");
        EventHeader {
            kind: kind::TCP_RESET,
            flags,
            ktime_ns: 42,
            pid: 100,
            tid: 101,
            netns: 4026531840,
            _reserved: 0,
            cgroup_id: 7,
            comm,
        }
    }

    fn reset_event() -> TcpResetEvent {
        let mut saddr = [0u8; 16];
        saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        let mut daddr = [0u8; 16];
        daddr[..4].copy_from_slice(&[10, 1, 2, 3]);
        TcpResetEvent {
            header: header(HDR_TASK | HDR_NETNS | HDR_CGROUP),
            socket_cookie: 9,
            saddr,
            daddr,
            sport: 6379,
            dport: 51000,
            family: family::INET,
            direction: direction::SENT,
            state: 1,
            reason: 1,
        }
    }

    fn bytes_of<T: aya::Pod>(v: &T) -> Vec<u8> {
        // SAFETY: T is Pod (no padding), so all of its bytes are initialised.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    #[test]
    fn tcp_reset_round_trip() {
        let d = decode(&bytes_of(&reset_event()), &tables()).unwrap();
        assert_eq!(
            d.common,
            Common {
                ktime_ns: 42,
                netns: Some(4026531840),
                cgroup_id: Some(7),
                pid: Some(100),
                tid: Some(101),
                comm: Some("curl".into()),
            }
        );
        assert_eq!(
            d.body,
            Body::TcpReset(TcpReset {
                direction: Direction::Sent,
                family: Family::Ipv4,
                saddr: "127.0.0.1".parse().unwrap(),
                sport: 6379,
                daddr: "10.1.2.3".parse().unwrap(),
                dport: 51000,
                tcp_state: Some("ESTABLISHED".into()),
                reason: Some("NO_SOCKET".into()),
                socket_cookie: Some(9),
            })
        );
    }

    #[test]
    fn interrupt_context_has_no_task_and_unknowns_are_null() {
        let mut ev = reset_event();
        ev.header = header(0);
        ev.state = 0;
        ev.reason = REASON_NONE;
        ev.socket_cookie = 0;
        let d = decode(&bytes_of(&ev), &tables()).unwrap();
        assert_eq!(
            d.common,
            Common {
                ktime_ns: 42,
                ..Common::none()
            }
        );
        let Body::TcpReset(r) = d.body else { panic!() };
        assert_eq!((r.tcp_state, r.reason, r.socket_cookie), (None, None, None));
    }

    #[test]
    fn unnamed_values_keep_their_number() {
        let mut ev = reset_event();
        ev.state = 13;
        ev.reason = 99;
        let Body::TcpReset(r) = decode(&bytes_of(&ev), &tables()).unwrap().body else {
            panic!()
        };
        assert_eq!(r.tcp_state.as_deref(), Some("STATE_13"));
        assert_eq!(r.reason.as_deref(), Some("REASON_99"));
    }

    #[test]
    fn ipv6_and_v4_mapped() {
        let mut ev = reset_event();
        ev.family = family::INET6;
        ev.saddr = Ipv6Addr::LOCALHOST.octets();
        ev.daddr = "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets();
        let Body::TcpReset(r) = decode(&bytes_of(&ev), &tables()).unwrap().body else {
            panic!()
        };
        assert_eq!(r.family, Family::Ipv6);
        assert_eq!(r.saddr, "::1".parse::<IpAddr>().unwrap());
        assert_eq!(r.daddr, "2001:db8::1".parse::<IpAddr>().unwrap());

        ev.saddr = Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped().octets();
        ev.daddr = Ipv4Addr::new(127, 0, 0, 2).to_ipv6_mapped().octets();
        let Body::TcpReset(r) = decode(&bytes_of(&ev), &tables()).unwrap().body else {
            panic!()
        };
        assert_eq!(r.family, Family::Ipv4);
        assert_eq!(r.saddr, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(r.daddr, "127.0.0.2".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn short_and_corrupt_records_are_rejected() {
        let bytes = bytes_of(&reset_event());
        assert_eq!(
            decode(&bytes[..10], &tables()),
            Err(DecodeError::Short {
                len: 10,
                need: 56,
                what: "event header"
            })
        );
        assert_eq!(
            decode(&bytes[..100], &tables()),
            Err(DecodeError::Short {
                len: 100,
                need: 112,
                what: "tcp_reset event"
            })
        );
        let mut bad_kind = bytes.clone();
        bad_kind[..4].copy_from_slice(&77u32.to_ne_bytes());
        assert_eq!(
            decode(&bad_kind, &tables()),
            Err(DecodeError::UnknownKind(77))
        );

        let mut ev = reset_event();
        ev.direction = 9;
        assert_eq!(
            decode(&bytes_of(&ev), &tables()),
            Err(DecodeError::Direction(9))
        );
        let mut ev = reset_event();
        ev.family = 1;
        assert_eq!(
            decode(&bytes_of(&ev), &tables()),
            Err(DecodeError::Family(1))
        );
        assert!(decode(&[], &tables()).is_err());
    }

    #[test]
    fn tables_from_format_and_btf_free_numbers() {
        let format = Format::parse(
            "print fmt: \"%s\", __print_symbolic(REC->reason, { 0, \"NOT_SPECIFIED\" }, { 1, \"NO_SOCKET\" })",
        );
        let t = SymbolTables::resolve(None, Some(&format));
        assert_eq!(t.reset_reasons[&1], "NO_SOCKET");
        assert_eq!(t.reset_reasons[&0], "NOT_SPECIFIED");
        assert!(t.tcp_states.is_empty());
    }
}
