//! Owned, enriched records: what the sinks render. The JSON contract (README) is the serde
//! form of [`Record`]: common keys first, then the keys of the kind.

use std::net::IpAddr;

use serde::Serialize;

use crate::decode::Common;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Record {
    pub time_unix_nano: u64,
    pub kind: &'static str,
    pub node: String,
    #[serde(flatten)]
    pub common: Common,
    #[serde(flatten)]
    pub body: Body,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Body {
    TcpReset(TcpReset),
    Loss(Loss),
}

impl Body {
    /// The `kind` key.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::TcpReset(_) => "tcp_reset",
            Self::Loss(_) => "loss",
        }
    }
}

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
    pub tcp_state: Option<String>,
    pub reason: Option<String>,
    pub socket_cookie: Option<u64>,
}

/// Where events were lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LossSource {
    /// The kernel could not write to the ring buffer (full).
    Ringbuf,
    /// The agent's queue between reader and sinks was full.
    Channel,
    /// A record from the kernel failed the checked decode.
    Decode,
}

/// `kind:"loss"`: events lost since the previous loss record of the same source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Loss {
    pub source: LossSource,
    pub count: u64,
    /// The kind of the lost events when the source knows it.
    pub lost_kind: Option<&'static str>,
}
