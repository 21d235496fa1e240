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

use crate::model::{Body, ConntrackExpiry, Finding, Record};

/// An unordered pair of endpoints: the same for both directions of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey([(IpAddr, u16); 2]);

impl FlowKey {
    pub fn new(a: IpAddr, a_port: u16, b: IpAddr, b_port: u16) -> Self {
        let (x, y) = ((a, a_port), (b, b_port));
        Self(if x <= y { [x, y] } else { [y, x] })
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
    recent: LruCache<FlowKey, Vec<(Instant, Record)>>,
    /// Expired flows forgotten to make room, before any finding.
    pub evictions: u64,
    /// Off when no conntrack namespace is watched: then nothing is remembered per event.
    pub enabled: bool,
}

/// Flows whose recent resets/drops are remembered for an expiry that arrives after them, and
/// records kept per flow: bounded so a reset storm costs little memory.
const RECENT_FLOWS: usize = 4096;
const RECENT_PER_FLOW: usize = 4;

impl FlowCorrelator {
    pub fn new(window: Duration, capacity: usize) -> Self {
        let cap = NonZeroUsize::new(capacity.max(1)).expect("non-zero");
        Self {
            window,
            expired: LruCache::new(cap),
            aliases: LruCache::new(cap),
            recent: LruCache::new(cap.min(NonZeroUsize::new(RECENT_FLOWS).expect("non-zero"))),
            evictions: 0,
            enabled: true,
        }
    }

    /// Expired flows waiting for a follow-up or for their finding.
    pub fn pending(&self) -> usize {
        self.expired.len()
    }

    /// Looks at a record after it was written; keeps it (moved) when it may be evidence.
    pub fn observe(&mut self, record: Record, now: Instant) {
        if !self.enabled {
            return;
        }
        match &record.body {
            Body::ConntrackExpiry(e) => {
                let e = e.clone();
                self.on_expiry(record, &e, now);
            }
            Body::TcpReset(r) => {
                let key = FlowKey::new(r.saddr, r.sport, r.daddr, r.dport);
                self.on_followup(key, record, now);
            }
            Body::PacketDrop(d) => {
                let key = FlowKey::new(d.saddr, d.sport, d.daddr, d.dport);
                self.on_followup(key, record, now);
            }
            _ => {}
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
            if let Some(recent) = self.recent.pop(&key) {
                entry.evidence.extend(
                    recent
                        .into_iter()
                        .filter(|(t, _)| now.duration_since(*t) <= RECENT)
                        .map(|(_, r)| r),
                );
            }
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
        let orig = self.aliases.get(&key).copied().unwrap_or(key);
        if let Some(entry) = self.expired.get_mut(&orig)
            && now.duration_since(entry.seen) <= self.window
        {
            entry.evidence.push(record);
            entry.due.get_or_insert(now + GRACE);
            return;
        }
        let list = self.recent.get_or_insert_mut(key, Vec::new);
        list.retain(|(t, _)| now.duration_since(*t) <= RECENT);
        if list.len() < RECENT_PER_FLOW {
            list.push((now, record));
        }
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
                findings.push((e.record.common.netns, finding(node, &e)));
            }
        }
        findings
    }
}

fn finding(node: &str, e: &Expired) -> Finding {
    let x = &e.expiry;
    let resets = e
        .evidence
        .iter()
        .filter(|r| matches!(r.body, Body::TcpReset(_)))
        .count();
    let drops: Vec<&str> = e
        .evidence
        .iter()
        .filter_map(|r| match &r.body {
            Body::PacketDrop(d) => Some(d.reason.as_deref().unwrap_or("unknown reason")),
            _ => None,
        })
        .collect();
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
    if !drops.is_empty() {
        let mut reasons = drops.clone();
        reasons.sort_unstable();
        reasons.dedup();
        fate.push(format!(
            "the next packet was dropped ({})",
            reasons.join(", ")
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
    let mut evidence = vec![serde_json::to_value(&e.record).unwrap_or_default()];
    evidence.extend(
        e.evidence
            .iter()
            .map(|r| serde_json::to_value(r).unwrap_or_default()),
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

fn endpoint(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

#[cfg(test)]
mod tests;
