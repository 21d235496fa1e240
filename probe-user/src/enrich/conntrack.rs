//! Joins conntrack expiries with what happened to the flow next: a reset or a packet drop on
//! the same flow (either direction, either side of a NAT) within a bounded window yields a
//! `finding` naming the node, the timeout, how long the flow had lived and both endpoints.
//! Memory is bounded by LRU tables whose evictions are counted.

use std::{
    net::IpAddr,
    num::NonZeroUsize,
    time::{Duration, Instant},
};

use lru::LruCache;

use super::{Decoded, Enricher, Stage, recent::RecentRing};
use crate::{
    model::{Body, ConntrackExpiry, Evidence, Finding, Record, describe::endpoint},
    status::AgentState,
};

/// An unordered pair of endpoints: the same for both directions of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey([(IpAddr, u16); 2]);

impl FlowKey {
    pub fn new(a: IpAddr, a_port: u16, b: IpAddr, b_port: u16) -> Self {
        let (x, y) = ((a, a_port), (b, b_port));
        Self(if x <= y { [x, y] } else { [y, x] })
    }

    /// The key of a record's flow (`Describe::flow`).
    pub fn of(flow: &crate::model::Flow) -> Self {
        Self::new(flow.src.0, flow.src.1, flow.dst.0, flow.dst.1)
    }

    /// A 32-bit digest of the key (equal keys, equal tags), cheaper than a hasher.
    pub fn tag(&self) -> u32 {
        let fold = |ip: &IpAddr| match ip {
            IpAddr::V4(v4) => v4.to_bits(),
            IpAddr::V6(v6) => {
                let b = v6.to_bits();
                (b as u32) ^ ((b >> 32) as u32) ^ ((b >> 64) as u32) ^ ((b >> 96) as u32)
            }
        };
        let [(a, a_port), (b, b_port)] = &self.0;
        let mixed =
            fold(a).rotate_left(7) ^ fold(b) ^ (u32::from(*a_port) << 16 | u32::from(*b_port));
        mixed.wrapping_mul(0x9e37_79b1)
    }
}

/// How long after the first follow-up more evidence is collected before the finding goes out.
const GRACE: Duration = Duration::from_secs(1);
/// How long a reset or drop is remembered for an expiry that arrives after it (the two come
/// from different sources: netlink and the ring buffer).
const RECENT: Duration = Duration::from_secs(5);

struct Expired {
    record: Record,
    expiry: ConntrackExpiry,
    seen: Instant,
    evidence: Vec<Record>,
    due: Option<Instant>,
}

pub struct FlowCorrelator {
    window: Duration,
    /// Keyed by the original direction's endpoints.
    expired: LruCache<FlowKey, Expired>,
    /// Reply-direction endpoints -> original key (differs under NAT).
    aliases: LruCache<FlowKey, FlowKey>,
    recent: RecentRing,
    /// Expired flows forgotten to make room, before any finding.
    pub evictions: u64,
}

/// Resets/drops remembered for an expiry that arrives after them, and records kept per flow:
/// bounded so a reset storm costs little memory.
const RECENT_RECORDS: usize = 8192;
const RECENT_PER_FLOW: usize = 4;

impl FlowCorrelator {
    pub fn new(window: Duration, capacity: usize) -> Self {
        let cap = NonZeroUsize::new(capacity.max(1)).expect("non-zero");
        Self {
            window,
            expired: LruCache::new(cap),
            aliases: LruCache::new(cap),
            recent: RecentRing::new(RECENT_RECORDS.min(capacity), RECENT_PER_FLOW, RECENT),
            evictions: 0,
        }
    }

    /// Expired flows waiting for a follow-up or for their finding.
    pub fn pending(&self) -> usize {
        self.expired.len()
    }

    /// Looks at a record after it was written; keeps it (moved) when it may be evidence.
    pub fn observe(&mut self, record: Record, now: Instant) {
        match &record.body {
            Body::ConntrackExpiry(e) => {
                let e = e.clone();
                self.on_expiry(record, &e, now);
            }
            body => {
                if let Some(f) = body.flow() {
                    self.on_followup(FlowKey::of(&f), record, now);
                }
            }
        }
    }

    fn on_expiry(&mut self, record: Record, e: &ConntrackExpiry, now: Instant) {
        let orig = FlowKey::new(e.orig_saddr, e.orig_sport, e.orig_daddr, e.orig_dport);
        let reply = FlowKey::new(e.reply_saddr, e.reply_sport, e.reply_daddr, e.reply_dport);
        let mut entry = Expired {
            record,
            expiry: e.clone(),
            seen: now,
            evidence: Vec::new(),
            due: None,
        };
        for key in [orig, reply] {
            entry.evidence.extend(self.recent.take(key, now));
        }
        if !entry.evidence.is_empty() {
            entry.due = Some(now + GRACE);
        }
        if let Some((old_key, _)) = self.expired.push(orig, entry)
            && old_key != orig
        {
            self.evictions += 1;
        }
        if reply != orig {
            self.aliases.put(reply, orig);
        }
    }

    fn on_followup(&mut self, key: FlowKey, record: Record, now: Instant) {
        if !self.expired.is_empty() {
            let orig = self.aliases.get(&key).copied().unwrap_or(key);
            if let Some(entry) = self.expired.get_mut(&orig)
                && now.duration_since(entry.seen) <= self.window
            {
                entry.evidence.push(record);
                entry.due.get_or_insert(now + GRACE);
                return;
            }
        }
        self.recent.push(key, record, now);
    }

    /// Findings whose evidence is complete (with the watched namespace's inode), and expired
    /// flows past the window forgotten.
    pub fn due(&mut self, now: Instant, node: &str) -> Vec<(Option<u32>, Finding)> {
        let ready: Vec<FlowKey> = self
            .expired
            .iter()
            .filter(|(_, e)| {
                e.due.is_some_and(|d| d <= now)
                    || (e.due.is_none() && now.duration_since(e.seen) > self.window)
            })
            .map(|(k, _)| *k)
            .collect();
        let mut findings = Vec::new();
        for key in ready {
            let Some(e) = self.expired.pop(&key) else {
                continue;
            };
            if e.due.is_some() {
                findings.push((e.record.common.netns, finding(node, e)));
            }
        }
        findings
    }
}

/// The correlator is the last stage: it takes no kernel event, sees every record after the
/// sinks (keeping expiries, resets and drops, moved), and writes findings when their evidence
/// is complete. Only in the stage list while a conntrack namespace is watched.
impl Stage for FlowCorrelator {
    fn wants(&self, _: &Decoded) -> bool {
        false
    }
    fn on_event(&mut self, event: Decoded, _: &Enricher, _: &mut Vec<Record>) -> Option<Decoded> {
        Some(event)
    }
    fn wants_written(&self) -> bool {
        true
    }
    fn on_written(&mut self, record: Record, now: Instant) -> Option<Record> {
        self.observe(record, now);
        None
    }
    fn pending(&self, _now: Instant) -> bool {
        self.pending() > 0
    }
    fn on_tick(&mut self, now: Instant, cx: &Enricher, out: &mut Vec<Record>) {
        for (netns, f) in self.due(now, cx.node()) {
            let mut r = cx.agent_record(Body::Finding(Box::new(f)));
            r.common.netns = netns;
            out.push(r);
        }
    }
    /// Findings with evidence go out now instead of after their grace period.
    fn drain(&mut self, cx: &Enricher, out: &mut Vec<Record>) {
        self.on_tick(Instant::now() + Duration::from_secs(3600), cx, out);
    }
    fn report(&self, state: &AgentState) {
        state
            .metrics
            .conntrack_flows_evicted
            .inner()
            .store(self.evictions, std::sync::atomic::Ordering::Relaxed);
    }
}

fn finding(node: &str, e: Expired) -> Finding {
    let x = &e.expiry;
    let resets = e
        .evidence
        .iter()
        .filter(|r| matches!(r.body, Body::TcpReset(_)))
        .count();
    // Drops in the namespace whose entry expired are the consequence; drops of the same flow
    // elsewhere (an endpoint's TCP discarding a retransmitted duplicate, say) are told apart.
    let here = e.record.common.netns;
    let (mut local, mut remote): (Vec<&str>, Vec<&str>) = (Vec::new(), Vec::new());
    for r in &e.evidence {
        if let Body::PacketDrop(d) = &r.body {
            let reason = d.reason.as_deref().unwrap_or("unknown reason");
            if r.common.netns == here {
                local.push(reason);
            } else {
                remote.push(reason);
            }
        }
    }
    let name = if resets > 0 {
        "conntrack_expiry_reset"
    } else {
        "conntrack_expiry_drop"
    };
    let dnat = if x.reply_saddr != x.orig_daddr || x.reply_sport != x.orig_dport {
        format!(" (DNAT to {})", endpoint(x.reply_saddr, x.reply_sport))
    } else {
        String::new()
    };
    let lived = x
        .established_for_s
        .map(|s| format!(", established for {s:.0} s,"))
        .unwrap_or_default();
    let setting = match (&x.timeout_sysctl, x.timeout_s) {
        (Some(name), Some(t)) => format!("net.netfilter.{name}={t} s"),
        _ => "the conntrack timeout".to_owned(),
    };
    let mut fate = Vec::new();
    if !local.is_empty() {
        fate.push(format!("the next packet was dropped ({})", reasons(&local)));
    }
    if !remote.is_empty() {
        fate.push(format!(
            "{} {} of the flow dropped at an endpoint ({})",
            remote.len(),
            if remote.len() == 1 {
                "packet"
            } else {
                "packets"
            },
            reasons(&remote)
        ));
    }
    if resets > 0 {
        fate.push("the connection was reset".to_owned());
    }
    let keep = x
        .timeout_s
        .map(|t| format!(" below {t} s"))
        .unwrap_or_default();
    let summary = format!(
        "On node {node} ({netns}) the conntrack entry of {client} -> {service}{dnat}{lived} \
         expired after the flow was idle for {setting}; {fate}. Align that \
         sysctl with the other nodes or keep idle connections alive{keep} (TCP keepalive, \
         client pings).",
        netns = x.netns_path,
        client = endpoint(x.orig_saddr, x.orig_sport),
        service = endpoint(x.orig_daddr, x.orig_dport),
        fate = fate.join(" and "),
    );
    let mut evidence = vec![Evidence::Record(Box::new(e.record))];
    evidence.extend(
        e.evidence
            .into_iter()
            .map(|r| Evidence::Record(Box::new(r))),
    );
    Finding {
        finding: name,
        summary,
        evidence,
        netns_path: Some(x.netns_path.clone()),
        saddr: Some(x.orig_saddr),
        sport: Some(x.orig_sport),
        daddr: Some(x.orig_daddr),
        dport: Some(x.orig_dport),
        backend_addr: Some(x.reply_saddr),
        backend_port: Some(x.reply_sport),
        timeout_s: x.timeout_s,
        timeout_sysctl: x.timeout_sysctl.clone(),
        established_for_s: x.established_for_s,
    }
}

/// Distinct reasons, sorted, comma-separated.
fn reasons(list: &[&str]) -> String {
    let mut v = list.to_vec();
    v.sort_unstable();
    v.dedup();
    v.join(", ")
}

#[cfg(test)]
mod tests;
