//! The series of the event families: one per kernel key's labels (the kind's own labels and
//! the pod's), at most `Limits::max_series` with pod labels; beyond it a family's events count
//! in its overflow series (`pod="_overflow"`, the kind's labels kept). The node's own series
//! (no pod labels) are not capped: a storm in many pods never hides the node's. Series without
//! an event for `Limits::idle` are removed.

use std::time::{Duration, Instant, SystemTime};

use foldhash::HashMap;

use probe_common::{COUNTED_TCP_RETRANSMIT, CountKey, REASON_NONE, direction, kind};

use crate::{
    decode::{SymbolTables, connect},
    model::signals::{origin, signal_name},
    status::event_metrics::{
        ConnectLabels, DropLabels, EventCounter, EventMetrics, ExpiryLabels, FindingLabels,
        MetricLabel, OVERFLOW_POD, OutcomeLabels, PodLabels, ResetLabels, RetransmitLabels,
        SignalLabels, SpanExemplar, StreamLabels, names,
    },
};

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Series with pod labels at most.
    pub max_series: usize,
    /// A series without an event for this long is removed.
    pub idle: Duration,
}

/// How often idle series are looked for.
const EXPIRE_EVERY: Duration = Duration::from_secs(60);

/// The labels of one series, in its family.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SeriesKey {
    Reset(ResetLabels),
    Connect(ConnectLabels),
    Retransmit(RetransmitLabels),
    Signal(SignalLabels),
    Wasm(StreamLabels),
    Drop(DropLabels),
    Expiry(ExpiryLabels),
    Finding(FindingLabels),
    Outcome(OutcomeLabels),
}

impl SeriesKey {
    /// The series of a kernel key's events owned by `pod`; None for kinds without metrics.
    pub fn of(key: &CountKey, pod: PodLabels, tables: &SymbolTables) -> Option<Self> {
        Some(match key.kind {
            kind::TCP_RESET => Self::Reset(ResetLabels {
                direction: match u16::try_from(key.a) {
                    Ok(direction::SENT) => "sent",
                    Ok(direction::RECEIVED) => "received",
                    _ => "unknown",
                },
                reason: match tables.reset_reasons.get(&key.b) {
                    Some(name) => name.to_string(),
                    None if key.b == REASON_NONE => "unknown".to_owned(),
                    None => key.b.to_string(),
                },
                pod,
            }),
            kind::CONNECT_FAILURE => Self::Connect(ConnectLabels {
                outcome: connect::outcome(key.a).name(),
                error: connect::error_label(key.a).into_owned(),
                pod,
            }),
            COUNTED_TCP_RETRANSMIT => Self::Retransmit(RetransmitLabels {
                state: tables
                    .tcp_states
                    .get(&key.a)
                    .map_or_else(|| "unknown".to_owned(), |s| s.to_string()),
                pod,
            }),
            kind::CORE_SIGNAL => Self::Signal(SignalLabels {
                signal: signal_name(key.a),
                origin: origin(key.b as i32).name(),
                pod,
            }),
            kind::WASM_WRITE_RESULT => Self::Wasm(StreamLabels {
                stream: if key.a == 2 { "stderr" } else { "stdout" },
                pod,
            }),
            _ => return None,
        })
    }

    /// A hash of the series' family and labels, the same as `kernel_series_fingerprint`
    /// gives a record of it; None for the families counted from records.
    pub fn fingerprint(&self) -> Option<u64> {
        Some(match self {
            Self::Reset(l) => {
                fingerprint(SeriesTag::Reset, &[l.direction, &l.reason], l.pod.parts())
            }
            Self::Connect(l) => {
                fingerprint(SeriesTag::Connect, &[l.outcome, &l.error], l.pod.parts())
            }
            Self::Signal(l) => {
                fingerprint(SeriesTag::Signal, &[&l.signal, l.origin], l.pod.parts())
            }
            Self::Wasm(l) => fingerprint(SeriesTag::Wasm, &[l.stream], l.pod.parts()),
            _ => return None,
        })
    }

    /// The series' labels as /metrics names them, the pod's last.
    pub fn labels(&self) -> Vec<(&'static str, String)> {
        let mut out: Vec<(&'static str, String)> = match self {
            Self::Reset(l) => vec![
                ("direction", l.direction.into()),
                ("reason", l.reason.clone()),
            ],
            Self::Connect(l) => vec![("outcome", l.outcome.into()), ("error", l.error.clone())],
            Self::Retransmit(l) => vec![("state", l.state.clone())],
            Self::Signal(l) => vec![("signal", l.signal.clone()), ("origin", l.origin.into())],
            Self::Wasm(l) => vec![("stream", l.stream.into())],
            Self::Drop(l) => vec![("reason", l.reason.clone())],
            Self::Expiry(l) => vec![("timeout_sysctl", l.timeout_sysctl.clone())],
            Self::Finding(l) => vec![("finding", l.finding.into())],
            Self::Outcome(l) => vec![("signal", l.signal.clone()), ("outcome", l.outcome.into())],
        };
        let names = ["namespace", "pod", "container", "workload_kind", "workload"];
        out.extend(
            names
                .into_iter()
                .zip(self.pod().parts())
                .map(|(n, v)| (n, v.to_owned())),
        );
        out
    }

    fn pod(&self) -> &PodLabels {
        match self {
            Self::Reset(l) => &l.pod,
            Self::Connect(l) => &l.pod,
            Self::Retransmit(l) => &l.pod,
            Self::Signal(l) => &l.pod,
            Self::Wasm(l) => &l.pod,
            Self::Drop(l) => &l.pod,
            Self::Expiry(l) => &l.pod,
            Self::Finding(l) => &l.pod,
            Self::Outcome(l) => &l.pod,
        }
    }

    fn pod_mut(&mut self) -> &mut PodLabels {
        match self {
            Self::Reset(l) => &mut l.pod,
            Self::Connect(l) => &mut l.pod,
            Self::Retransmit(l) => &mut l.pod,
            Self::Signal(l) => &mut l.pod,
            Self::Wasm(l) => &mut l.pod,
            Self::Drop(l) => &mut l.pod,
            Self::Expiry(l) => &mut l.pod,
            Self::Finding(l) => &mut l.pod,
            Self::Outcome(l) => &mut l.pod,
        }
    }

    /// The family's overflow series with the same kind labels.
    fn overflow(&self) -> Self {
        let mut key = self.clone();
        *key.pod_mut() = PodLabels {
            pod: OVERFLOW_POD.to_owned(),
            ..PodLabels::default()
        };
        key
    }

    fn is_overflow(&self) -> bool {
        self.pod().pod == OVERFLOW_POD
    }

    /// A series with pod labels: held against `Limits::max_series`. The overflow series and
    /// the node's own (no pod labels, bounded by the family's labels) are not.
    fn is_capped(&self) -> bool {
        !self.is_overflow() && !self.pod().is_node()
    }

    fn family(&self) -> &'static str {
        match self {
            Self::Reset(_) => names::TCP_RESETS,
            Self::Connect(_) => names::TCP_CONNECT_FAILURES,
            Self::Retransmit(_) => names::TCP_RETRANSMITS,
            Self::Signal(_) => names::CORE_SIGNALS,
            Self::Wasm(_) => names::WASM_OUTPUT_WRITES,
            Self::Drop(_) => names::PACKET_DROPS,
            Self::Expiry(_) => names::CONNTRACK_EXPIRIES,
            Self::Finding(_) => names::FINDINGS,
            Self::Outcome(_) => names::CORE_SIGNAL_OUTCOMES,
        }
    }
}

/// The families the kernel counts, as fingerprints tell them apart.
#[derive(Debug, Clone, Copy, Hash)]
pub enum SeriesTag {
    Reset,
    Connect,
    Signal,
    Wasm,
}

/// A hash of a kernel-counted series' identity: its family, its own labels and the pod's.
pub fn fingerprint(tag: SeriesTag, labels: &[&str], pod: [&str; 5]) -> u64 {
    use std::hash::{BuildHasher as _, Hash, Hasher};
    let mut h = foldhash::fast::FixedState::default().build_hasher();
    tag.hash(&mut h);
    for part in labels.iter().chain(&pod) {
        part.hash(&mut h);
    }
    h.finish()
}

/// The span of a recent record of a series that was exported in full: the series'
/// exemplar (OpenMetrics), with the record's time. Raw IDs: written in hex only when the
/// series counts it, not for every record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recent {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    pub time: SystemTime,
}

impl Recent {
    /// A written record's span, when it has one of its own (not over the OTLP budget).
    pub fn of(record: &crate::model::Record) -> Option<Self> {
        let (trace_id, span_id) = record.span_ids()?;
        Some(Self {
            trace_id,
            span_id,
            time: SystemTime::UNIX_EPOCH + Duration::from_nanos(record.time_unix_nano),
        })
    }

    /// The span it names.
    pub fn span(&self) -> crate::model::SpanRef {
        crate::model::SpanRef {
            trace_id: self.trace_id,
            span_id: self.span_id,
        }
    }

    /// The exemplar's labels.
    pub fn labels(&self) -> SpanExemplar {
        SpanExemplar {
            trace_id: crate::model::hex(&self.trace_id),
            span_id: crate::model::hex(&self.span_id),
        }
    }
}

struct Entry {
    events: EventCounter,
    /// Wasm output only.
    bytes: Option<EventCounter>,
    /// When it was made: the start of its cumulative count.
    start: SystemTime,
    last: Instant,
    /// The exemplar it shows: kept, since every increment sets (or clears) it.
    recent: Option<Recent>,
}

pub struct Series {
    metrics: EventMetrics,
    limits: Limits,
    entries: HashMap<SeriesKey, Entry>,
    /// Entries with pod labels (neither the overflow series nor the node's own).
    counted: usize,
    last_expiry: Option<Instant>,
    /// The latest full record of each series the kernel counts (by its fingerprint), until
    /// the sweep that adds its count, or the end of that sweep (then the series' exemplar):
    /// a record costs one insert here, its exemplar is made at most once a sweep.
    pending: HashMap<u64, Recent>,
    /// The series each fingerprint was counted in: a record that arrives after the sweep
    /// that counted its event (a single reset) still becomes its series' exemplar.
    by_fingerprint: HashMap<u64, SeriesKey>,
}

impl Series {
    pub fn new(metrics: EventMetrics, limits: Limits) -> Self {
        Self {
            metrics,
            limits,
            entries: HashMap::default(),
            counted: 0,
            last_expiry: None,
            pending: HashMap::default(),
            by_fingerprint: HashMap::default(),
        }
    }

    /// A full record of the kernel-counted series of `fingerprint`: its series' exemplar at
    /// the next sweep (the latest one since the last sweep). At most one pending per series
    /// that had a record since the last sweep.
    pub fn note_recent(&mut self, fingerprint: u64, recent: Recent) {
        self.pending.insert(fingerprint, recent);
    }

    /// The records whose series got no count in this sweep become its exemplar if the series
    /// exists (a record read after the sweep that counted its event); the others are
    /// forgotten (their key is still waiting for its pod): the map stays bounded.
    pub fn end_sweep(&mut self) {
        for (fingerprint, recent) in self.pending.drain() {
            let entry = self
                .by_fingerprint
                .get(&fingerprint)
                .and_then(|key| self.entries.get_mut(key));
            if let Some(entry) = entry {
                Self::count(entry, 0, 0, Some(recent));
            }
        }
    }

    /// Adds what the kernel counted to the series of `key`, its latest full record
    /// (`note_recent`) its exemplar.
    pub fn add_counted(&mut self, key: &SeriesKey, events: u64, bytes: u64, now: Instant) {
        let fingerprint = key.fingerprint();
        let recent = fingerprint.and_then(|f| self.pending.remove(&f));
        self.add(key, events, bytes, now, recent);
        if let Some(f) = fingerprint
            && self.entries.contains_key(key)
            && !self.by_fingerprint.contains_key(&f)
        {
            self.by_fingerprint.insert(f, key.clone());
        }
    }

    /// Adds `events` (and `bytes`) to the series of `key`, made if needed: in its family's
    /// overflow series when the cap is reached.
    pub fn add(
        &mut self,
        key: &SeriesKey,
        events: u64,
        bytes: u64,
        now: Instant,
        recent: Option<Recent>,
    ) {
        if let Some(entry) = self.entries.get_mut(key) {
            return Self::inc(entry, events, bytes, now, recent);
        }
        let capped = key.is_capped();
        if capped && self.counted >= self.limits.max_series {
            self.metrics
                .series_overflow
                .get_or_create(&MetricLabel {
                    metric: key.family(),
                })
                .inc_by(events);
            let overflow = key.overflow();
            let entry = match self.entries.get_mut(&overflow) {
                Some(entry) => entry,
                None => {
                    let made = self.make(&overflow, now);
                    self.entries.entry(overflow).or_insert(made)
                }
            };
            return Self::inc(entry, events, bytes, now, recent);
        }
        let mut entry = self.make(key, now);
        Self::inc(&mut entry, events, bytes, now, recent);
        self.entries.insert(key.clone(), entry);
        if capped {
            self.counted += 1;
            self.metrics.series.set(self.counted as i64);
        }
    }

    fn inc(entry: &mut Entry, events: u64, bytes: u64, now: Instant, recent: Option<Recent>) {
        Self::count(entry, events, bytes, recent);
        entry.last = now;
    }

    /// Adds to the counters; a record other than the exemplar's becomes the exemplar (with
    /// this increment as its value). The same exemplar is never set again with another value:
    /// Prometheus refuses a changed exemplar with the same time as out of order.
    fn count(entry: &mut Entry, events: u64, bytes: u64, recent: Option<Recent>) {
        use prometheus_client::metrics::counter::Atomic as _;
        match recent.filter(|r| entry.recent != Some(*r)) {
            Some(r) => {
                entry.recent = Some(r);
                let (labels, time) = (r.labels(), Some(r.time));
                if let Some(b) = &entry.bytes {
                    b.inc_by(bytes, Some(labels.clone()), time);
                }
                entry.events.inc_by(events, Some(labels), time);
            }
            None => {
                if let Some(b) = &entry.bytes {
                    b.inner().inc_by(bytes);
                }
                entry.events.inner().inc_by(events);
            }
        }
    }

    fn make(&self, key: &SeriesKey, now: Instant) -> Entry {
        let m = &self.metrics;
        let (events, bytes) = match key {
            SeriesKey::Reset(l) => (m.tcp_resets.get_or_create(l).clone(), None),
            SeriesKey::Connect(l) => (m.tcp_connect_failures.get_or_create(l).clone(), None),
            SeriesKey::Retransmit(l) => (m.tcp_retransmits.get_or_create(l).clone(), None),
            SeriesKey::Signal(l) => (m.core_signals.get_or_create(l).clone(), None),
            SeriesKey::Wasm(l) => (
                m.wasm_output_writes.get_or_create(l).clone(),
                Some(m.wasm_output_bytes.get_or_create(l).clone()),
            ),
            SeriesKey::Drop(l) => (m.packet_drops.get_or_create(l).clone(), None),
            SeriesKey::Expiry(l) => (m.conntrack_expiries.get_or_create(l).clone(), None),
            SeriesKey::Finding(l) => (m.findings.get_or_create(l).clone(), None),
            SeriesKey::Outcome(l) => (m.core_signal_outcomes.get_or_create(l).clone(), None),
        };
        Entry {
            events,
            bytes,
            start: SystemTime::now(),
            last: now,
            recent: None,
        }
    }

    /// Every series' count now, by family (OTLP metrics).
    pub fn snapshot(&self) -> crate::model::MetricsSnapshot {
        use crate::model::{MetricFamily, MetricPoint};
        let nanos = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        };
        let mut families: Vec<MetricFamily> = Vec::new();
        let mut add = |name: &'static str, unit: &'static str, point: MetricPoint| match families
            .iter_mut()
            .find(|f| f.name == name)
        {
            Some(f) => f.points.push(point),
            None => families.push(MetricFamily {
                name,
                description: names::help(name),
                unit,
                points: vec![point],
            }),
        };
        for (key, entry) in &self.entries {
            let point = |value: u64| MetricPoint {
                labels: key.labels(),
                start_unix_nano: nanos(entry.start),
                value,
                exemplar: entry.recent.map(|r| (r.span(), nanos(r.time))),
            };
            add(key.family(), "{event}", point(entry.events.get().0));
            if let Some(bytes) = &entry.bytes {
                add(names::WASM_OUTPUT_BYTES, "By", point(bytes.get().0));
            }
        }
        crate::model::MetricsSnapshot {
            time_unix_nano: nanos(SystemTime::now()),
            families,
        }
    }

    /// Removes the series idle for `Limits::idle` (checked once a minute).
    pub fn expire(&mut self, now: Instant) {
        if self
            .last_expiry
            .is_some_and(|t| now.duration_since(t) < EXPIRE_EVERY)
        {
            return;
        }
        self.last_expiry = Some(now);
        let idle = self.limits.idle;
        let m = &self.metrics;
        let mut removed = 0usize;
        self.entries.retain(|key, entry| {
            if now.duration_since(entry.last) < idle {
                return true;
            }
            match key {
                SeriesKey::Reset(l) => m.tcp_resets.remove(l),
                SeriesKey::Connect(l) => m.tcp_connect_failures.remove(l),
                SeriesKey::Retransmit(l) => m.tcp_retransmits.remove(l),
                SeriesKey::Signal(l) => m.core_signals.remove(l),
                SeriesKey::Wasm(l) => {
                    m.wasm_output_bytes.remove(l);
                    m.wasm_output_writes.remove(l)
                }
                SeriesKey::Drop(l) => m.packet_drops.remove(l),
                SeriesKey::Expiry(l) => m.conntrack_expiries.remove(l),
                SeriesKey::Finding(l) => m.findings.remove(l),
                SeriesKey::Outcome(l) => m.core_signal_outcomes.remove(l),
            };
            m.series_expired.inc();
            removed += usize::from(key.is_capped());
            false
        });
        self.counted -= removed;
        self.metrics.series.set(self.counted as i64);
        let entries = &self.entries;
        self.by_fingerprint
            .retain(|_, key| entries.contains_key(key));
    }
}
