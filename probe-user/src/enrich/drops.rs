//! Turns the kernel's running drop totals into `packet_drop` records that each count the drops
//! since the previous record of the same flow and reason, and reads the kernel map for the
//! tail: drops after a key's last kernel record (the kernel reports a key at most once per
//! second, so the last second of a burst is only visible in the map).

use std::{
    num::NonZeroUsize,
    time::{Duration, Instant},
};

use lru::LruCache;
use probe_common::{DropCount, DropKey};

use crate::{
    decode::{Common, Decoded},
    loader::DropFlows,
    model::{Body, PacketDrop, Record},
};

/// Keys followed at once; the least recently reported is forgotten first.
const TRACKED_KEYS: usize = 8192;
/// How long after its last record a key's map entry is still read for a tail.
const TAIL_WINDOW: Duration = Duration::from_secs(5);
/// How often the map is read.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Reads a key's running total from the kernel.
pub trait DropMap: Send {
    fn total(&self, key: &DropKey) -> Option<u64>;
}

impl DropMap for DropFlows {
    /// The sum over CPUs.
    fn total(&self, key: &DropKey) -> Option<u64> {
        self.get(key, 0)
            .ok()
            .map(|per_cpu| per_cpu.iter().map(|c: &DropCount| c.total).sum())
    }
}

struct Tracked {
    reported: u64,
    last_record: Instant,
    common: Common,
    drop: PacketDrop,
}

pub struct DropTotals {
    tracked: LruCache<DropKey, Tracked>,
    map: Option<Box<dyn DropMap>>,
    last_sweep: Option<Instant>,
    /// When the newest kernel record arrived: `active` is asked once per pipeline loop, so it
    /// must not scan the tracked keys.
    newest_record: Option<Instant>,
}

impl DropTotals {
    pub fn new(map: Option<Box<dyn DropMap>>) -> Self {
        Self {
            tracked: LruCache::new(NonZeroUsize::new(TRACKED_KEYS).expect("non-zero")),
            map,
            last_sweep: None,
            newest_record: None,
        }
    }

    /// A kernel record: the record to write, with `count` = the increase of the key's total
    /// (the map's sum over CPUs; the record's own per-CPU total when the map cannot be read)
    /// since the previous record; None when there is none (another CPU's record already
    /// counted these drops).
    pub fn on_event(
        &mut self,
        common: Common,
        mut drop: PacketDrop,
        now: Instant,
    ) -> Option<(Common, PacketDrop)> {
        let total = self
            .map
            .as_ref()
            .and_then(|m| m.total(&drop.key))
            .unwrap_or(drop.count)
            .max(drop.count);
        let previous = self.tracked.get(&drop.key).map(|t| t.reported);
        // A total below what was reported: the kernel evicted and recreated the key.
        let count = match previous {
            Some(p) if total >= p => total - p,
            _ => total,
        };
        self.newest_record = Some(now);
        self.tracked.put(
            drop.key,
            Tracked {
                reported: total,
                last_record: now,
                common: common.clone(),
                drop: drop.clone(),
            },
        );
        (count > 0).then(|| {
            drop.count = count;
            (common, drop)
        })
    }

    /// Records for drops counted in the kernel after a key's last record; at most once per
    /// second. `ktime_ns` stamps them (now, on the kernel clock).
    pub fn sweep(&mut self, now: Instant, ktime_ns: u64) -> Vec<(Common, PacketDrop)> {
        if self
            .last_sweep
            .is_some_and(|t| now.duration_since(t) < SWEEP_EVERY)
        {
            return Vec::new();
        }
        self.last_sweep = Some(now);
        let Some(map) = &self.map else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (key, t) in self.tracked.iter_mut() {
            if now.duration_since(t.last_record) > TAIL_WINDOW {
                continue;
            }
            let Some(total) = map.total(key) else {
                continue;
            };
            if total > t.reported {
                let mut drop = t.drop.clone();
                drop.count = total - t.reported;
                let mut common = t.common.clone();
                common.ktime_ns = ktime_ns;
                t.reported = total;
                out.push((common, drop));
            }
        }
        out
    }

    /// A sweep now, whatever the rate limit (at shutdown).
    pub fn final_sweep(&mut self, now: Instant, ktime_ns: u64) -> Vec<(Common, PacketDrop)> {
        self.last_sweep = None;
        self.sweep(now, ktime_ns)
    }

    /// Whether a sweep could still find something.
    pub fn active(&self, now: Instant) -> bool {
        self.map.is_some()
            && self
                .newest_record
                .is_some_and(|t| now.duration_since(t) <= TAIL_WINDOW)
    }
}

impl super::Stage for DropTotals {
    /// Takes drop events: a record per flow and reason with the drops since the last one.
    fn wants(&self, event: &Decoded) -> bool {
        matches!(event.body, Body::PacketDrop(_))
    }
    fn on_event(
        &mut self,
        event: Decoded,
        cx: &super::Enricher,
        out: &mut Vec<Record>,
    ) -> Option<Decoded> {
        let Body::PacketDrop(drop) = event.body else {
            return Some(event);
        };
        let counted = DropTotals::on_event(self, event.common, *drop, Instant::now());
        out.extend(cx.kernel_events(counted, Body::packet_drop));
        None
    }
    fn pending(&self, now: Instant) -> bool {
        self.active(now)
    }
    fn on_tick(&mut self, now: Instant, cx: &super::Enricher, out: &mut Vec<Record>) {
        out.extend(cx.kernel_events(self.sweep(now, super::boottime_ns()), Body::packet_drop));
    }
    fn drain(&mut self, cx: &super::Enricher, out: &mut Vec<Record>) {
        let tail = self.final_sweep(Instant::now(), super::boottime_ns());
        out.extend(cx.kernel_events(tail, Body::packet_drop));
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::HashMap,
        net::IpAddr,
        sync::{Arc, Mutex},
    };

    use super::*;
    use crate::model::Family;

    #[derive(Clone, Default)]
    struct FakeMap(Arc<Mutex<HashMap<DropKey, u64>>>);
    impl DropMap for FakeMap {
        fn total(&self, key: &DropKey) -> Option<u64> {
            self.0.lock().unwrap().get(key).copied()
        }
    }

    fn drop(reason: u32, total: u64) -> PacketDrop {
        PacketDrop {
            family: Family::Ipv4,
            saddr: IpAddr::from([10, 0, 0, 1]),
            sport: 5000,
            daddr: IpAddr::from([10, 0, 0, 2]),
            dport: 80,
            reason: Some("NO_SOCKET".into()),
            count: total,
            key: DropKey {
                saddr: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                daddr: [10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                sport: 5000,
                dport: 80,
                family: 2,
                _pad: 0,
                reason,
                netns: 7,
            },
        }
    }

    #[test]
    fn totals_become_increments_and_the_tail_is_swept() {
        let map = FakeMap::default();
        let mut d = DropTotals::new(Some(Box::new(map.clone())));
        let t0 = Instant::now();
        let first = d.on_event(Common::none(), drop(3, 1), t0).unwrap();
        assert_eq!(first.1.count, 1);
        let second = d
            .on_event(Common::none(), drop(3, 40), t0 + Duration::from_secs(1))
            .unwrap();
        assert_eq!(second.1.count, 39);
        // Another reason of the same flow is its own key.
        assert_eq!(
            d.on_event(Common::none(), drop(5, 2), t0).unwrap().1.count,
            2
        );
        // 60 more drops after the last record: only the map knows.
        map.0.lock().unwrap().insert(drop(3, 0).key, 100);
        let tail = d.sweep(t0 + Duration::from_secs(2), 99);
        assert_eq!(tail.len(), 1);
        assert_eq!((tail[0].1.count, tail[0].0.ktime_ns), (60, 99));
        // Rate-limited, then nothing new.
        assert!(d.sweep(t0 + Duration::from_millis(2500), 1).is_empty());
        assert!(d.sweep(t0 + Duration::from_secs(4), 1).is_empty());
        // Long after the last record the key is no longer read.
        map.0.lock().unwrap().insert(drop(3, 0).key, 200);
        assert!(d.sweep(t0 + Duration::from_secs(30), 1).is_empty());
        assert!(!d.active(t0 + Duration::from_secs(30)));
    }

    #[test]
    fn a_recreated_kernel_key_counts_from_zero() {
        let mut d = DropTotals::new(None);
        let t0 = Instant::now();
        d.on_event(Common::none(), drop(3, 50), t0);
        assert_eq!(
            d.on_event(Common::none(), drop(3, 4), t0).unwrap().1.count,
            4
        );
        assert!(d.on_event(Common::none(), drop(3, 4), t0).is_none());
    }
}
