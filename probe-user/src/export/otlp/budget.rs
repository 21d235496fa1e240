//! Records over the node's OTLP budget (`OwnSpan::OVER_BUDGET`, chosen before the sinks):
//! counted per kind and direction, and sent once a second as one `summary` span and log record
//! each (`folded_by: otlp_budget`) with the exact count and the first and last time.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use crate::model::{Body, Common, Direction, FoldedBy, Other, OwnSpan, Record, Summary};

/// How long over-budget records are counted before their summary goes out.
pub const WINDOW: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    kind: &'static str,
    direction: Option<Direction>,
}

#[derive(Debug)]
struct Acc {
    count: u64,
    first_unix_nano: u64,
    last_unix_nano: u64,
}

#[derive(Debug, Default)]
pub struct OverBudget {
    /// A handful of keys (kinds times directions): a vector, no hashing per record.
    keys: Vec<(Key, Acc)>,
    since: Option<Instant>,
    node: Option<Arc<str>>,
}

impl OverBudget {
    pub fn add(&mut self, record: &Record, now: Instant) {
        let key = Key {
            kind: record.kind,
            direction: match &record.body {
                Body::TcpReset(r) => Some(r.direction),
                _ => None,
            },
        };
        let t = record.time_unix_nano;
        match self.keys.iter_mut().find(|(k, _)| *k == key) {
            Some((_, acc)) => {
                acc.count += 1;
                acc.first_unix_nano = acc.first_unix_nano.min(t);
                acc.last_unix_nano = acc.last_unix_nano.max(t);
            }
            None => self.keys.push((
                key,
                Acc {
                    count: 1,
                    first_unix_nano: t,
                    last_unix_nano: t,
                },
            )),
        }
        self.since.get_or_insert(now);
        self.node.get_or_insert_with(|| record.node.clone());
    }

    /// The summaries of the window, once it is over (`all`: whatever is counted, at shutdown).
    pub fn take_due(&mut self, now: Instant, all: bool) -> Vec<Record> {
        let due = self
            .since
            .is_some_and(|since| all || now.duration_since(since) >= WINDOW);
        if !due {
            return Vec::new();
        }
        self.since = None;
        let node = self.node.clone().unwrap_or_else(|| "".into());
        self.keys
            .drain(..)
            .map(|(key, acc)| summary(key, acc, node.clone()))
            .collect()
    }
}

fn summary(key: Key, acc: Acc, node: Arc<str>) -> Record {
    let body = Body::Other(Other::new(Summary {
        beside: Vec::new(),
        folded_by: FoldedBy::OtlpBudget,
        folded_kind: key.kind,
        count: acc.count,
        first_unix_nano: acc.first_unix_nano,
        last_unix_nano: acc.last_unix_nano,
        direction: key.direction,
        reason: None,
        port: 0,
    }));
    Record {
        time_unix_nano: acc.last_unix_nano,
        kind: body.kind(),
        node,
        common: Common::none(),
        body,
        k8s: None,
        trace: None,
        span: OwnSpan::UNASSIGNED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::samples;

    fn count_of(r: &Record) -> (u64, Option<Direction>, &'static str) {
        let Body::Other(o) = &r.body else {
            panic!("{r:?}")
        };
        let s = o.downcast_ref::<Summary>().unwrap();
        assert_eq!(s.folded_by, FoldedBy::OtlpBudget);
        (s.count, s.direction, s.folded_kind)
    }

    #[test]
    fn over_budget_records_become_one_exact_summary_per_kind_and_direction_a_second() {
        let mut o = OverBudget::default();
        let t0 = Instant::now();
        let mut sent = samples::reset();
        sent.time_unix_nano = 5;
        for _ in 0..1000 {
            o.add(&sent, t0);
        }
        let mut received = samples::reset();
        if let Body::TcpReset(r) = &mut received.body {
            r.direction = Direction::Received;
        }
        received.time_unix_nano = 9;
        o.add(&received, t0);
        o.add(&samples::wasm(), t0 + Duration::from_millis(500));
        assert!(
            o.take_due(t0 + Duration::from_millis(999), false)
                .is_empty()
        );
        let out = o.take_due(t0 + WINDOW, false);
        let got: Vec<_> = out.iter().map(count_of).collect();
        assert_eq!(
            got,
            [
                (1000, Some(Direction::Sent), "tcp_reset"),
                (1, Some(Direction::Received), "tcp_reset"),
                (1, None, "wasm_output"),
            ]
        );
        assert_eq!(out[0].time_unix_nano, 5);
        assert!(o.take_due(t0 + WINDOW * 5, true).is_empty(), "counted once");
    }

    #[test]
    fn shutdown_takes_what_is_counted_before_the_window_ends() {
        let mut o = OverBudget::default();
        let t0 = Instant::now();
        o.add(&samples::reset(), t0);
        assert_eq!(o.take_due(t0, true).len(), 1);
    }
}
