//! `kind:"connect_failure"`: an active open that ended without reaching ESTABLISHED
//! (probe-ebpf `inet_sock_set_state.rs`), decoded and described. It travels as `Body::Other`.

use std::{borrow::Cow, net::IpAddr};

use probe_common::{ConnectFailureEvent, ICMP_SEEN, UNKNOWN};
use serde::Serialize;

use super::{DecodeBody, DecodeError, SymbolTables, socket_addresses};
use crate::model::{
    Attrs, Body, Common, Describe, End, Family, Flow, Other,
    describe::{KindName, Line, Tone, endpoint, opt, task},
};

/// How a connect ended, from the socket's error when it closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The peer answered with a reset (`ECONNREFUSED`; also reported as a received reset) or
    /// an ICMP port unreachable.
    Refused,
    /// No answer: the SYN retransmits ran out (`ETIMEDOUT`), or the application closed the
    /// socket first (its own timeout).
    TimedOut,
    /// An ICMP error ended it (`EHOSTUNREACH`, `ENETUNREACH`, `EHOSTDOWN`, `ENONET`, `EACCES`:
    /// ICMPv6 administratively prohibited).
    Unreachable,
    /// Another error.
    Failed,
    /// The kernel's error is not known here (no BTF for the socket).
    Unknown,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Self::Refused => "refused",
            Self::TimedOut => "timed_out",
            Self::Unreachable => "unreachable",
            Self::Failed => "failed",
            Self::Unknown => "unknown",
        }
    }
}

/// `kind:"connect_failure"`. `saddr:sport` is the local end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnectFailure {
    pub outcome: Outcome,
    /// `kernel` (the error ended it) or `application` (closed while the SYNs went unanswered).
    pub closed_by: &'static str,
    /// The socket's error (`ETIMEDOUT`, ...); null when the application closed it.
    pub error: Option<Cow<'static, str>>,
    /// An ICMP error received meanwhile that did not end the connect by itself.
    pub icmp_error: Option<Cow<'static, str>>,
    /// SYNs sent (the first and its retransmits).
    pub syns: Option<u32>,
    /// The last ICMP error the flow received (`3`/`1`: host unreachable), where a hook sees
    /// them (`connect_icmp`); null otherwise.
    pub icmp_type: Option<u8>,
    pub icmp_code: Option<u8>,
    /// What that type and code mean (`host unreachable`, `administratively prohibited`...).
    pub icmp: Option<&'static str>,
    pub family: Family,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    pub socket_cookie: Option<u64>,
}

impl KindName for ConnectFailure {
    const KIND: &'static str = "connect_failure";
}

impl DecodeBody for ConnectFailureEvent {
    fn body(&self, _: &SymbolTables) -> Result<Body, DecodeError> {
        Ok(Body::Other(Other::new(connect_failure(self)?)))
    }
}

fn connect_failure(ev: &ConnectFailureEvent) -> Result<ConnectFailure, DecodeError> {
    let (family, saddr, daddr) = socket_addresses(ev.family, &ev.saddr, &ev.daddr)?;
    let errno = |e: u32| (e != 0 && e != UNKNOWN).then(|| errno_name(e));
    let icmp = (ev.icmp & ICMP_SEEN != 0).then_some(((ev.icmp >> 8) as u8, ev.icmp as u8));
    Ok(ConnectFailure {
        outcome: outcome(ev.error),
        closed_by: if ev.error == 0 {
            "application"
        } else {
            "kernel"
        },
        error: errno(ev.error),
        icmp_error: errno(ev.soft_error).filter(|_| ev.soft_error != ev.error),
        syns: (ev.retransmits != UNKNOWN).then(|| ev.retransmits.saturating_add(1)),
        icmp_type: icmp.map(|(t, _)| t),
        icmp_code: icmp.map(|(_, c)| c),
        icmp: icmp.map(|(t, c)| icmp_meaning(family, t, c)),
        family,
        saddr,
        sport: ev.sport,
        daddr,
        dport: ev.dport,
        socket_cookie: (ev.socket_cookie != 0).then_some(ev.socket_cookie),
    })
}

/// How a connect whose socket error was `error` ended.
pub fn outcome(error: u32) -> Outcome {
    let Ok(e) = i32::try_from(error) else {
        return Outcome::Unknown;
    };
    match e {
        0 | libc::ETIMEDOUT => Outcome::TimedOut,
        libc::ECONNREFUSED => Outcome::Refused,
        libc::EHOSTUNREACH
        | libc::ENETUNREACH
        | libc::EHOSTDOWN
        | libc::ENONET
        // ICMPv6 administratively prohibited, or a reject route.
        | libc::EACCES => Outcome::Unreachable,
        _ => Outcome::Failed,
    }
}

/// What an ICMP (IPv4) or ICMPv6 error of type `t` and code `c` says (RFC 792, 1812, 4443).
pub fn icmp_meaning(family: Family, t: u8, c: u8) -> &'static str {
    match (family, t, c) {
        (Family::Ipv4, 3, 0) => "net unreachable",
        (Family::Ipv4, 3, 1) => "host unreachable",
        (Family::Ipv4, 3, 2) => "protocol unreachable",
        (Family::Ipv4, 3, 3) => "port unreachable",
        (Family::Ipv4, 3, 4) => "fragmentation needed",
        (Family::Ipv4, 3, 6) => "destination network unknown",
        (Family::Ipv4, 3, 7) => "destination host unknown",
        (Family::Ipv4, 3, 9 | 10 | 13) => "administratively prohibited",
        (Family::Ipv4, 3, 11 | 12) => "unreachable for type of service",
        (Family::Ipv4, 3, _) => "destination unreachable",
        (Family::Ipv4, 11, _) => "time exceeded",
        (Family::Ipv4, 12, _) => "parameter problem",
        (Family::Ipv6, 1, 0) => "no route to destination",
        (Family::Ipv6, 1, 1) => "administratively prohibited",
        (Family::Ipv6, 1, 3) => "address unreachable",
        (Family::Ipv6, 1, 4) => "port unreachable",
        (Family::Ipv6, 1, 5 | 6) => "rejected by policy",
        (Family::Ipv6, 1, _) => "destination unreachable",
        (Family::Ipv6, 2, _) => "packet too big",
        (Family::Ipv6, 3, _) => "time exceeded",
        (Family::Ipv6, 4, _) => "parameter problem",
        _ => "ICMP error",
    }
}

/// The `error` label of a socket error: its errno's name, `none` (the application closed the
/// socket first) or `unknown`.
pub fn error_label(error: u32) -> Cow<'static, str> {
    match error {
        0 => "none".into(),
        UNKNOWN => "unknown".into(),
        e => errno_name(e),
    }
}

/// The errno's name (`ETIMEDOUT`), or its number as text.
fn errno_name(e: u32) -> Cow<'static, str> {
    const NAMES: &[(i32, &str)] = &[
        (libc::ETIMEDOUT, "ETIMEDOUT"),
        (libc::ECONNREFUSED, "ECONNREFUSED"),
        (libc::EHOSTUNREACH, "EHOSTUNREACH"),
        (libc::ENETUNREACH, "ENETUNREACH"),
        (libc::EHOSTDOWN, "EHOSTDOWN"),
        (libc::ENONET, "ENONET"),
        (libc::ENOPROTOOPT, "ENOPROTOOPT"),
        (libc::EMSGSIZE, "EMSGSIZE"),
        (libc::EOPNOTSUPP, "EOPNOTSUPP"),
        (libc::ECONNRESET, "ECONNRESET"),
        (libc::EACCES, "EACCES"),
        (libc::EPERM, "EPERM"),
    ];
    NAMES
        .iter()
        .find(|(n, _)| i32::try_from(e) == Ok(*n))
        .map_or_else(
            || Cow::Owned(e.to_string()),
            |(_, name)| Cow::Borrowed(*name),
        )
}

impl ConnectFailure {
    /// `timed_out after 3 SYNs (ETIMEDOUT)`.
    pub fn summary(&self) -> String {
        let mut s = self.outcome.name().to_owned();
        if let Some(n) = self.syns {
            s.push_str(&format!(" after {n} SYN{}", if n == 1 { "" } else { "s" }));
        }
        match (&self.error, &self.icmp_error) {
            (Some(e), Some(i)) => s.push_str(&format!(" ({e}; ICMP {i})")),
            (Some(e), None) => s.push_str(&format!(" ({e})")),
            (None, Some(i)) => s.push_str(&format!(" (closed by the application; ICMP {i})")),
            (None, None) => s.push_str(" (closed by the application)"),
        }
        if let (Some(meaning), Some(t), Some(c)) = (self.icmp, self.icmp_type, self.icmp_code) {
            s.push_str(&format!(": ICMP {meaning} (type {t} code {c})"));
        }
        s
    }
}

impl Describe for ConnectFailure {
    fn line(&self, c: &Common) -> Line {
        Line {
            tag: "CONNECT FAIL".into(),
            tone: Tone::Alarm,
            text: format!(
                "{} -> {} {} task={} netns={} cgroup={}",
                endpoint(self.saddr, self.sport),
                endpoint(self.daddr, self.dport),
                self.summary(),
                task(c),
                opt(&c.netns),
                opt(&c.cgroup_id),
            ),
        }
    }
    fn layer(&self) -> &'static str {
        "kernel.tcp"
    }
    fn flow(&self) -> Option<Flow> {
        Some(Flow::new(
            self.saddr,
            self.sport,
            self.daddr,
            self.dport,
            End::Src,
        ))
    }
    fn span_name(&self) -> Option<Cow<'static, str>> {
        Some("tcp.connect.failed".into())
    }
    fn span_error(&self) -> Option<String> {
        Some(format!("connect {}", self.summary()))
    }
    fn attributes(&self, a: &mut Attrs) {
        a.str("network.transport", "tcp");
        a.str("network.type", self.family.name());
        a.ip("network.local.address", self.saddr);
        a.int("network.local.port", self.sport);
        a.ip("network.peer.address", self.daddr);
        a.int("network.peer.port", self.dport);
        a.str("tcp.connect.outcome", self.outcome.name());
        a.str("tcp.connect.closed_by", self.closed_by);
        a.opt_str("error.type", self.error.as_deref());
        a.opt_str("tcp.connect.icmp_error", self.icmp_error.as_deref());
        a.opt_int("tcp.connect.syns", self.syns);
        a.opt_int("tcp.connect.icmp.type", self.icmp_type);
        a.opt_int("tcp.connect.icmp.code", self.icmp_code);
        a.opt_str("tcp.connect.icmp", self.icmp);
        a.opt_int("probe.socket_cookie", self.socket_cookie);
    }
}

#[cfg(test)]
mod tests;
