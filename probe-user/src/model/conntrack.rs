//! Conntrack expiries, settings and the findings joined from them.

use std::net::IpAddr;

use serde::Serialize;

use super::{
    Common, Record,
    describe::{Attrs, Describe, Line, Tone, endpoint, opt},
};

/// `kind:"conntrack_expiry"`: an established TCP conntrack entry was destroyed without FIN or
/// RST: its timeout ran out (or it was deleted by hand). The common `netns` is the watched
/// namespace's inode.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConntrackExpiry {
    /// The watched namespace: "host" or the `--conntrack-netns` path.
    pub netns_path: String,
    pub proto: String,
    pub tcp_state: Option<String>,
    pub orig_saddr: IpAddr,
    pub orig_sport: u16,
    pub orig_daddr: IpAddr,
    pub orig_dport: u16,
    pub reply_saddr: IpAddr,
    pub reply_sport: u16,
    pub reply_daddr: IpAddr,
    pub reply_dport: u16,
    /// The namespace's timeout for the entry's state when the event arrived, in seconds.
    pub timeout_s: Option<u64>,
    /// The sysctl that timeout comes from.
    pub timeout_sysctl: Option<String>,
    /// From the entry's creation to its destruction (needs `nf_conntrack_timestamp`).
    pub established_for_s: Option<f64>,
    pub zone: u16,
    pub mark: u32,
    /// Named `ip_conntrack_status` bits (ASSURED, SEEN_REPLY, SRC_NAT, DST_NAT, ...).
    pub status: Vec<String>,
    pub conntrack_id: Option<u32>,
    /// Per direction, when `nf_conntrack_acct` is on.
    pub orig_packets: Option<u64>,
    pub orig_bytes: Option<u64>,
    pub reply_packets: Option<u64>,
    pub reply_bytes: Option<u64>,
    /// When the entry was created, when its timeout ran out, and when the kernel reaped it
    /// (lazily: at the flow's next packet or a GC pass), with `nf_conntrack_timestamp` on.
    pub start_unix_nano: Option<u64>,
    pub stop_unix_nano: Option<u64>,
    pub destroyed_unix_nano: Option<u64>,
}

/// `kind:"finding"`: observations joined into a cause a person can act on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// "conntrack_expiry_reset", "conntrack_expiry_drop", "conntrack_table_full".
    pub finding: &'static str,
    /// One sentence naming the cause and what to do.
    pub summary: String,
    /// The records the finding joins, as they were written.
    pub evidence: Vec<Evidence>,
    pub netns_path: Option<String>,
    /// The flow as its client sent it (conntrack original direction).
    pub saddr: Option<IpAddr>,
    pub sport: Option<u16>,
    pub daddr: Option<IpAddr>,
    pub dport: Option<u16>,
    /// Where the flow really went (the reply direction's source: a DNAT backend).
    pub backend_addr: Option<IpAddr>,
    pub backend_port: Option<u16>,
    pub timeout_s: Option<u64>,
    pub timeout_sysctl: Option<String>,
    pub established_for_s: Option<f64>,
}

/// What a finding joins: records as they were written, or values read for it (sysctls).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Evidence {
    Record(Box<Record>),
    Values(std::collections::BTreeMap<String, serde_json::Value>),
}

impl Evidence {
    pub fn record(&self) -> Option<&Record> {
        match self {
            Self::Record(r) => Some(r),
            Self::Values(_) => None,
        }
    }
}

impl Describe for ConntrackExpiry {
    fn line(&self, _: &Common) -> Line {
        Line {
            tag: "CT expired  ".into(),
            tone: Tone::Warn,
            text: format!(
                "{} -> {} reply {} -> {} state={} timeout={}s ({}) established_for={}s netns={}",
                endpoint(self.orig_saddr, self.orig_sport),
                endpoint(self.orig_daddr, self.orig_dport),
                endpoint(self.reply_saddr, self.reply_sport),
                endpoint(self.reply_daddr, self.reply_dport),
                opt(&self.tcp_state),
                opt(&self.timeout_s),
                self.timeout_sysctl.as_deref().unwrap_or("-"),
                self.established_for_s
                    .map_or_else(|| "-".to_owned(), |s| format!("{s:.1}")),
                self.netns_path,
            ),
        }
    }
    fn layer(&self) -> &'static str {
        "kernel.netfilter"
    }
    /// The original direction: its source is the connection's client.
    fn flow(&self) -> Option<super::Flow> {
        let (s, d) = (self.orig_saddr, self.orig_daddr);
        let local = super::End::Src;
        Some(super::Flow {
            served_by: Some(self.reply_saddr),
            ..super::Flow::new(s, self.orig_sport, d, self.orig_dport, local)
        })
    }
    fn span_name(&self) -> Option<std::borrow::Cow<'static, str>> {
        Some("conntrack.expiry".into())
    }
    fn attributes(&self, a: &mut Attrs) {
        a.str("probe.netns_path", &self.netns_path);
        a.str("probe.proto", &self.proto);
        a.opt_str("probe.tcp_state", self.tcp_state.as_deref());
        a.ip("client.address", self.orig_saddr);
        a.int("client.port", self.orig_sport);
        a.ip("server.address", self.orig_daddr);
        a.int("server.port", self.orig_dport);
        a.ip("probe.reply_saddr", self.reply_saddr);
        a.int("probe.reply_sport", self.reply_sport);
        a.ip("probe.reply_daddr", self.reply_daddr);
        a.int("probe.reply_dport", self.reply_dport);
        a.opt_int("probe.timeout_s", self.timeout_s);
        a.opt_str("probe.timeout_sysctl", self.timeout_sysctl.as_deref());
        a.float("probe.established_for_s", self.established_for_s);
        a.int("probe.zone", self.zone);
        a.int("probe.mark", self.mark);
        a.list("probe.status", &self.status);
        a.opt_int("probe.conntrack_id", self.conntrack_id);
        a.opt_int("probe.orig_packets", self.orig_packets);
        a.opt_int("probe.orig_bytes", self.orig_bytes);
        a.opt_int("probe.reply_packets", self.reply_packets);
        a.opt_int("probe.reply_bytes", self.reply_bytes);
        a.opt_int("probe.start_unix_nano", self.start_unix_nano);
        a.opt_int("probe.stop_unix_nano", self.stop_unix_nano);
        a.opt_int("probe.destroyed_unix_nano", self.destroyed_unix_nano);
    }
}

impl Describe for Finding {
    fn line(&self, _: &Common) -> Line {
        Line {
            tag: format!("FINDING     {}", self.finding),
            tone: Tone::Notice,
            text: self.summary.clone(),
        }
    }
    fn span_name(&self) -> Option<std::borrow::Cow<'static, str>> {
        Some(format!("finding.{}", self.finding).into())
    }
    fn span_error(&self) -> Option<String> {
        Some(self.summary.clone())
    }
    fn evidence(&self) -> Vec<&Record> {
        self.evidence.iter().filter_map(Evidence::record).collect()
    }
    fn attributes(&self, a: &mut Attrs) {
        a.str("probe.finding", self.finding);
        a.opt_str("probe.netns_path", self.netns_path.as_deref());
        a.opt_ip("client.address", self.saddr);
        a.opt_int("client.port", self.sport);
        a.opt_ip("server.address", self.daddr);
        a.opt_int("server.port", self.dport);
        a.opt_ip("probe.backend_addr", self.backend_addr);
        a.opt_int("probe.backend_port", self.backend_port);
        a.opt_int("probe.timeout_s", self.timeout_s);
        a.opt_str("probe.timeout_sysctl", self.timeout_sysctl.as_deref());
        a.float("probe.established_for_s", self.established_for_s);
    }
}
