//! TCP resets, packet drops and the HTTP request heads that carry trace context.

use std::net::IpAddr;

use serde::Serialize;

use super::{
    Common, TraceParent,
    describe::{Attrs, Describe, Line, Tone, endpoint, opt, task},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Sent,
    Received,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    Ipv4,
    Ipv6,
}

/// `kind:"tcp_reset"`. `saddr:sport` is the local end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TcpReset {
    pub direction: Direction,
    pub family: Family,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    /// Names from the kernel's tables, shared (no allocation per record).
    pub tcp_state: Option<std::sync::Arc<str>>,
    pub reason: Option<std::sync::Arc<str>>,
    pub socket_cookie: Option<u64>,
}

/// `kind:"packet_drop"`: TCP packets of one flow the kernel dropped for one reason since the
/// previous record of that flow and reason. `saddr:sport` is the packet's source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PacketDrop {
    pub family: Family,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    /// `enum skb_drop_reason` name without its prefix ("NO_SOCKET", "NETFILTER_DROP", ...);
    /// null where the kernel gives no drop reason (before 5.17).
    pub reason: Option<std::sync::Arc<str>>,
    /// Packets dropped since the previous record (the decoder puts the kernel's running total
    /// here; the drop stage turns it into the increase).
    pub count: u64,
    /// The kernel aggregation key, for reading the total after the last record.
    #[serde(skip)]
    pub key: probe_common::DropKey,
}

/// The head of an HTTP/1.x request sent or received on a TCP socket, or the answer to a traced
/// one (internal: feeds the trace contexts, never written). `saddr:sport` is the socket's
/// (the task's) end. On an HTTP/2 connection: its header-block frames (`h2`), whose request and
/// `traceparent` are known once decoded with the connection's HPACK table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HttpRequest {
    pub side: HttpSide,
    pub family: Family,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    #[serde(skip)]
    pub traceparent: Option<TraceParent>,
    #[serde(skip)]
    pub h2: Option<Box<H2Frame>>,
}

/// What the kernel copied of one send or read of an HTTP/2 connection: a window from its first
/// header-block frame (HEADERS or CONTINUATION) on, holding each of them whole.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct H2Frame {
    pub data: Vec<u8>,
    /// Bytes of the connection's header blocks were missed: its HPACK table is unknown.
    pub lost: bool,
    /// The connection's first window.
    pub first: bool,
    /// The connection's first requests named no `traceparent`: the kernel follows it no more.
    pub untraced: bool,
}

/// Which end of a request the task of an [`HttpRequest`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpSide {
    /// It sent the request (the client).
    Sent,
    /// It received the request (the server).
    Received,
    /// It sent its first bytes after a traced request it received: the answer (no head).
    Answered,
}

/// The TCP flow a record is about, its addresses as the kernel saw them, and which end is the
/// node's (what the Kubernetes stage looks a pod up by; the other end is the peer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    pub src: (IpAddr, u16),
    pub dst: (IpAddr, u16),
    pub local: End,
    /// The address that really answered, when the kernel translated the destination (a
    /// conntrack entry's reply source: a Service's backend).
    pub served_by: Option<IpAddr>,
}

/// Which end of a [`Flow`] is the node's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The source: the local socket's end (a reset), the client's (a conntrack entry).
    Src,
    /// Either (a dropped packet may be leaving or arriving): the destination, unless only
    /// the source is a pod of the node.
    Either,
}

impl Flow {
    pub fn new(saddr: IpAddr, sport: u16, daddr: IpAddr, dport: u16, local: End) -> Self {
        Self {
            src: (saddr, sport),
            dst: (daddr, dport),
            local,
            served_by: None,
        }
    }
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Self::Ipv4 => "ipv4",
            Self::Ipv6 => "ipv6",
        }
    }
}

impl Describe for TcpReset {
    fn line(&self, c: &Common) -> Line {
        let (tag, tone) = match self.direction {
            Direction::Sent => ("RST sent    ", Tone::Alarm),
            Direction::Received => ("RST received", Tone::Warn),
        };
        Line {
            tag: tag.into(),
            tone,
            text: format!(
                "{} -> {} state={} reason={} task={} netns={} cgroup={} cookie={}",
                endpoint(self.saddr, self.sport),
                endpoint(self.daddr, self.dport),
                opt(&self.tcp_state),
                opt(&self.reason),
                task(c),
                opt(&c.netns),
                opt(&c.cgroup_id),
                opt(&self.socket_cookie),
            ),
        }
    }
    fn layer(&self) -> &'static str {
        "kernel.tcp"
    }
    fn flow(&self) -> Option<Flow> {
        let (s, d) = (self.saddr, self.daddr);
        Some(Flow::new(s, self.sport, d, self.dport, End::Src))
    }
    fn span_name(&self) -> Option<std::borrow::Cow<'static, str>> {
        Some(match self.direction {
            Direction::Sent => "tcp.reset.sent".into(),
            Direction::Received => "tcp.reset.received".into(),
        })
    }
    fn span_error(&self) -> Option<String> {
        (self.direction == Direction::Received).then(|| "connection reset by peer".into())
    }
    fn attributes(&self, a: &mut Attrs) {
        a.str("network.transport", "tcp");
        a.str(
            "probe.direction",
            match self.direction {
                Direction::Sent => "sent",
                Direction::Received => "received",
            },
        );
        a.str("network.type", self.family.name());
        a.ip("network.local.address", self.saddr);
        a.int("network.local.port", self.sport);
        a.ip("network.peer.address", self.daddr);
        a.int("network.peer.port", self.dport);
        a.opt_str("tcp.state", self.tcp_state.as_deref());
        a.opt_str("tcp.reset.reason", self.reason.as_deref());
        a.opt_int("probe.socket_cookie", self.socket_cookie);
    }
}

impl Describe for PacketDrop {
    fn line(&self, c: &Common) -> Line {
        Line {
            tag: "DROP        ".into(),
            tone: Tone::Warn,
            text: format!(
                "{} -> {} reason={} count={} netns={}",
                endpoint(self.saddr, self.sport),
                endpoint(self.daddr, self.dport),
                self.reason.as_deref().unwrap_or("-"),
                self.count,
                opt(&c.netns),
            ),
        }
    }
    fn layer(&self) -> &'static str {
        if self.reason.as_deref() == Some("NETFILTER_DROP") {
            "kernel.netfilter"
        } else {
            "kernel.tcp"
        }
    }
    fn flow(&self) -> Option<Flow> {
        let (s, d) = (self.saddr, self.daddr);
        Some(Flow::new(s, self.sport, d, self.dport, End::Either))
    }
    fn span_name(&self) -> Option<std::borrow::Cow<'static, str>> {
        Some("kernel.packet_drop".into())
    }
    fn attributes(&self, a: &mut Attrs) {
        a.str("network.transport", "tcp");
        a.str("network.type", self.family.name());
        a.ip("source.address", self.saddr);
        a.int("source.port", self.sport);
        a.ip("destination.address", self.daddr);
        a.int("destination.port", self.dport);
        a.opt_str("packet.drop.reason", self.reason.as_deref());
        a.int("packet.drop.count", self.count);
    }
}
