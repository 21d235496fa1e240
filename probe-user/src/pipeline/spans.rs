//! Each record's own span, chosen before the sinks: a random span ID (so the OTLP span, its
//! log record and a metric's exemplar name the same span), or `OVER_BUDGET` when the OTLP
//! output already sent the node's budget of spans or log records this second (`--otlp-max-spans`,
//! `--otlp-max-logs`): such a record is still written in full to the other outputs, and counted
//! in the OTLP output's next summary. Loss records and summaries are never over the budget:
//! they are the accounting of what is not sent one by one.

use std::time::Instant;

use rand::{Rng as _, SeedableRng as _, rngs::SmallRng};

use crate::model::{Body, OwnSpan, Record};

/// Spans and log records per second the OTLP output may send (0: no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub spans_per_s: u32,
    pub logs_per_s: u32,
}

/// A token bucket holding at most one second of its rate.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    tokens: f64,
    at: Option<Instant>,
}

impl Bucket {
    fn new(per_s: u32) -> Self {
        Self {
            rate: f64::from(per_s),
            tokens: f64::from(per_s),
            at: None,
        }
    }

    fn refill(&mut self, now: Instant) {
        if let Some(at) = self.at {
            let earned = now.saturating_duration_since(at).as_secs_f64() * self.rate;
            self.tokens = (self.tokens + earned).min(self.rate);
        }
        self.at = Some(now);
    }

    /// Whether `n` fit (0: always, and an unlimited bucket always).
    fn has(&self, n: u32) -> bool {
        n == 0 || self.rate == 0.0 || self.tokens >= f64::from(n)
    }

    fn take(&mut self, n: u32) {
        if self.rate > 0.0 {
            self.tokens -= f64::from(n);
        }
    }
}

pub struct SpanChooser {
    rng: SmallRng,
    /// With the OTLP output only.
    budget: Option<(Bucket, Bucket)>,
    /// Records over the budget since the start, for the status and the metric.
    pub over_budget: u64,
}

impl SpanChooser {
    pub fn new(budget: Option<Budget>) -> Self {
        Self {
            rng: SmallRng::from_os_rng(),
            budget: budget.map(|b| (Bucket::new(b.spans_per_s), Bucket::new(b.logs_per_s))),
            over_budget: 0,
        }
    }

    /// The record's own span.
    pub fn choose(&mut self, record: &Record, now: Instant) -> OwnSpan {
        if let Some((spans, logs)) = &mut self.budget {
            let (s, l) = cost(record);
            spans.refill(now);
            logs.refill(now);
            if !(spans.has(s) && logs.has(l)) {
                self.over_budget += 1;
                return OwnSpan::OVER_BUDGET;
            }
            spans.take(s);
            logs.take(l);
        }
        loop {
            if let Some(id) = OwnSpan::from_random(self.rng.random()) {
                return id;
            }
        }
    }
}

/// The spans and log records a record becomes in OTLP; (0, 0) for what is never over the
/// budget (losses, summaries) and for kinds without either.
fn cost(record: &Record) -> (u32, u32) {
    let Some(d) = record.body.describe() else {
        return (0, 0);
    };
    match &record.body {
        Body::Loss(_) => (0, 0),
        Body::Other(o) if o.0.kind() == "summary" => (0, 0),
        // One span, and its evidence's.
        Body::Finding(f) => (1 + f.evidence.len() as u32, 0),
        Body::WasmOutput(_) => (1, 1),
        Body::Other(_) => (
            u32::from(d.span_name().is_some()),
            u32::from(d.log().is_some()),
        ),
        _ => (u32::from(d.span_name().is_some()), 0),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::model::samples;

    fn chooser(spans: u32, logs: u32) -> SpanChooser {
        SpanChooser::new(Some(Budget {
            spans_per_s: spans,
            logs_per_s: logs,
        }))
    }

    #[test]
    fn within_the_budget_every_record_gets_a_distinct_span_id() {
        let mut c = SpanChooser::new(None);
        let now = Instant::now();
        let ids: std::collections::HashSet<_> = (0..10_000)
            .map(|_| c.choose(&samples::reset(), now).id().unwrap())
            .collect();
        assert_eq!(ids.len(), 10_000);
        assert_eq!(c.over_budget, 0);
    }

    #[test]
    fn spans_over_the_budget_wait_for_the_next_second() {
        let mut c = chooser(3, 100);
        let t0 = Instant::now();
        let got: Vec<bool> = (0..5)
            .map(|_| c.choose(&samples::reset(), t0).id().is_some())
            .collect();
        assert_eq!(got, [true, true, true, false, false]);
        assert_eq!(c.over_budget, 2);
        // A third of a second earns one span; a second earns the whole budget, not more.
        assert!(
            c.choose(&samples::reset(), t0 + Duration::from_millis(340))
                .id()
                .is_some()
        );
        assert!(
            c.choose(&samples::reset(), t0 + Duration::from_millis(340))
                .is_over_budget()
        );
        let later = t0 + Duration::from_secs(10);
        let again = (0..5)
            .filter(|_| c.choose(&samples::reset(), later).id().is_some())
            .count();
        assert_eq!(again, 3);
    }

    #[test]
    fn a_wasm_line_needs_a_span_and_a_log_record() {
        let mut c = chooser(100, 1);
        let now = Instant::now();
        assert!(c.choose(&samples::wasm(), now).id().is_some());
        assert!(c.choose(&samples::wasm(), now).is_over_budget());
        // A reset needs no log record.
        assert!(c.choose(&samples::reset(), now).id().is_some());
    }

    #[test]
    fn losses_are_never_over_the_budget_and_zero_means_no_limit() {
        let mut c = chooser(1, 1);
        let now = Instant::now();
        assert!(c.choose(&samples::reset(), now).id().is_some());
        for _ in 0..10 {
            assert!(c.choose(&samples::loss(), now).id().is_some());
        }
        let mut unlimited = chooser(0, 0);
        for _ in 0..10_000 {
            assert!(unlimited.choose(&samples::wasm(), now).id().is_some());
        }
    }
}
