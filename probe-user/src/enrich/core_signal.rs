//! Joins a core-dumping signal with the exit of its target, so one record tells the whole
//! story: what was raised, by whom, and whether a core was written (and if not, why). A signal
//! whose outcome is known at once (handled, ignored) is released at once; one whose target
//! should die waits for its exit, at most `wait`, then goes out with `core_dumped: null`.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use crate::{
    decode::Decoded,
    model::signals::signal_name,
    model::{Body, CoreSignal, Handler, ProcessExit, Record},
};

struct Pending {
    record: Record,
    deadline: Instant,
}

pub struct CoreJoin {
    pending: HashMap<u32, Vec<Pending>>,
    count: usize,
    wait: Duration,
    capacity: usize,
}

fn core(record: &mut Record) -> Option<&mut CoreSignal> {
    match &mut record.body {
        Body::CoreSignal(c) => Some(c),
        _ => None,
    }
}

impl CoreJoin {
    pub fn new(wait: Duration, capacity: usize) -> Self {
        Self {
            pending: HashMap::new(),
            count: 0,
            wait,
            capacity,
        }
    }

    pub fn pending(&self) -> usize {
        self.count
    }

    /// Takes a `core_signal` record; returns it if its outcome is already known (or can never
    /// be), otherwise holds it until the target exits.
    pub fn on_signal(&mut self, mut record: Record, now: Instant) -> Option<Record> {
        let tgid = record.common.pid;
        let c = core(&mut record)?;
        if c.result == "ignored" || c.handler == Some(Handler::Ignored) {
            c.core_dumped = Some(false);
            c.core_suppressed_by = Some("ignored".into());
            return Some(record);
        }
        if c.handler == Some(Handler::Handled) {
            c.core_dumped = Some(false);
            c.core_suppressed_by = Some("handled".into());
            return Some(record);
        }
        // The kernel watches the exit only of a known default-action target.
        let (Some(tgid), Some(Handler::Default)) = (tgid, c.handler) else {
            return Some(record);
        };
        if self.count >= self.capacity {
            return Some(record);
        }
        self.pending.entry(tgid).or_default().push(Pending {
            record,
            deadline: now + self.wait,
        });
        self.count += 1;
        None
    }

    /// The target exited: its held signals get the outcome.
    pub fn on_exit(&mut self, tgid: Option<u32>, exit: ProcessExit) -> Vec<Record> {
        let Some(held) = tgid.and_then(|t| self.pending.remove(&t)) else {
            return Vec::new();
        };
        self.count -= held.len();
        held.into_iter()
            .map(|mut p| {
                if let Some(c) = core(&mut p.record) {
                    c.exit_code = Some(exit.exit_code);
                    c.core_dumped = Some(exit.exit_code & 0x80 != 0);
                    c.core_suppressed_by = suppression(c, exit.exit_code);
                }
                p.record
            })
            .collect()
    }

    /// Releases signals whose target outlived the wait (outcome unknown).
    pub fn expire(&mut self, now: Instant) -> Vec<Record> {
        let mut out = Vec::new();
        self.pending.retain(|_, held| {
            let (done, keep): (Vec<Pending>, Vec<Pending>) =
                held.drain(..).partition(|p| p.deadline <= now);
            out.extend(done.into_iter().map(|p| p.record));
            *held = keep;
            !held.is_empty()
        });
        self.count -= out.len();
        out
    }

    /// Everything still held (at shutdown), outcome unknown.
    pub fn drain(&mut self) -> Vec<Record> {
        self.count = 0;
        self.pending
            .drain()
            .flat_map(|(_, held)| held.into_iter().map(|p| p.record))
            .collect()
    }
}

/// Why no core was written, from the exit status and what was known at signal time.
pub fn suppression(c: &CoreSignal, exit_code: u32) -> Option<String> {
    if exit_code & 0x80 != 0 {
        return None;
    }
    let term = exit_code & 0x7f;
    let pattern = c.core_pattern.as_deref();
    Some(if term == 0 {
        "exited".into()
    } else if term != c.signal {
        format!("killed_by_{}", signal_name(term))
    } else if c.dumpable == Some(0) {
        "not_dumpable".into()
    } else if pattern == Some("") {
        "core_pattern_empty".into()
    } else if c.rlimit_core.is_some_and(|r| r.0 == 0)
        && !pattern.is_some_and(|p| p.starts_with('|'))
    {
        "rlimit_core=0".into()
    } else {
        "unknown".into()
    })
}

impl super::Stage for CoreJoin {
    /// Takes core signals (held until their target exits) and exits (which release them).
    fn wants(&self, event: &Decoded) -> bool {
        matches!(event.body, Body::ProcessExit(_) | Body::CoreSignal(_))
    }
    fn on_event(
        &mut self,
        event: Decoded,
        cx: &super::Enricher,
        out: &mut Vec<Record>,
    ) -> Option<Decoded> {
        match event.body {
            Body::ProcessExit(exit) => out.extend(self.on_exit(event.common.pid, exit)),
            Body::CoreSignal(_) => {
                out.extend(self.on_signal(cx.kernel_event(event), Instant::now()))
            }
            _ => return Some(event),
        }
        None
    }
    fn pending(&self, _now: Instant) -> bool {
        self.pending() > 0
    }
    fn on_tick(&mut self, now: Instant, _cx: &super::Enricher, out: &mut Vec<Record>) {
        out.extend(self.expire(now));
    }
    fn drain(&mut self, _cx: &super::Enricher, out: &mut Vec<Record>) {
        out.extend(CoreJoin::drain(self));
    }
    fn report(&self, state: &crate::status::AgentState) {
        state
            .metrics
            .pending_core_signals
            .set(i64::try_from(self.pending()).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode::Common, model::RlimitCore, model::signals::Origin};

    fn signal(pid: u32, handler: Option<Handler>, rlimit: u64) -> Record {
        Record {
            time_unix_nano: 1,
            k8s: None,
            trace: None,
            kind: "core_signal",
            node: "n".into(),
            common: Common {
                pid: Some(pid),
                ..Common::none()
            },
            body: Body::CoreSignal(Box::new(CoreSignal {
                signal: 11,
                signal_name: "SIGSEGV".into(),
                origin: Origin::Kernel,
                si_code: "SEGV_MAPERR".into(),
                sender_pid: Some(pid),
                sender_comm: Some("crasher".into()),
                sender_tid: None,
                result: "delivered".into(),
                handler,
                core_dumped: None,
                core_suppressed_by: None,
                rlimit_core: Some(RlimitCore(rlimit)),
                dumpable: Some(1),
                core_pattern: Some("core".into()),
                core_uses_pid: Some(false),
                exit_code: None,
            })),
            span: crate::model::OwnSpan::UNASSIGNED,
        }
    }

    fn outcome(r: &Record) -> (Option<bool>, Option<&str>, Option<u32>) {
        let Body::CoreSignal(c) = &r.body else {
            panic!()
        };
        (c.core_dumped, c.core_suppressed_by.as_deref(), c.exit_code)
    }

    #[test]
    fn handled_and_ignored_are_released_at_once() {
        let mut j = CoreJoin::new(Duration::from_secs(10), 8);
        let now = Instant::now();
        let r = j
            .on_signal(signal(1, Some(Handler::Handled), 0), now)
            .unwrap();
        assert_eq!(outcome(&r), (Some(false), Some("handled"), None));
        let r = j
            .on_signal(signal(1, Some(Handler::Ignored), 0), now)
            .unwrap();
        assert_eq!(outcome(&r), (Some(false), Some("ignored"), None));
        assert_eq!(j.pending(), 0);
    }

    #[test]
    fn default_action_waits_for_the_exit() {
        let mut j = CoreJoin::new(Duration::from_secs(10), 8);
        let now = Instant::now();
        assert!(
            j.on_signal(signal(7, Some(Handler::Default), 0), now)
                .is_none()
        );
        assert!(
            j.on_signal(signal(8, Some(Handler::Default), u64::MAX), now)
                .is_none()
        );
        assert_eq!(j.pending(), 2);
        assert!(
            j.on_exit(
                Some(99),
                ProcessExit {
                    exit_code: 11,
                    watched_signal: 11
                }
            )
            .is_empty()
        );

        let out = j.on_exit(
            Some(7),
            ProcessExit {
                exit_code: 11,
                watched_signal: 11,
            },
        );
        assert_eq!(out.len(), 1);
        assert_eq!(
            outcome(&out[0]),
            (Some(false), Some("rlimit_core=0"), Some(11))
        );

        let out = j.on_exit(
            Some(8),
            ProcessExit {
                exit_code: 0x8b,
                watched_signal: 11,
            },
        );
        assert_eq!(outcome(&out[0]), (Some(true), None, Some(0x8b)));
        assert_eq!(j.pending(), 0);
    }

    #[test]
    fn bounded_wait_and_capacity() {
        let mut j = CoreJoin::new(Duration::from_secs(2), 1);
        let t0 = Instant::now();
        assert!(
            j.on_signal(signal(7, Some(Handler::Default), 0), t0)
                .is_none()
        );
        // Over capacity: released at once, outcome unknown.
        let r = j
            .on_signal(signal(8, Some(Handler::Default), 0), t0)
            .unwrap();
        assert_eq!(outcome(&r), (None, None, None));
        assert!(j.expire(t0 + Duration::from_secs(1)).is_empty());
        let out = j.expire(t0 + Duration::from_secs(2));
        assert_eq!(out.len(), 1);
        assert_eq!(outcome(&out[0]), (None, None, None));
        assert_eq!(j.pending(), 0);
        assert!(
            j.on_signal(signal(9, Some(Handler::Default), 0), t0)
                .is_none()
        );
        assert_eq!(j.drain().len(), 1);
        assert_eq!(j.pending(), 0);
    }

    #[test]
    fn suppression_reasons() {
        let Body::CoreSignal(mut c) = signal(1, Some(Handler::Default), 0).body else {
            panic!()
        };
        assert_eq!(suppression(&c, 0x8b), None);
        assert_eq!(suppression(&c, 11).as_deref(), Some("rlimit_core=0"));
        assert_eq!(suppression(&c, 9).as_deref(), Some("killed_by_SIGKILL"));
        assert_eq!(suppression(&c, 0).as_deref(), Some("exited"));
        c.core_pattern = Some("|/usr/lib/systemd/systemd-coredump %P".into());
        assert_eq!(suppression(&c, 11).as_deref(), Some("unknown"));
        c.core_pattern = Some(String::new());
        assert_eq!(suppression(&c, 11).as_deref(), Some("core_pattern_empty"));
        c.dumpable = Some(0);
        assert_eq!(suppression(&c, 11).as_deref(), Some("not_dumpable"));
    }
}
