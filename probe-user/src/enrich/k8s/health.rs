//! Whether the API server answers, said the way an operator wants it during an outage: one
//! WARN when it goes away, a reminder at most once a minute, one INFO when it is back; and the
//! delay between retries (1 s doubling to 30 s, with jitter), never a request loop.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use tracing::{info, warn};

/// How often a continuing outage is logged again.
pub const REMINDER_EVERY: Duration = Duration::from_secs(60);

/// The failing watches and when the outage was last logged.
#[derive(Debug, Default)]
pub struct Health {
    /// The API server's URL, named in every line.
    pub server: String,
    failing: BTreeMap<&'static str, String>,
    since: Option<Instant>,
    logged: Option<Instant>,
}

impl Health {
    /// Records a failure of `watch`; logs the outage's start or a due reminder.
    pub fn failed(&mut self, watch: &'static str, error: &str) {
        let now = Instant::now();
        self.failing.insert(watch, error.to_owned());
        match (self.since, self.logged) {
            (None, _) => {
                self.since = Some(now);
                self.logged = Some(now);
                warn!(
                    watch,
                    "kubernetes: the API server {} does not answer ({error}); retrying (1 s \
                     doubling to 30 s); new pods are not known until it answers",
                    self.server
                );
            }
            (Some(since), Some(logged)) if now.duration_since(logged) >= REMINDER_EVERY => {
                self.logged = Some(now);
                warn!(
                    watches = ?self.failing.keys().collect::<Vec<_>>(),
                    "kubernetes: the API server {} has not answered for {}s ({error})",
                    self.server,
                    now.duration_since(since).as_secs()
                );
            }
            _ => {}
        }
    }

    /// Records an answer to `watch`; true when no watch fails any more (logs the recovery).
    pub fn answered(&mut self, watch: &'static str) -> bool {
        if self.failing.remove(watch).is_some()
            && self.failing.is_empty()
            && let Some(since) = self.since.take()
        {
            self.logged = None;
            info!(
                "kubernetes: the API server {} answers again (after {}s)",
                self.server,
                since.elapsed().as_secs()
            );
        }
        self.failing.is_empty()
    }
}

/// Delay before the next attempt of one watch.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

pub const BACKOFF_FIRST: Duration = Duration::from_secs(1);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: BACKOFF_FIRST,
        }
    }
}

impl Backoff {
    /// The delay to wait now (±10 % jitter, so a node's watches and a fleet's agents do not
    /// retry in step); doubles the next one up to [`BACKOFF_MAX`].
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        // 0.9 .. 1.1 from the clock's low bits.
        let factor = 0.9 + f64::from(nanos % 1000) / 5000.0;
        base.mul_f64(factor)
    }

    pub fn reset(&mut self) {
        self.next = BACKOFF_FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::default();
        let delays: Vec<u64> = (0..8).map(|_| b.next_delay().as_millis() as u64).collect();
        let bases = [1000u64, 2000, 4000, 8000, 16000, 30000, 30000, 30000];
        for (d, base) in delays.iter().zip(bases) {
            assert!((base * 9 / 10..=base * 11 / 10).contains(d), "{delays:?}");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(1100));
    }

    #[test]
    fn an_outage_is_one_line_then_reminders_then_one_line() {
        let mut h = Health::default();
        h.failed("pods", "refused");
        let first = h.logged;
        h.failed("services", "refused");
        h.failed("pods", "refused");
        assert_eq!(h.logged, first, "no line before a minute has passed");
        h.logged = h.logged.map(|t| t - REMINDER_EVERY);
        h.failed("pods", "refused");
        assert!(h.logged > first.map(|t| t - REMINDER_EVERY), "a reminder");
        assert!(!h.answered("pods"), "services still fail");
        assert!(h.answered("services"));
        assert!(h.since.is_none());
    }
}
