//! Connect failures explained: after the sinks wrote a `connect_failure` record, what else the
//! node saw of that connect joins it into a `finding` once its evidence had time to arrive:
//! packets of the flow the kernel dropped (with their reasons), and a destination that is a
//! Service without ready endpoints (from the Kubernetes cache).

use std::{
    collections::{BTreeMap, VecDeque},
    net::IpAddr,
    num::NonZeroUsize,
    sync::Arc,
    time::{Duration, Instant},
};

use lru::LruCache;

use super::{Enricher, Stage, k8s::K8sCache};
use crate::{
    decode::{
        Common, Decoded,
        connect::{ConnectFailure, Outcome},
    },
    model::{Body, Evidence, Finding, Record, describe::endpoint},
};

/// How long after a connect failure its drops may still arrive: the kernel reports a flow's
/// drops at most once a second per CPU, and the drop stage reads the tail once a second.
pub const GRACE: Duration = Duration::from_secs(2);
/// The shortest wait for the next finding's tick.
const TICK_FLOOR: Duration = Duration::from_millis(250);
/// Connect failures waiting for their evidence at once; beyond that, the oldest is judged on
/// what is known so far.
const PENDING_MAX: usize = 1024;
/// Flow ends whose drops are remembered; the least recently dropped is forgotten first.
const DROP_ENDS: usize = 4096;
/// How long drops on an end stay evidence for a connect from it.
const DROPS_FOR: Duration = Duration::from_secs(300);

/// Drops seen on one end of flows: per reason, packets.
struct Drops {
    by_reason: BTreeMap<Arc<str>, u64>,
    last: Instant,
}

pub struct ConnectCauses {
    /// Drops by the (address, port) of either end of the dropped packet: a connect is looked
    /// up by its local end, which DNAT leaves alone.
    drops: LruCache<(IpAddr, u16), Drops>,
    pending: VecDeque<(Instant, Record)>,
    /// Findings made at once (refused connects), with their connect's task and cgroup.
    ready: Vec<(Common, Finding)>,
    k8s: Option<Arc<K8sCache>>,
    node: Arc<str>,
}

/// What is known of one connect's cause.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Cause {
    /// (namespace, name, ready endpoints) of the Service the destination is.
    pub service: Option<(String, String, usize)>,
    /// Packets of the flow dropped on this node, per reason (`unknown` where the kernel gives
    /// none).
    pub drops: BTreeMap<String, u64>,
}

impl ConnectCauses {
    pub fn new(k8s: Option<Arc<K8sCache>>, node: Arc<str>) -> Self {
        Self {
            drops: LruCache::new(NonZeroUsize::new(DROP_ENDS).expect("non-zero")),
            pending: VecDeque::new(),
            ready: Vec::new(),
            k8s,
            node,
        }
    }

    fn observe(&mut self, record: &Record, now: Instant) {
        match &record.body {
            Body::PacketDrop(d) => {
                let reason: Arc<str> = d.reason.clone().unwrap_or_else(|| "unknown".into());
                for end in [(d.saddr, d.sport), (d.daddr, d.dport)] {
                    let e = self.drops.get_or_insert_mut(end, || Drops {
                        by_reason: BTreeMap::new(),
                        last: now,
                    });
                    *e.by_reason.entry(reason.clone()).or_default() += d.count;
                    e.last = now;
                }
            }
            Body::Other(o) => {
                let Some(c) = o.downcast_ref::<ConnectFailure>() else {
                    return;
                };
                if c.outcome == Outcome::Refused {
                    // Only a Service can explain a refusal, and the cache answers now: a storm
                    // of refused connects is neither copied nor waited for.
                    let cause = self.cause(c, now);
                    if let Some(f) = finding(&self.node, c, record, &cause) {
                        self.ready.push((record.common.clone(), f));
                    }
                } else {
                    self.pending.push_back((now + GRACE, record.clone()));
                }
            }
            _ => {}
        }
    }

    /// What the node knows of why the connect `c` failed.
    pub fn cause(&self, c: &ConnectFailure, now: Instant) -> Cause {
        let drops = self
            .drops
            .peek(&(c.saddr, c.sport))
            .filter(|d| now.duration_since(d.last) <= DROPS_FOR)
            .map(|d| {
                d.by_reason
                    .iter()
                    .map(|(r, n)| (r.to_string(), *n))
                    .collect()
            })
            .unwrap_or_default();
        let service = self.k8s.as_ref().and_then(|cache| {
            let idx = cache.indexes.read().unwrap_or_else(|e| e.into_inner());
            let svc = idx.services.get(&c.daddr)?;
            let ready = idx.ready_endpoints(&svc.namespace, &svc.name);
            Some((svc.namespace.to_string(), svc.name.to_string(), ready))
        });
        Cause { service, drops }
    }

    /// Findings of the failures whose grace is over (all of them when `all`).
    fn due(&mut self, now: Instant, all: bool, out: &mut Vec<(Common, Finding)>) {
        out.append(&mut self.ready);
        while let Some((due, _)) = self.pending.front()
            && (all || *due <= now || self.pending.len() > PENDING_MAX)
        {
            let Some((_, record)) = self.pending.pop_front() else {
                break;
            };
            let Body::Other(o) = &record.body else {
                continue;
            };
            let Some(c) = o.downcast_ref::<ConnectFailure>() else {
                continue;
            };
            let cause = self.cause(c, now);
            if let Some(f) = finding(&self.node, c, &record, &cause) {
                out.push((record.common.clone(), f));
            }
        }
    }
}

/// The finding of a connect whose cause is known: the Service has no ready endpoints, or
/// packets of the flow were dropped on this node (a connect that was refused says why itself:
/// the SYN a closed port refuses is a drop too, `NO_SOCKET`). None when neither.
pub fn finding(node: &str, c: &ConnectFailure, record: &Record, cause: &Cause) -> Option<Finding> {
    let empty_service = cause.service.as_ref().filter(|(_, _, ready)| *ready == 0);
    let drops = if c.outcome == Outcome::Refused {
        &BTreeMap::new()
    } else {
        &cause.drops
    };
    if empty_service.is_none() && drops.is_empty() {
        return None;
    }
    let from = record
        .k8s
        .as_ref()
        .and_then(|k| {
            Some(format!(
                "{}/{}",
                k.namespace.as_deref()?,
                k.pod_name.as_deref()?
            ))
        })
        .or_else(|| {
            let comm = record.common.comm.as_deref()?;
            Some(format!("{comm}[{}]", record.common.pid?))
        })
        // The kernel ended it in a timer: no task, its own end names it.
        .unwrap_or_else(|| endpoint(c.saddr, c.sport));
    let to = endpoint(c.daddr, c.dport);
    let mut parts = Vec::new();
    let mut name = "connect_dropped";
    let mut to_whom = to.clone();
    if let Some((ns, svc, _)) = empty_service {
        name = "connect_service_no_endpoints";
        to_whom = format!("{to} (Service {ns}/{svc}, 0 ready endpoints)");
        parts.push(format!(
            "the Service {ns}/{svc} has no ready endpoints: check its selector and whether its \
             pods are ready"
        ));
    }
    if !drops.is_empty() {
        let total: u64 = drops.values().sum();
        let reasons: Vec<String> = drops.iter().map(|(r, n)| format!("{r} ×{n}")).collect();
        let by = if drops.contains_key("NETFILTER_DROP") {
            " by netfilter (a firewall rule or a NetworkPolicy)"
        } else {
            ""
        };
        parts.push(format!(
            "{total} {} of the flow {} dropped on node {node}{by} ({})",
            if total == 1 { "packet" } else { "packets" },
            if total == 1 { "was" } else { "were" },
            reasons.join(", ")
        ));
    }
    let summary = format!(
        "connect from {from} to {to_whom} {}: {}.",
        c.summary(),
        parts.join("; ")
    );
    let mut values = BTreeMap::new();
    if let Some((ns, svc, ready)) = &cause.service {
        values.insert("service".to_owned(), format!("{ns}/{svc}").into());
        values.insert("ready_endpoints".to_owned(), (*ready).into());
    }
    if !drops.is_empty() {
        values.insert(
            "drops".to_owned(),
            serde_json::to_value(drops).unwrap_or_default(),
        );
    }
    Some(Finding {
        finding: name,
        summary,
        evidence: vec![
            Evidence::Record(Box::new(record.clone())),
            Evidence::Values(values),
        ],
        netns_path: None,
        saddr: Some(c.saddr),
        sport: Some(c.sport),
        daddr: Some(c.daddr),
        dport: Some(c.dport),
        backend_addr: None,
        backend_port: None,
        timeout_s: None,
        timeout_sysctl: None,
        established_for_s: None,
    })
}

/// Takes no kernel event; sees every record after the sinks (before the conntrack
/// correlator, which keeps what it takes) and writes a finding per connect failure whose
/// cause is known, `GRACE` after it.
impl Stage for ConnectCauses {
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
        self.observe(&record, now);
        Some(record)
    }
    fn pending(&self, _now: Instant) -> bool {
        !self.pending.is_empty() || !self.ready.is_empty()
    }
    /// At most `TICK_FLOOR` early: connects failing one after another do not wake the
    /// consumer for each.
    fn tick_within(&self, now: Instant) -> Duration {
        if !self.ready.is_empty() {
            return Duration::ZERO;
        }
        self.pending.front().map_or(super::TICK_EVERY, |(due, _)| {
            due.saturating_duration_since(now).max(TICK_FLOOR)
        })
    }
    fn on_tick(&mut self, now: Instant, cx: &Enricher, out: &mut Vec<Record>) {
        self.emit(now, cx, false, out);
    }
    fn drain(&mut self, cx: &Enricher, out: &mut Vec<Record>) {
        self.emit(Instant::now(), cx, true, out);
    }
}

impl ConnectCauses {
    fn emit(&mut self, now: Instant, cx: &Enricher, all: bool, out: &mut Vec<Record>) {
        let mut found = Vec::new();
        self.due(now, all, &mut found);
        for (common, f) in found {
            let mut r = cx.agent_record(Body::Finding(Box::new(f)));
            // The connect's task, cgroup and namespace: the finding counts under its pod.
            r.common = common;
            out.push(r);
        }
    }
}

#[cfg(test)]
mod tests;
