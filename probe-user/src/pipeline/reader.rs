//! The ring buffer's reader: woken by the kernel for the first record of a batch, it lets
//! records gather (`Gather`) and drains them into the channel; while records keep coming it
//! reads on its own timer and tells the programs not to wake it (`maps::READER_POLLING`).

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use aya::maps::{Array, MapData, RingBuf};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::{mpsc, watch},
};
use tracing::{debug, warn};

use super::{CHANNEL_PAYLOAD_MAX, Counters, Event, PipelineError, timer::TimerFd};
use crate::decode::{SymbolTables, decode};

/// The event ring buffer and the switch that tells the programs the reader is polling.
pub struct EventRing {
    pub ring: RingBuf<MapData>,
    /// `maps::READER_POLLING` (None: missing; the reader is then woken for every batch).
    pub polling: Option<Array<MapData, u32>>,
}

/// Whether the programs wake the reader (`maps::READER_POLLING` 0) or leave it to its timer
/// (1).
struct Polling {
    map: Option<Array<MapData, u32>>,
    on: bool,
}

impl Polling {
    /// Turns polling on or off; whether it is now as asked. When the map cannot be written
    /// the switch stays where it is for good (said once): off, the reader is woken for every
    /// batch; on, it keeps reading on its timer, which the programs then rely on.
    fn set(&mut self, on: bool) -> bool {
        let Some(map) = self.map.as_mut().filter(|_| on != self.on) else {
            return on == self.on;
        };
        match map.set(0, u32::from(on), 0) {
            Ok(()) => self.on = on,
            Err(e) => {
                let stays = if self.on {
                    "on its timer"
                } else {
                    "woken per batch"
                };
                warn!("writing the reader's polling switch: {e}; the reader stays {stays}");
                self.map = None;
            }
        }
        on == self.on
    }
}

/// Reads the ring buffer until `shutdown` turns true, then drains what is left and returns
/// (dropping the sender, which ends the consumer). `max_delay`: how long records may gather
/// at most ([`Gather`]).
pub async fn read_events(
    ring: EventRing,
    tx: mpsc::Sender<Event>,
    tables: Arc<SymbolTables>,
    counters: Arc<Counters>,
    max_delay: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), PipelineError> {
    // SAFETY: the ring buffer owns its map fd for as long as the AsyncFd owns the ring buffer,
    // and `as_raw_fd` always returns that same fd.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring.ring, Interest::READABLE) }
        .map_err(|e| PipelineError::Poll(e.into()))?;
    let mut polling = Polling {
        map: ring.polling,
        on: false,
    };
    let poll = TimerFd::every(POLL_EVERY).map_err(PipelineError::Poll)?;
    let mut gather = Gather::new(max_delay);
    let timer = TimerFd::new().map_err(PipelineError::Poll)?;
    let take_all = async |fd: &mut AsyncFd<RingBuf<MapData>>, shutdown: &watch::Receiver<bool>| {
        drain_all(fd, &tx, &tables, &counters, shutdown).await
    };
    loop {
        if *shutdown.borrow() {
            drain(fd.get_mut(), &tx, &tables, &counters, usize::MAX);
            return Ok(());
        }
        // Polling, records keep coming: no wake-up to wait for. Otherwise the first record of
        // a batch (the kernel wakes the reader for a record it has caught up to), the safety
        // poll, or shutdown.
        if !polling.on {
            let ticked = tokio::select! {
                ticked = poll.expired() => {
                    ticked.map_err(PipelineError::Poll)?;
                    true
                }
                guard = fd.readable_mut() => {
                    guard.map_err(PipelineError::Poll)?.clear_ready();
                    false
                }
                _ = shutdown.wait_for(|stop| *stop) => continue,
            };
            if ticked {
                // The safety poll drains what is there without gathering: were it to start a
                // gather, the kernel's wake-up for the first record after the last drain
                // would end that gather at once (taken for a forced wake-up).
                take_all(&mut fd, &shutdown).await;
                continue;
            }
        }
        // Records gather, or until the kernel forces a wake-up (a sixteenth of the buffer
        // unread: it wakes the reader for no other record until the reader drains). A
        // timerfd, not a tokio sleep: the runtime's timer wheel wakes the thread at each of
        // its levels on the way to a deadline this far away.
        timer.arm(gather.delay).map_err(PipelineError::Poll)?;
        tokio::select! {
            expired = timer.expired() => expired.map_err(PipelineError::Poll)?,
            guard = fd.readable_mut() => {
                guard.map_err(PipelineError::Poll)?.clear_ready();
            }
        }
        timer.disarm().map_err(PipelineError::Poll)?;
        let taken = take_all(&mut fd, &shutdown).await;
        gather.after(taken);
        let flowing = gather.delay > MIN_GATHER;
        // Switched (unless the map refused: then nothing changes).
        if polling.on != flowing && polling.set(flowing) {
            if flowing {
                // Reading on its own timer: no safety poll (its expiry would wake the thread
                // even unawaited).
                poll.disarm().map_err(PipelineError::Poll)?;
            } else {
                // Back to being woken: what came without a wake-up since the drain is read
                // now.
                poll.repeat(POLL_EVERY).map_err(PipelineError::Poll)?;
                take_all(&mut fd, &shutdown).await;
            }
        }
        tokio::task::yield_now().await;
    }
}

/// Drains the ring buffer a batch at a time, the consumer (on the same thread) taking each;
/// the records taken.
async fn drain_all(
    fd: &mut AsyncFd<RingBuf<MapData>>,
    tx: &mpsc::Sender<Event>,
    tables: &SymbolTables,
    counters: &Counters,
    shutdown: &watch::Receiver<bool>,
) -> usize {
    let mut taken = 0;
    loop {
        let drained = drain(fd.get_mut(), tx, tables, counters, BATCH);
        taken += drained.taken;
        if drained.empty || *shutdown.borrow() {
            return taken;
        }
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
