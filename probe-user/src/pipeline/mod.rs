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

pub use self::{
    losses::LossTracker,
    stages::{Stages, WasmCgroupMap, consume},
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
/// (dropping the sender, which ends the consumer).
pub async fn read_events(
    ring: RingBuf<MapData>,
    tx: mpsc::Sender<Event>,
    tables: Arc<SymbolTables>,
    counters: Arc<Counters>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), PipelineError> {
    // SAFETY: the ring buffer owns its map fd for as long as the AsyncFd owns the ring buffer,
    // and `as_raw_fd` always returns that same fd.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| PipelineError::Poll(e.into()))?;
    let mut poll = tokio::time::interval(POLL_EVERY);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        // The first record of a batch (the kernel wakes the reader for a record it has
        // caught up to), the safety poll, or shutdown.
        tokio::select! {
            _ = poll.tick() => {}
            guard = fd.readable_mut() => {
                guard.map_err(PipelineError::Poll)?.clear_ready();
            }
            _ = shutdown.wait_for(|stop| *stop) => {
                drain(fd.get_mut(), &tx, &tables, &counters, usize::MAX);
                return Ok(());
            }
        }
        // Records gather for GATHER, or until the kernel forces a wake-up (a sixteenth of
        // the buffer unread).
        tokio::select! {
            () = tokio::time::sleep(GATHER) => {}
            guard = fd.readable_mut() => {
                guard.map_err(PipelineError::Poll)?.clear_ready();
            }
        }
        // Then all of it, a batch at a time, the consumer (on the same thread) taking each.
        while !drain(fd.get_mut(), &tx, &tables, &counters, BATCH) && !*shutdown.borrow() {
            tokio::task::yield_now().await;
        }
        tokio::task::yield_now().await;
    }
}

/// How long the reader lets records gather after the first one wakes it (the kernel does not
/// wake it again meanwhile): the bound on added latency, and one wake-up per batch when
/// records come one by one.
pub const GATHER: Duration = Duration::from_millis(10);

/// How often the reader looks at the ring buffer without being woken: a safety net (the
/// kernel's adaptive wake-up misses no record), rare enough to cost a quiet node nothing.
pub const POLL_EVERY: Duration = Duration::from_secs(1);

/// Records handled per wake-up before the reader yields.
const BATCH: usize = 1024;

/// Moves up to `limit` records from the ring buffer to the channel; true when it is empty.
fn drain(
    ring: &mut RingBuf<MapData>,
    tx: &mpsc::Sender<Event>,
    tables: &SymbolTables,
    counters: &Counters,
    limit: usize,
) -> bool {
    for _ in 0..limit {
        let Some(item) = ring.next() else {
            return true;
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
    false
}
