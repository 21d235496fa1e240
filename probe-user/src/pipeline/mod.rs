//! The event pipeline: ring buffer (via tokio `AsyncFd`) -> checked decode -> bounded channel
//! (`try_send`, drops counted) -> enrichment -> sinks. Losses from every source are turned into
//! periodic `loss` records, and a final one at shutdown, so nothing is lost silently.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use thiserror::Error;
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::{mpsc, watch},
};
use tracing::debug;

mod losses;
pub mod spans;
mod stages;
mod timer;

use self::timer::TimerFd;
pub use self::{
    losses::LossTracker,
    stages::{Stages, StagesConfig, WasmCgroupMap, consume},
};
use crate::{
    decode::{Decoded, SymbolTables, decode},
    model::Record,
};

/// What the consumer's channel carries: kernel events (decoded from the ring buffer), which
/// go through the event stages, and records other sources made (ctnetlink: conntrack
/// expiries, settings and table findings), which go straight to the hold-back and the sinks.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "kernel events are the hot path: not boxed; the rare source records are"
)]
pub enum Event {
    Kernel(Decoded),
    Record(Box<Record>),
}

impl Event {
    /// The payload bytes the event carries beyond its fixed size (a Wasm write's chunk): what
    /// the channel's byte budget counts.
    pub fn payload_bytes(&self) -> usize {
        match self {
            Self::Kernel(Decoded {
                body: crate::model::Body::WasmWrite(w),
                ..
            }) => w.data.len(),
            _ => 0,
        }
    }
}

/// Payload bytes the channel holds at most (its records are bounded by `--queue-size`): Wasm
/// chunks beyond it are dropped and counted like a full channel's.
pub const CHANNEL_PAYLOAD_MAX: usize = 32 << 20;

#[derive(Debug, Error)]
pub enum PipelineError {
    #[error("polling the event ring buffer: {0}")]
    Poll(#[source] std::io::Error),
    #[error("writing to the output: {0}")]
    Sink(#[source] std::io::Error),
}

/// Counters shared by the pipeline stages.
#[derive(Debug, Default)]
pub struct Counters {
    /// Events dropped because the channel to the sinks was full (in events, or in payload
    /// bytes: [`CHANNEL_PAYLOAD_MAX`]).
    pub channel_drops: AtomicU64,
    /// Payload bytes in the channel now.
    pub channel_bytes: std::sync::atomic::AtomicUsize,
    /// Records that failed the checked decode.
    pub decode_errors: AtomicU64,
    /// ctnetlink overruns (ENOBUFS): conntrack events the kernel could not queue for us.
    pub netlink_overruns: AtomicU64,
    /// TCP conntrack DESTROY events without the entry's TCP state (kernels whose destroy
    /// events carry none: an expiry cannot be told from other ends there).
    pub conntrack_destroys_without_state: AtomicU64,
}

/// Loss slot of netlink overruns (their events are conntrack expiries).
const NETLINK_SLOT: u32 = u32::MAX - 1;

/// Reads the ring buffer until `shutdown` turns true, then drains what is left and returns
/// (dropping the sender, which ends the consumer). `max_delay`: how long records may gather
/// at most ([`Gather`]).
pub async fn read_events(
    ring: RingBuf<MapData>,
    tx: mpsc::Sender<Event>,
    tables: Arc<SymbolTables>,
    counters: Arc<Counters>,
    max_delay: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), PipelineError> {
    // SAFETY: the ring buffer owns its map fd for as long as the AsyncFd owns the ring buffer,
    // and `as_raw_fd` always returns that same fd.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| PipelineError::Poll(e.into()))?;
    let poll = TimerFd::every(POLL_EVERY).map_err(PipelineError::Poll)?;
    let mut gather = Gather::new(max_delay);
    let timer = TimerFd::new().map_err(PipelineError::Poll)?;
    loop {
        // The first record of a batch (the kernel wakes the reader for a record it has
        // caught up to), the safety poll, or shutdown.
        tokio::select! {
            ticked = poll.expired() => ticked.map_err(PipelineError::Poll)?,
            guard = fd.readable_mut() => {
                guard.map_err(PipelineError::Poll)?.clear_ready();
            }
            _ = shutdown.wait_for(|stop| *stop) => {
                drain(fd.get_mut(), &tx, &tables, &counters, usize::MAX);
                return Ok(());
            }
        }
        // Records gather, or until the kernel forces a wake-up (a sixteenth of the buffer
        // unread). A timerfd, not a tokio sleep: the runtime's timer wheel wakes the thread
        // at each of its levels on the way to a deadline this far away.
        timer.arm(gather.delay).map_err(PipelineError::Poll)?;
        tokio::select! {
            expired = timer.expired() => expired.map_err(PipelineError::Poll)?,
            guard = fd.readable_mut() => {
                guard.map_err(PipelineError::Poll)?.clear_ready();
            }
        }
        timer.disarm().map_err(PipelineError::Poll)?;
        // Then all of it, a batch at a time, the consumer (on the same thread) taking each.
        let mut taken = 0;
        loop {
            let drained = drain(fd.get_mut(), &tx, &tables, &counters, BATCH);
            taken += drained.taken;
            if drained.empty || *shutdown.borrow() {
                break;
            }
            tokio::task::yield_now().await;
        }
        gather.after(taken);
        tokio::task::yield_now().await;
    }
}

/// How long the reader lets records gather after the first one wakes it (the kernel does not
/// wake it again meanwhile): [`MIN_GATHER`] while records come alone or in pairs (a refused
/// connect's two resets), so a quiet node's events are read at once; doubled after each
/// gather that found records at [`GROW_RATE`] or faster, up to `--read-delay`, so a steady
/// flow costs a few wake-ups a second (a wake-up costs more than tens of records); back to
/// the minimum after a gather of two records or fewer.
#[derive(Debug)]
pub struct Gather {
    pub delay: Duration,
    max: Duration,
}

/// The shortest gather: a lone event's added latency.
pub const MIN_GATHER: Duration = Duration::from_millis(10);
/// Records per second from which the reader gathers longer.
pub const GROW_RATE: u64 = 400;

impl Gather {
    pub fn new(max: Duration) -> Self {
        Self {
            delay: MIN_GATHER.min(max),
            max,
        }
    }

    /// After a gather that found `taken` records.
    pub fn after(&mut self, taken: usize) {
        let taken = taken as u64;
        let fast = u128::from(taken) * 1000 >= u128::from(GROW_RATE) * self.delay.as_millis();
        if taken <= 2 {
            self.delay = MIN_GATHER.min(self.max);
        } else if fast {
            self.delay = (self.delay * 2).min(self.max);
        }
    }
}

/// How often the reader looks at the ring buffer without being woken: a safety net (the
/// kernel's adaptive wake-up misses no record), rare enough to cost a quiet node nothing.
pub const POLL_EVERY: Duration = Duration::from_secs(1);

/// Records handled per wake-up before the reader yields.
const BATCH: usize = 1024;

/// What one `drain` did.
struct Drained {
    taken: usize,
    /// The ring buffer is empty.
    empty: bool,
}

/// Moves up to `limit` records from the ring buffer to the channel.
fn drain(
    ring: &mut RingBuf<MapData>,
    tx: &mpsc::Sender<Event>,
    tables: &SymbolTables,
    counters: &Counters,
    limit: usize,
) -> Drained {
    for taken in 0..limit {
        let Some(item) = ring.next() else {
            return Drained { taken, empty: true };
        };
        match decode(&item, tables) {
            Ok(event) => {
                let event = Event::Kernel(event);
                let bytes = event.payload_bytes();
                let held = counters.channel_bytes.load(Ordering::Relaxed);
                if held + bytes > CHANNEL_PAYLOAD_MAX {
                    counters.channel_drops.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                counters.channel_bytes.fetch_add(bytes, Ordering::Relaxed);
                if tx.try_send(event).is_err() {
                    counters.channel_bytes.fetch_sub(bytes, Ordering::Relaxed);
                    counters.channel_drops.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => {
                debug!("dropping a kernel record: {e}");
                counters.decode_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Drained {
        taken: limit,
        empty: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gathers_grow_while_records_keep_coming_and_shrink_after_a_lone_one() {
        let mut g = Gather::new(Duration::from_millis(200));
        assert_eq!(g.delay, MIN_GATHER);
        // A refused connect's pair of resets now and then: read at once, every time.
        for _ in 0..3 {
            g.after(2);
            assert_eq!(g.delay, MIN_GATHER);
        }
        // 1,000 records a second: each gather finds delay x 1/ms.
        let mut seen = vec![];
        for _ in 0..6 {
            g.after(g.delay.as_millis() as usize);
            seen.push(g.delay.as_millis());
        }
        assert_eq!(seen, [20, 40, 80, 160, 200, 200]);
        // Slower than GROW_RATE (300/s) at 200 ms: kept, neither grown nor shrunk.
        g.after(60);
        assert_eq!(g.delay, Duration::from_millis(200));
        // 300/s from the minimum: kept at it.
        let mut slow = Gather::new(Duration::from_millis(200));
        slow.after(3);
        assert_eq!(slow.delay, MIN_GATHER);
        g.after(1);
        assert_eq!(g.delay, MIN_GATHER);
        g.after(0);
        assert_eq!(g.delay, MIN_GATHER);
    }
}
