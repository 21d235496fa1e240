//! Loss counters of every source turned into `loss` records (the increase since the last
//! report), so nothing is lost silently.

use std::{
    collections::HashMap,
    sync::{Arc, atomic::Ordering},
};

use aya::maps::{MapData, PerCpuArray};
use probe_common::LOSS_SLOTS;

use super::{Counters, NETLINK_SLOT};
use crate::model::{Loss, LossSource};

/// Totals of kernel-side losses per slot (slot = event kind).
pub trait KernelLosses: Send {
    fn totals(&self) -> Vec<u64>;
}

impl KernelLosses for PerCpuArray<MapData, u64> {
    fn totals(&self) -> Vec<u64> {
        (0..LOSS_SLOTS)
            .map(|slot| {
                self.get(&slot, 0)
                    .map(|per_cpu| per_cpu.iter().sum())
                    .unwrap_or(0)
            })
            .collect()
    }
}

/// Turns loss counters into `loss` records holding the increase since the previous poll.
pub struct LossTracker {
    kernel: Box<dyn KernelLosses>,
    pub(super) counters: Arc<Counters>,
    last: HashMap<(LossSource, u32), u64>,
    outputs: Vec<Arc<crate::export::queued::Output>>,
}

impl LossTracker {
    pub fn new(kernel: Box<dyn KernelLosses>, counters: Arc<Counters>) -> Self {
        Self {
            kernel,
            counters,
            last: HashMap::new(),
            outputs: Vec::new(),
        }
    }

    /// Counts what a queued output loses as `source: <its name>`.
    pub fn watch_output(&mut self, output: Arc<crate::export::queued::Output>) {
        self.outputs.push(output);
    }

    pub fn poll(&mut self) -> Vec<Loss> {
        let mut current: Vec<(LossSource, u32, u64)> = self
            .kernel
            .totals()
            .into_iter()
            .enumerate()
            .map(|(slot, total)| (LossSource::Ringbuf, slot as u32, total))
            .collect();
        current.push((
            LossSource::Channel,
            u32::MAX,
            self.counters.channel_drops.load(Ordering::Relaxed),
        ));
        current.push((
            LossSource::Decode,
            u32::MAX,
            self.counters.decode_errors.load(Ordering::Relaxed),
        ));
        current.push((
            LossSource::Netlink,
            NETLINK_SLOT,
            self.counters.netlink_overruns.load(Ordering::Relaxed),
        ));
        for o in &self.outputs {
            current.push((
                LossSource::Output(o.name),
                u32::MAX,
                o.lost.load(Ordering::Relaxed),
            ));
        }
        current
            .into_iter()
            .filter_map(|(source, slot, total)| {
                let last = self.last.insert((source, slot), total).unwrap_or(0);
                (total > last).then(|| Loss {
                    source,
                    count: total - last,
                    lost_kind: slot_kind(slot),
                })
            })
            .collect()
    }
}

fn slot_kind(slot: u32) -> Option<&'static str> {
    if slot == NETLINK_SLOT {
        return Some("conntrack_expiry");
    }
    probe_common::kind::name(slot)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use std::sync::atomic::Ordering;

    use super::*;
    use crate::pipeline::Counters;

    struct Scripted(Arc<Mutex<Vec<u64>>>);
    impl KernelLosses for Scripted {
        fn totals(&self) -> Vec<u64> {
            self.0.lock().unwrap().clone()
        }
    }

    #[test]
    fn loss_records_carry_deltas_per_source() {
        let kernel = Arc::new(Mutex::new(vec![0, 5, 0]));
        let counters = Arc::new(Counters::default());
        let mut t = LossTracker::new(Box::new(Scripted(kernel.clone())), counters.clone());
        assert_eq!(
            t.poll(),
            vec![Loss {
                source: LossSource::Ringbuf,
                count: 5,
                lost_kind: Some("tcp_reset")
            }]
        );
        assert_eq!(t.poll(), vec![]);
        kernel.lock().unwrap()[1] = 8;
        counters.channel_drops.store(3, Ordering::Relaxed);
        counters.decode_errors.store(1, Ordering::Relaxed);
        assert_eq!(
            t.poll(),
            vec![
                Loss {
                    source: LossSource::Ringbuf,
                    count: 3,
                    lost_kind: Some("tcp_reset")
                },
                Loss {
                    source: LossSource::Channel,
                    count: 3,
                    lost_kind: None
                },
                Loss {
                    source: LossSource::Decode,
                    count: 1,
                    lost_kind: None
                },
            ]
        );
    }
}
