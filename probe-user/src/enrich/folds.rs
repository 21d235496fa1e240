//! Storm folding, the agent's half: the kernel sends the first records of each key and window
//! (`FOLDS`) and counts the rest; this stage reads those counts once a second while resets
//! arrive and writes one `summary` record per key with the exact number folded since its
//! previous summary, the key's fields, the first and last time, and the spans of the key's
//! records that went out in full meanwhile (so a trace backend links the count to its detail).

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use probe_common::{FoldKey, FoldWindow, REASON_NONE, direction, kind};

use super::{Enricher, Stage};
use crate::{
    decode::{Decoded, SymbolTables},
    loader::Folds,
    model::{BESIDE_MAX, Body, Common, Direction, Other, Record, SpanRef, Summary},
};

/// How often the kernel's fold counts are read while resets arrive.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// How long after the last reset record the counts are still read (the tail of a storm is
/// folded after the last record that went out).
const ACTIVE_FOR: Duration = Duration::from_secs(3);

/// The kernel's fold counts of each key, over CPUs: `folded` summed, `first_folded_ns` the
/// earliest of the current windows, `last_folded_ns` the latest.
pub trait FoldMap: Send {
    fn read_into(&self, out: &mut Vec<(FoldKey, FoldWindow)>);
}

impl FoldMap for Folds {
    fn read_into(&self, out: &mut Vec<(FoldKey, FoldWindow)>) {
        for (key, per_cpu) in self.iter().flatten() {
            let mut sum = FoldWindow::default();
            for w in per_cpu.iter().filter(|w| w.folded > 0) {
                sum.folded += w.folded;
                if w.first_folded_ns != 0
                    && (sum.first_folded_ns == 0 || w.first_folded_ns < sum.first_folded_ns)
                {
                    sum.first_folded_ns = w.first_folded_ns;
                }
                sum.last_folded_ns = sum.last_folded_ns.max(w.last_folded_ns);
            }
            out.push((key, sum));
        }
    }
}

/// How long the spans of a key's full records wait for a summary of that key.
const BESIDE_FOR: Duration = Duration::from_secs(3);

/// A fold key as a written reset names it: cgroup, network namespace, direction, reason and
/// service port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Ident {
    cgroup_id: u64,
    netns: u32,
    sent: bool,
    reason: Option<Arc<str>>,
    port: u16,
}

/// The spans of a key's latest full records.
struct Beside {
    spans: std::collections::VecDeque<SpanRef>,
    last: Instant,
}

/// What was summarised of a key: its folded total then, and when its last folded record was.
#[derive(Clone, Copy)]
struct Reported {
    folded: u64,
    last_ns: u64,
}

pub struct FoldTotals {
    map: Option<Box<dyn FoldMap>>,
    tables: Arc<SymbolTables>,
    reported: HashMap<FoldKey, Reported>,
    active_until: Option<Instant>,
    last_sweep: Option<Instant>,
    read: Vec<(FoldKey, FoldWindow)>,
    beside: HashMap<Ident, Beside>,
}

impl FoldTotals {
    pub fn new(map: Option<Box<dyn FoldMap>>, tables: Arc<SymbolTables>) -> Self {
        Self {
            map,
            tables,
            reported: HashMap::new(),
            active_until: None,
            last_sweep: None,
            read: Vec::new(),
            beside: HashMap::new(),
        }
    }

    /// A reset written in full with a span of its own: one its key's next summary names.
    fn note_full(&mut self, record: &Record, now: Instant) {
        let (Body::TcpReset(r), Some((trace_id, span_id))) = (&record.body, record.span_ids())
        else {
            return;
        };
        let ident = Ident {
            cgroup_id: record.common.cgroup_id.unwrap_or(0),
            netns: record.common.netns.unwrap_or(0),
            sent: r.direction == Direction::Sent,
            reason: r.reason.clone(),
            port: r.sport.min(r.dport),
        };
        let entry = self.beside.entry(ident).or_insert_with(|| Beside {
            spans: std::collections::VecDeque::with_capacity(BESIDE_MAX),
            last: now,
        });
        if entry.spans.len() == BESIDE_MAX {
            entry.spans.pop_front();
        }
        entry.spans.push_back(SpanRef { trace_id, span_id });
        entry.last = now;
    }

    /// The summaries of what the kernel folded since the last sweep.
    fn sweep(&mut self, cx: &Enricher, out: &mut Vec<Record>, now: Instant) {
        let Some(map) = &self.map else { return };
        let mut read = std::mem::take(&mut self.read);
        map.read_into(&mut read);
        let mut present = HashMap::with_capacity(read.len());
        for (key, total) in read.drain(..) {
            let before = self.reported.get(&key).copied();
            // Below what was summarised: the kernel evicted the key and made it again.
            let base = before.filter(|r| r.folded <= total.folded);
            let count = total.folded - base.map_or(0, |r| r.folded);
            present.insert(
                key,
                Reported {
                    folded: total.folded,
                    last_ns: total.last_folded_ns,
                },
            );
            if count == 0 {
                continue;
            }
            // The first of these: the window's first fold, unless that one was summarised.
            let first_ns = match base {
                Some(r) if r.last_ns >= total.first_folded_ns => r.last_ns,
                _ => total.first_folded_ns,
            };
            let beside = self.take_beside(&key);
            out.push(self.summary(cx, &key, count, (first_ns, total.last_folded_ns), beside));
        }
        self.reported = present;
        self.read = read;
        self.beside
            .retain(|_, b| now.duration_since(b.last) < BESIDE_FOR);
    }

    /// The spans of the key's full records since its previous summary.
    fn take_beside(&mut self, key: &FoldKey) -> Vec<SpanRef> {
        let k = &key.count;
        let Some(direction) = reset_direction(k) else {
            return Vec::new();
        };
        let ident = Ident {
            cgroup_id: k.cgroup_id,
            netns: k.netns,
            sent: direction == Direction::Sent,
            reason: self.reason(k),
            port: u16::try_from(key.port).unwrap_or(0),
        };
        self.beside
            .remove(&ident)
            .map(|b| b.spans.into())
            .unwrap_or_default()
    }

    /// A reset key's reason as its records name it.
    fn reason(&self, k: &probe_common::CountKey) -> Option<Arc<str>> {
        (k.kind == kind::TCP_RESET && k.b != REASON_NONE).then(|| {
            self.tables
                .reset_reasons
                .get(&k.b)
                .cloned()
                .unwrap_or_else(|| k.b.to_string().into())
        })
    }

    fn summary(
        &self,
        cx: &Enricher,
        key: &FoldKey,
        count: u64,
        (first_ns, last_ns): (u64, u64),
        beside: Vec<SpanRef>,
    ) -> Record {
        let k = &key.count;
        let direction = reset_direction(k);
        let reason = self.reason(k);
        let summary = Summary {
            folded_by: crate::model::FoldedBy::Kernel,
            folded_kind: probe_common::kind::name(k.kind).unwrap_or("unknown"),
            count,
            first_unix_nano: cx.wall_time(first_ns),
            last_unix_nano: cx.wall_time(last_ns),
            direction,
            reason,
            port: u16::try_from(key.port).unwrap_or(0),
            beside,
        };
        let mut common = Common::none();
        common.ktime_ns = last_ns;
        common.cgroup_id = (k.cgroup_id != 0).then_some(k.cgroup_id);
        common.netns = (k.netns != 0).then_some(k.netns);
        cx.kernel_event(Decoded {
            common,
            body: Body::Other(Other::new(summary)),
        })
    }
}

/// A reset key's direction; None for other kinds.
fn reset_direction(k: &probe_common::CountKey) -> Option<Direction> {
    if k.kind != kind::TCP_RESET {
        return None;
    }
    match u16::try_from(k.a) {
        Ok(direction::SENT) => Some(Direction::Sent),
        Ok(direction::RECEIVED) => Some(Direction::Received),
        _ => None,
    }
}

impl Stage for FoldTotals {
    fn wants(&self, _event: &Decoded) -> bool {
        false
    }
    fn on_event(
        &mut self,
        event: Decoded,
        _cx: &Enricher,
        _out: &mut Vec<Record>,
    ) -> Option<Decoded> {
        Some(event)
    }
    /// A reset going out: its key may be folding; read the counts for a while.
    fn on_record(&mut self, record: &mut Record, now: Instant) {
        if self.map.is_some() && matches!(record.body, Body::TcpReset(_)) {
            self.active_until = Some(now + ACTIVE_FOR);
        }
    }
    fn wants_written(&self) -> bool {
        self.map.is_some()
    }
    /// A reset with its span (chosen before the sinks): its key's next summary names it.
    fn on_written(&mut self, record: Record, now: Instant) -> Option<Record> {
        self.note_full(&record, now);
        Some(record)
    }
    fn pending(&self, now: Instant) -> bool {
        self.active_until.is_some_and(|t| now <= t)
    }
    /// Its sweep is due once a second.
    fn tick_within(&self, now: Instant) -> Duration {
        self.last_sweep.map_or(Duration::ZERO, |t| {
            (t + SWEEP_EVERY).saturating_duration_since(now)
        })
    }
    fn on_tick(&mut self, now: Instant, cx: &Enricher, out: &mut Vec<Record>) {
        if self
            .last_sweep
            .is_some_and(|t| now.duration_since(t) < SWEEP_EVERY)
        {
            return;
        }
        self.last_sweep = Some(now);
        self.sweep(cx, out, now);
    }
    fn drain(&mut self, cx: &Enricher, out: &mut Vec<Record>) {
        self.sweep(cx, out, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use probe_common::CountKey;

    use super::*;

    #[derive(Clone, Default)]
    struct FakeFolds(Arc<Mutex<Vec<(FoldKey, FoldWindow)>>>);

    impl FakeFolds {
        fn set(&self, key: FoldKey, folded: u64, first: u64, last: u64) {
            let mut m = self.0.lock().unwrap();
            m.retain(|(k, _)| *k != key);
            let w = FoldWindow {
                folded,
                first_folded_ns: first,
                last_folded_ns: last,
                ..FoldWindow::default()
            };
            m.push((key, w));
        }
    }

    impl FoldMap for FakeFolds {
        fn read_into(&self, out: &mut Vec<(FoldKey, FoldWindow)>) {
            out.extend(self.0.lock().unwrap().iter().copied());
        }
    }

    fn key(cgroup_id: u64, port: u32) -> FoldKey {
        FoldKey {
            count: CountKey {
                cgroup_id,
                netns: 4026531840,
                kind: kind::TCP_RESET,
                a: u32::from(direction::SENT),
                b: 2,
            },
            port,
            _pad: 0,
        }
    }

    fn stage(map: &FakeFolds) -> FoldTotals {
        let mut tables = SymbolTables::default();
        tables.reset_reasons.insert(2, "NO_SOCKET".into());
        FoldTotals::new(Some(Box::new(map.clone())), Arc::new(tables))
    }

    fn summaries(out: &[Record]) -> Vec<(u64, Summary)> {
        out.iter()
            .map(|r| match &r.body {
                Body::Other(o) => (
                    r.common.cgroup_id.unwrap_or(0),
                    o.downcast_ref::<Summary>().expect("a summary").clone(),
                ),
                other => panic!("not a summary: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn each_sweep_summarises_exactly_what_was_folded_since_the_last_per_key() {
        let map = FakeFolds::default();
        let mut s = stage(&map);
        let cx = Enricher::fixed("n", 1_000);
        let t = Instant::now();
        map.set(key(1, 8080), 41_230, 100, 900);
        map.set(key(2, 8080), 0, 0, 0);
        let mut out = Vec::new();
        s.on_tick(t, &cx, &mut out);
        let got = summaries(&out);
        assert_eq!(got.len(), 1, "a key with nothing folded has no summary");
        let (cgroup, sum) = &got[0];
        assert_eq!(*cgroup, 1);
        assert_eq!(sum.count, 41_230);
        assert_eq!((sum.first_unix_nano, sum.last_unix_nano), (1_100, 1_900));
        assert_eq!(sum.port, 8080);
        assert_eq!(sum.reason.as_deref(), Some("NO_SOCKET"));
        assert_eq!(sum.direction, Some(Direction::Sent));
        // Within a second: no sweep. Then only the increase, from where the last one ended.
        map.set(key(1, 8080), 41_240, 100, 1_500);
        out.clear();
        s.on_tick(t + Duration::from_millis(500), &cx, &mut out);
        assert!(out.is_empty());
        s.on_tick(t + Duration::from_secs(1), &cx, &mut out);
        let got = summaries(&out);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1.count, 10);
        assert_eq!(
            (got[0].1.first_unix_nano, got[0].1.last_unix_nano),
            (1_900, 2_500)
        );
        // Another key (another pod) folds on its own; a recreated key counts from zero.
        map.set(key(3, 8080), 5, 2_000, 2_100);
        map.set(key(1, 8080), 7, 3_000, 3_100);
        out.clear();
        s.on_tick(t + Duration::from_secs(2), &cx, &mut out);
        let mut got = summaries(&out);
        got.sort_by_key(|(c, _)| *c);
        let counts: Vec<(u64, u64)> = got.iter().map(|(c, s)| (*c, s.count)).collect();
        assert_eq!(counts, vec![(1, 7), (3, 5)]);
    }

    #[test]
    fn sweeps_run_only_while_resets_go_out() {
        let map = FakeFolds::default();
        let mut s = stage(&map);
        let t = Instant::now();
        assert!(!s.pending(t));
        let mut record = crate::model::samples::reset();
        s.on_record(&mut record, t);
        assert!(s.pending(t + Duration::from_secs(3)));
        assert!(!s.pending(t + Duration::from_secs(4)));
    }

    /// The consumer's timer wakes the thread when the next sweep is due, not every 250 ms.
    #[test]
    fn the_next_tick_is_wanted_when_the_next_sweep_is_due() {
        let map = FakeFolds::default();
        let mut s = stage(&map);
        let cx = Enricher::fixed("n", 1_000);
        let t = Instant::now();
        assert_eq!(s.tick_within(t), Duration::ZERO, "never swept: due now");
        s.on_tick(t, &cx, &mut Vec::new());
        assert_eq!(s.tick_within(t), SWEEP_EVERY);
        let later = t + Duration::from_millis(300);
        assert_eq!(s.tick_within(later), Duration::from_millis(700));
        assert_eq!(s.tick_within(t + SWEEP_EVERY * 2), Duration::ZERO);
    }

    #[test]
    fn a_summary_line_names_the_count_and_the_key() {
        let sum = Summary {
            folded_by: crate::model::FoldedBy::Kernel,
            folded_kind: "tcp_reset",
            count: 41_230,
            first_unix_nano: 0,
            last_unix_nano: 980_000_000,
            direction: Some(Direction::Sent),
            reason: Some("NO_SOCKET".into()),
            port: 6379,
            beside: Vec::new(),
        };
        let mut common = Common::none();
        common.netns = Some(7);
        let line = crate::model::Describe::line(&sum, &common);
        assert_eq!(line.tag, "RST sent ×41,230");
        assert_eq!(
            line.text,
            "folded port=6379 reason=NO_SOCKET over 0.980s netns=7 cgroup=-"
        );
    }

    /// A reset of key(cgroup, port) written in full with span `span`.
    fn full_reset(cgroup: u64, port: u16, span: u64) -> Record {
        let mut r = crate::model::samples::reset();
        r.common.cgroup_id = Some(cgroup);
        r.common.netns = Some(4026531840);
        if let Body::TcpReset(t) = &mut r.body {
            (t.sport, t.dport) = (40_000, port);
            t.reason = Some("NO_SOCKET".into());
        }
        r.span = crate::model::OwnSpan::from_random(span).unwrap();
        r
    }

    #[test]
    fn a_summary_names_the_spans_of_its_keys_full_records_and_only_those() {
        let map = FakeFolds::default();
        let mut s = stage(&map);
        let cx = Enricher::fixed("n", 1_000);
        let t = Instant::now();
        assert!(s.wants_written());
        // Twelve full records of key(1, 8080) (the latest ten are named), one of another pod,
        // one of another port, one over the OTLP budget (no span of its own).
        for span in 2..14 {
            assert!(s.on_written(full_reset(1, 8080, span), t).is_some());
        }
        s.on_written(full_reset(2, 8080, 100), t);
        s.on_written(full_reset(1, 9090, 101), t);
        let mut over = full_reset(1, 8080, 102);
        over.span = crate::model::OwnSpan::OVER_BUDGET;
        s.on_written(over, t);
        map.set(key(1, 8080), 500, 100, 900);
        let mut out = Vec::new();
        s.on_tick(t, &cx, &mut out);
        let got = summaries(&out);
        assert_eq!(got.len(), 1);
        let spans: Vec<u64> = got[0]
            .1
            .beside
            .iter()
            .map(|b| u64::from_be_bytes(b.span_id))
            .collect();
        assert_eq!(spans, (4..14).collect::<Vec<_>>());
        let own = full_reset(1, 8080, 13).span_ids().unwrap();
        assert_eq!(got[0].1.beside[9].trace_id, own.0);
        // In JSON as hex, and as the summary span's links in OTLP.
        let json = serde_json::to_value(&got[0].1).unwrap();
        assert_eq!(
            json["beside"][9]["span_id"],
            serde_json::json!("000000000000000d")
        );
        let links = &crate::export::otlp::convert::spans(&out[0])[0].links;
        assert_eq!(links.len(), 10);
        assert_eq!(links[9].span_id, 13u64.to_be_bytes().to_vec());
        assert_eq!(links[9].trace_id, own.0.to_vec());
        // Named once: the next summary of the key has none; the other port's spans wait
        // for a summary of theirs until BESIDE_FOR, then are forgotten.
        map.set(key(1, 8080), 510, 100, 1_900);
        map.set(key(1, 9090), 0, 0, 0);
        out.clear();
        s.on_tick(t + Duration::from_secs(1), &cx, &mut out);
        assert!(summaries(&out)[0].1.beside.is_empty());
        s.on_tick(t + BESIDE_FOR, &cx, &mut out);
        map.set(key(1, 9090), 3, 2_000, 2_100);
        out.clear();
        s.on_tick(t + BESIDE_FOR + Duration::from_secs(1), &cx, &mut out);
        let got = summaries(&out);
        let other = got.iter().find(|(_, s)| s.port == 9090).unwrap();
        assert!(other.1.beside.is_empty(), "{:?}", other.1.beside);
    }
}
