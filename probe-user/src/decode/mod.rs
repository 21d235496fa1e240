//! Checked decode of raw ring-buffer records into owned events. Lengths are checked before
//! any read; kinds, directions and families are decoded with `TryFrom`; numeric kernel
//! enumerations are named with tables resolved at load time.

use std::{
    collections::HashMap,
    mem::size_of,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use probe_common::{
    EventHeader, ExitEvent, HDR_CGROUP, HDR_NETNS, HDR_TASK, HttpRequestEvent, Kind,
    PacketDropEvent, REASON_NONE, SIG_DUMPABLE, SIG_HANDLER, SIG_RLIMIT, SIG_SENDER, SignalEvent,
    TcpResetEvent, WRITE_CHUNK, WRITE_TRUNCATED, WRITE_UNREADABLE, WriteEvent, WriteResultEvent,
    direction, family, h2, side,
};
use thiserror::Error;

use crate::{
    loader::{btf::Btf, tracefs::Format},
    model::signals::{origin, si_code_name, signal_name},
    model::{
        Body, CoreSignal, Direction, Family, H2Frame, Handler, HttpRequest, HttpSide, PacketDrop,
        ProcessExit, RlimitCore, TcpReset, TraceParent, WasmWrite, WasmWriteResult,
    },
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
    #[error("http_request with unknown side {0}")]
    HttpSide(u16),
    #[error("tcp_reset with unknown address family {0}")]
    Family(u16),
    #[error("wasm write chunk of {0} bytes exceeds the {WRITE_CHUNK}-byte buffer")]
    ChunkLen(u32),
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
    pub tcp_states: HashMap<u32, Arc<str>>,
    /// `enum sk_rst_reason` value -> name ("NO_SOCKET").
    pub reset_reasons: HashMap<u32, Arc<str>>,
    /// `enum trace_signal_result` value -> lower-case name ("delivered").
    pub signal_results: HashMap<u32, String>,
    /// `enum skb_drop_reason` value -> name without the prefix ("NO_SOCKET").
    pub drop_reasons: HashMap<u32, Arc<str>>,
}

impl SymbolTables {
    /// TCP states from BTF (the anonymous enum holding `TCP_ESTABLISHED`), reset reasons from
    /// the `tcp_send_reset` print format, falling back to BTF's `enum sk_rst_reason`.
    pub fn resolve(btf: Option<&Btf>, send_reset: Option<&Format>) -> Self {
        let mut tables = Self::default();
        if let Some(btf) = btf {
            tables.tcp_states = shared(to_u32_keys(btf.enum_names_with("TCP_ESTABLISHED", "TCP_")));
            tables.reset_reasons = shared(to_u32_keys(
                btf.enum_names_with("SK_RST_REASON_NO_SOCKET", "SK_RST_REASON_"),
            ));
            tables.signal_results =
                to_u32_keys(btf.enum_names_with("TRACE_SIGNAL_DELIVERED", "TRACE_SIGNAL_"))
                    .into_iter()
                    .map(|(k, v)| (k, v.to_ascii_lowercase()))
                    .collect();
            tables.drop_reasons = shared(to_u32_keys(
                btf.enum_names_with("SKB_DROP_REASON_NO_SOCKET", "SKB_DROP_REASON_"),
            ));
        }
        if let Some(pairs) = send_reset.and_then(|f| f.symbols.get("reason")) {
            for (value, name) in pairs {
                let number = value
                    .parse::<i64>()
                    .ok()
                    .or_else(|| btf.and_then(|b| b.enumerator(value)));
                if let Some(n) = number.and_then(|n| u32::try_from(n).ok()) {
                    tables.reset_reasons.insert(n, name.as_str().into());
                }
            }
        }
        tables
    }

    fn state(&self, state: u32) -> Option<Arc<str>> {
        (state != 0).then(|| {
            self.tcp_states
                .get(&state)
                .cloned()
                .unwrap_or_else(|| format!("STATE_{state}").into())
        })
    }

    fn signal_result(&self, result: u32) -> String {
        self.signal_results
            .get(&result)
            .cloned()
            .unwrap_or_else(|| format!("result_{result}"))
    }

    fn reason(&self, reason: u32) -> Option<Arc<str>> {
        (reason != REASON_NONE).then(|| {
            self.reset_reasons
                .get(&reason)
                .cloned()
                .unwrap_or_else(|| format!("REASON_{reason}").into())
        })
    }
}

/// Names shared by the records that carry them.
fn shared(map: HashMap<u32, String>) -> HashMap<u32, Arc<str>> {
    map.into_iter().map(|(k, v)| (k, v.into())).collect()
}

fn to_u32_keys(map: HashMap<i64, String>) -> HashMap<u32, String> {
    map.into_iter()
        .filter_map(|(k, v)| u32::try_from(k).ok().map(|k| (k, v)))
        .collect()
}

pub use crate::model::Common;

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
    let kind = Kind::try_from(header.kind).map_err(DecodeError::UnknownKind)?;
    decode_kind(kind, &header, bytes, tables)
}

/// An event struct of the ABI and the record body it becomes.
trait DecodeBody: aya::Pod {
    fn body(&self, tables: &SymbolTables) -> Result<Body, DecodeError>;
}

/// Reads the event struct of `kind` (length checked) and decodes it; `header` is its first
/// field (every event struct starts with it), already read.
fn decode_as<T: DecodeBody>(
    kind: Kind,
    header: &EventHeader,
    bytes: &[u8],
    tables: &SymbolTables,
) -> Result<Decoded, DecodeError> {
    let ev: T = read_pod(bytes, kind.name())?;
    Ok(Decoded {
        common: common(header),
        body: ev.body(tables)?,
    })
}

/// The dispatch from the ABI's kind table: each kind decodes as its event struct.
macro_rules! decode_dispatch {
    ($( $(#[$doc:meta])* $konst:ident = $n:literal, $name:literal, $variant:ident($event:ty); )*) => {
        fn decode_kind(
            kind: Kind,
            header: &EventHeader,
            bytes: &[u8],
            tables: &SymbolTables,
        ) -> Result<Decoded, DecodeError> {
            match kind {
                $( Kind::$variant => decode_as::<$event>(kind, header, bytes, tables), )*
            }
        }
    };
}
probe_common::for_each_kind!(decode_dispatch);

impl DecodeBody for TcpResetEvent {
    fn body(&self, tables: &SymbolTables) -> Result<Body, DecodeError> {
        Ok(Body::TcpReset(tcp_reset(self, tables)?))
    }
}

impl DecodeBody for SignalEvent {
    fn body(&self, tables: &SymbolTables) -> Result<Body, DecodeError> {
        Ok(Body::CoreSignal(Box::new(core_signal(self, tables))))
    }
}

impl DecodeBody for WriteEvent {
    fn body(&self, _: &SymbolTables) -> Result<Body, DecodeError> {
        Ok(Body::WasmWrite(wasm_write(self)?))
    }
}

impl DecodeBody for WriteResultEvent {
    fn body(&self, _: &SymbolTables) -> Result<Body, DecodeError> {
        Ok(Body::WasmWriteResult(WasmWriteResult {
            fd: self.fd,
            result: self.result,
            fd_kind: fd_kind(self.file_mode, self.file_rdev),
        }))
    }
}

impl DecodeBody for PacketDropEvent {
    fn body(&self, tables: &SymbolTables) -> Result<Body, DecodeError> {
        Ok(Body::PacketDrop(Box::new(packet_drop(self, tables)?)))
    }
}

impl DecodeBody for HttpRequestEvent {
    fn body(&self, _: &SymbolTables) -> Result<Body, DecodeError> {
        Ok(Body::HttpRequest(http_request(self)?))
    }
}

impl DecodeBody for ExitEvent {
    fn body(&self, _: &SymbolTables) -> Result<Body, DecodeError> {
        Ok(Body::ProcessExit(ProcessExit {
            exit_code: self.exit_code,
            watched_signal: self.watched_signal,
        }))
    }
}

/// The signal as generated; the outcome keys are filled by the join with the process exit.
fn core_signal(ev: &SignalEvent, tables: &SymbolTables) -> CoreSignal {
    let has = |flag: u32| ev.flags & flag != 0;
    CoreSignal {
        signal: ev.signal,
        signal_name: signal_name(ev.signal),
        origin: origin(ev.si_code),
        si_code: si_code_name(ev.signal, ev.si_code),
        sender_pid: has(SIG_SENDER).then_some(ev.sender_pid),
        sender_comm: has(SIG_SENDER).then(|| comm(&ev.sender_comm)),
        sender_tid: has(SIG_SENDER).then_some(ev.sender_tid),
        result: tables.signal_result(ev.result),
        handler: has(SIG_HANDLER).then_some(match ev.handler {
            0 => Handler::Default,
            1 => Handler::Ignored,
            _ => Handler::Handled,
        }),
        core_dumped: None,
        core_suppressed_by: None,
        rlimit_core: has(SIG_RLIMIT).then_some(RlimitCore(ev.rlimit_core)),
        dumpable: has(SIG_DUMPABLE).then_some(ev.dumpable),
        core_pattern: None,
        core_uses_pid: None,
        exit_code: None,
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
        comm: task.then(|| shared_comm(&h.comm)),
    }
}

/// The task name of an event header, shared with the other events of the same name: a small
/// direct-mapped cache on the reader's thread (names repeat: a storm is a few processes).
fn shared_comm(raw: &[u8; 16]) -> std::sync::Arc<str> {
    const SLOTS: usize = 64;
    type Slot = Option<([u8; 16], std::sync::Arc<str>)>;
    thread_local! {
        static NAMES: std::cell::RefCell<Vec<Slot>> = std::cell::RefCell::new(vec![None; SLOTS]);
    }
    let slot = raw.iter().fold(0x811c_9dc5_u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    }) as usize
        % SLOTS;
    NAMES.with_borrow_mut(|names| match &names[slot] {
        Some((bytes, name)) if bytes == raw => name.clone(),
        _ => {
            let name: std::sync::Arc<str> = comm(raw).into();
            names[slot] = Some((*raw, name.clone()));
            name
        }
    })
}

fn comm(raw: &[u8]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

fn tcp_reset(ev: &TcpResetEvent, tables: &SymbolTables) -> Result<TcpReset, DecodeError> {
    let direction = Direction::try_from(ev.direction)?;
    let (fam, saddr, daddr) = socket_addresses(ev.family, &ev.saddr, &ev.daddr)?;
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

fn packet_drop(ev: &PacketDropEvent, tables: &SymbolTables) -> Result<PacketDrop, DecodeError> {
    let k = &ev.key;
    let fam = Family::try_from(k.family)?;
    let (saddr, daddr) = match fam {
        Family::Ipv4 => (ipv4(&k.saddr), ipv4(&k.daddr)),
        Family::Ipv6 => (
            IpAddr::V6(Ipv6Addr::from(k.saddr)),
            IpAddr::V6(Ipv6Addr::from(k.daddr)),
        ),
    };
    Ok(PacketDrop {
        family: fam,
        saddr,
        sport: k.sport,
        daddr,
        dport: k.dport,
        // REASON_NONE: the kernel's kfree_skb has no reason argument.
        reason: (k.reason != REASON_NONE).then(|| {
            tables
                .drop_reasons
                .get(&k.reason)
                .cloned()
                .unwrap_or_else(|| format!("REASON_{}", k.reason).into())
        }),
        count: ev.total,
        key: *k,
    })
}

/// A socket's family and addresses; a v4 connection on a dual-stack socket (v4-mapped IPv6
/// addresses) is shown as the IPv4 it is.
fn socket_addresses(
    family: u16,
    saddr: &[u8; 16],
    daddr: &[u8; 16],
) -> Result<(Family, IpAddr, IpAddr), DecodeError> {
    Ok(match Family::try_from(family)? {
        Family::Ipv4 => (Family::Ipv4, ipv4(saddr), ipv4(daddr)),
        Family::Ipv6 => {
            let (s, d) = (Ipv6Addr::from(*saddr), Ipv6Addr::from(*daddr));
            match (s.to_ipv4_mapped(), d.to_ipv4_mapped()) {
                (Some(s4), Some(d4)) => (Family::Ipv4, IpAddr::V4(s4), IpAddr::V4(d4)),
                _ => (Family::Ipv6, IpAddr::V6(s), IpAddr::V6(d)),
            }
        }
    })
}

fn ipv4(raw: &[u8; 16]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
}

pub mod connect;
mod http;
pub use self::http::traceparent_value;
mod wasm;

pub use self::wasm::fd_kind;
use self::wasm::wasm_write;
#[cfg(test)]
mod tests;

use self::http::http_request;
