//! Metrics of the events: the kernel's exact counts (`EVENT_COUNTS`, per kind, detail and
//! cgroup, counted before the ring buffer) read once a second and added to the families of
//! `status::event_metrics`, labelled with the pod that the cgroup (else the network
//! namespace) belongs to.

mod records;
mod series;
#[cfg(test)]
mod tests;

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use probe_common::{CountKey, CountValue};

pub use self::series::{Limits, Series};
use crate::{
    decode::SymbolTables,
    enrich::k8s::attrs::{K8sEnricher, Owner},
    loader::EventCounts,
    model::Record,
    status::event_metrics::EventMetrics,
};

/// How often the kernel map is read.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// How long the counts of a pod's cgroup wait for the pod to reach the cache (then they count
/// without pod labels).
const WAIT_FOR_POD: Duration = Duration::from_secs(5);
/// How often a key counted without a pod looks for one again (a pod's namespace found later).
const RESOLVE_AGAIN: Duration = Duration::from_secs(30);

/// The kernel's counts, summed over CPUs.
pub trait CountMap: Send {
    fn read_into(&self, out: &mut Vec<(CountKey, CountValue)>);
}

impl CountMap for EventCounts {
    fn read_into(&self, out: &mut Vec<(CountKey, CountValue)>) {
        for item in self.iter() {
            // A key evicted between the walk's steps is skipped; its successor is not lost.
            let Ok((key, per_cpu)) = item else { continue };
            let mut sum = CountValue::default();
            for v in per_cpu.iter() {
                sum.events += v.events;
                sum.bytes += v.bytes;
            }
            out.push((key, sum));
        }
    }
}

/// Who a cgroup or network namespace belongs to.
pub trait Owners {
    fn owner(&mut self, cgroup_id: u64, netns: u32, now: Instant) -> Owner;
}

impl Owners for K8sEnricher {
    fn owner(&mut self, cgroup_id: u64, netns: u32, now: Instant) -> Owner {
        K8sEnricher::owner(self, cgroup_id, netns, now)
    }
}

/// What is known of a kernel key.
struct Seen {
    /// The totals already added to the metrics.
    counted: CountValue,
    /// The series its events count in, once its owner is known.
    series: Option<series::SeriesKey>,
    has_pod: bool,
    resolved: Instant,
    first: Instant,
    /// The sweep that last found it in the kernel map.
    sweep: u64,
}

pub struct EventCounter {
    map: Box<dyn CountMap>,
    tables: Arc<SymbolTables>,
    seen: HashMap<CountKey, Seen>,
    series: Series,
    read: Vec<(CountKey, CountValue)>,
    sweeps: u64,
}

impl EventCounter {
    pub fn new(
        map: Box<dyn CountMap>,
        tables: Arc<SymbolTables>,
        metrics: EventMetrics,
        limits: Limits,
    ) -> Self {
        Self {
            map,
            tables,
            seen: HashMap::new(),
            series: Series::new(metrics, limits),
            read: Vec::new(),
            sweeps: 0,
        }
    }

    /// Counts a record on its way to the sinks in the families the agent counts itself
    /// (drops, conntrack expiries, findings, core signal outcomes).
    /// A record with a span of its own is its series' exemplar (the kernel-counted kinds'
    /// from the next sweep on).
    pub fn count_record(&mut self, record: &Record, now: Instant) {
        let recent = series::Recent::of(record);
        // A core signal is in both: its signal's (kernel) and its outcome's (record) series.
        if let Some(recent) = recent
            && let Some(fingerprint) = records::kernel_series_fingerprint(record)
        {
            self.series.note_recent(fingerprint, recent);
        }
        if let Some((key, n)) = records::series_of(record) {
            self.series.add(&key, n, 0, now, recent);
        }
    }

    /// Every series' count now (OTLP metrics).
    pub fn snapshot(&self) -> crate::model::MetricsSnapshot {
        self.series.snapshot()
    }

    /// Adds what the kernel counted since the last sweep to the series of each key's owner.
    pub fn sweep(&mut self, owners: &mut dyn Owners, now: Instant) {
        self.read.clear();
        self.map.read_into(&mut self.read);
        self.sweeps += 1;
        for (key, total) in self.read.drain(..) {
            let seen = self.seen.entry(key).or_insert_with(|| Seen {
                counted: CountValue::default(),
                series: None,
                has_pod: false,
                resolved: now,
                first: now,
                sweep: 0,
            });
            seen.sweep = self.sweeps;
            // Below what was counted: the kernel evicted the key and counted it again from 0.
            let base = if total.events < seen.counted.events || total.bytes < seen.counted.bytes {
                CountValue::default()
            } else {
                seen.counted
            };
            let (events, bytes) = (total.events - base.events, total.bytes - base.bytes);
            if events == 0 && bytes == 0 {
                continue;
            }
            let stale = !seen.has_pod && now.duration_since(seen.resolved) >= RESOLVE_AGAIN;
            if seen.series.is_none() || stale {
                let pod = match owners.owner(key.cgroup_id, key.netns, now) {
                    Owner::NotCached if now.duration_since(seen.first) < WAIT_FOR_POD => continue,
                    Owner::Pod(pod) => Some(pod),
                    Owner::NotCached | Owner::None => None,
                };
                seen.has_pod = pod.is_some();
                seen.resolved = now;
                seen.series = series::SeriesKey::of(&key, pod.unwrap_or_default(), &self.tables);
            }
            if let Some(series) = &seen.series {
                self.series.add_counted(series, events, bytes, now);
            }
            seen.counted = total;
        }
        let sweep = self.sweeps;
        self.seen.retain(|_, s| s.sweep == sweep);
        self.series.end_sweep();
        self.series.expire(now);
    }
}
