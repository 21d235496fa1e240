//! Resets and drops remembered for a conntrack expiry that is reported after them (netlink
//! and the ring buffer are two sources; the kernel's conntrack GC reports an expired entry
//! late). A ring of records written in place, oldest overwritten: remembering one costs one
//! copy and no lookup or allocation (a reset storm is a new flow per reset). Finding a flow's
//! records, once per expiry, scans a dense array of 32-bit key tags.

use std::time::{Duration, Instant};

use super::conntrack::FlowKey;
use crate::model::Record;

pub struct RecentRing {
    /// Grows to `capacity`, then each new record takes the oldest slot.
    slots: Vec<Option<(Instant, FlowKey, Record)>>,
    /// `FlowKey::tag` of each slot's key.
    tags: Vec<u32>,
    next: usize,
    capacity: usize,
    /// Records of one flow handed out at most (its newest).
    per_flow: usize,
    /// How long a record counts as recent.
    keep_for: Duration,
}

impl RecentRing {
    pub fn new(capacity: usize, per_flow: usize, keep_for: Duration) -> Self {
        Self {
            slots: Vec::new(),
            tags: Vec::new(),
            next: 0,
            capacity: capacity.max(1),
            per_flow: per_flow.max(1),
            keep_for,
        }
    }

    /// Remembers `record` of flow `key` (forgetting the oldest record when full).
    pub fn push(&mut self, key: FlowKey, record: Record, now: Instant) {
        let entry = Some((now, key, record));
        if self.slots.len() < self.capacity {
            self.slots.push(entry);
            self.tags.push(key.tag());
            return;
        }
        self.slots[self.next] = entry;
        self.tags[self.next] = key.tag();
        self.next = (self.next + 1) % self.capacity;
    }

    /// The recent records of flow `key`, its newest `per_flow`, oldest first; they are
    /// forgotten.
    pub fn take(&mut self, key: FlowKey, now: Instant) -> Vec<Record> {
        let tag = key.tag();
        let mut found: Vec<(Instant, Record)> = Vec::new();
        for (i, _) in self.tags.iter().enumerate().filter(|(_, t)| **t == tag) {
            let slot = &mut self.slots[i];
            if slot.as_ref().is_some_and(|(_, k, _)| *k == key)
                && let Some((t, _, record)) = slot.take()
                && now.duration_since(t) <= self.keep_for
            {
                found.push((t, record));
            }
        }
        found.sort_by_key(|(t, _)| *t);
        let extra = found.len().saturating_sub(self.per_flow);
        found.into_iter().skip(extra).map(|(_, r)| r).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::terminal::tests::reset_record;

    fn key(port: u16) -> FlowKey {
        let ip = "10.0.0.1".parse().unwrap();
        FlowKey::new(ip, port, "10.0.0.2".parse().unwrap(), 6379)
    }

    fn record(pid: u32) -> Record {
        let mut r = reset_record();
        r.common.pid = Some(pid);
        r
    }

    fn pids(records: &[Record]) -> Vec<u32> {
        records.iter().map(|r| r.common.pid.unwrap()).collect()
    }

    #[test]
    fn a_flow_gets_its_newest_recent_records_and_the_ring_keeps_the_newest() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut ring = RecentRing::new(4, 2, s(5));
        ring.push(key(1), record(1), t0);
        ring.push(key(1), record(2), t0 + s(1));
        ring.push(key(1), record(3), t0 + s(2));
        ring.push(key(2), record(4), t0);
        // Full: flow 1's first record makes room.
        ring.push(key(3), record(5), t0 + s(2));
        // Its newest two, oldest first; once.
        assert_eq!(pids(&ring.take(key(1), t0 + s(2))), [2, 3]);
        assert!(ring.take(key(1), t0 + s(2)).is_empty());
        // Stale records are not evidence.
        assert!(ring.take(key(2), t0 + s(6)).is_empty());
        assert_eq!(pids(&ring.take(key(3), t0 + s(6))), [5]);
        assert!(ring.take(key(9), t0).is_empty());
        // The same addresses and ports in the other direction are the same flow.
        let ip = |s: &str| s.parse().unwrap();
        ring.push(
            FlowKey::new(ip("10.0.0.2"), 6379, ip("10.0.0.1"), 7),
            record(6),
            t0,
        );
        assert_eq!(pids(&ring.take(key(7), t0)), [6]);
        let v6 = FlowKey::new(ip("fd00::1"), 7, ip("fd00::2"), 6379);
        assert_ne!(v6.tag(), key(7).tag());
        ring.push(v6, record(7), t0);
        assert_eq!(pids(&ring.take(v6, t0)), [7]);
    }
}
