//! A sink on its own OS thread behind a bounded queue: a stdout nobody reads (`probe | (sleep
//! 40)`) blocks that thread only, never the pipeline, the HTTP endpoints or signal handling.
//! A full queue drops the record and counts it as lost for this output; an output that fails
//! (EPIPE: `probe | head -1`) is said once as an ERROR, and every later record is counted as
//! lost for it; the agent is told through [`Output::gone`]. Records are handed to the thread
//! in batches (up to [`BATCH`], or what is there when the pipeline flushes), so a busy stream
//! wakes the thread once per batch, not per record; the bound is on records and on their
//! bytes ([`Record::approx_bytes`]: a queue of long Wasm lines is held to its byte budget).

use std::{
    io,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, AtomicUsize, Ordering},
        mpsc::{self, Sender},
    },
    thread,
    time::{Duration, Instant},
};

use tracing::error;

use super::Sink;
use crate::model::{Body, Record};

/// Records handed to the writer thread at once.
pub const BATCH: usize = 512;

/// The events a record stands for when it is lost: a `loss` record carries the count of
/// events lost somewhere, which would otherwise vanish with it (and is no event itself); any
/// other record is one event.
fn weight(record: &Record) -> u64 {
    match &record.body {
        Body::Loss(loss) => loss.count,
        _ => 1,
    }
}

/// What the rest of the agent sees of one queued output.
pub struct Output {
    /// `json` or `terminal`: the `source` of its loss records.
    pub name: &'static str,
    /// What the loss reports read: events this output lost (records that found the queue
    /// full or the output failed), plus the counts of lost `loss` records, so the events they
    /// reported are reported again.
    pub lost: AtomicU64,
    /// The part of `lost` that re-reports this output's own earlier losses.
    reported_again: AtomicU64,
    /// Events its queue stands for (a loss record counts its count), and the part of them
    /// that this output's own loss records carry.
    queued: AtomicU64,
    queued_own: AtomicU64,
    /// Counts carried by this output's own loss records that it wrote and flushed.
    reported_written: AtomicU64,
    /// Records accepted and not yet taken by the writer (the bound).
    records: AtomicUsize,
    /// The approximate bytes of those records (the other bound).
    bytes: AtomicUsize,
    /// Why the output failed, once it has.
    failed: OnceLock<String>,
    /// Notified once, when the output fails.
    pub gone: tokio::sync::Notify,
    /// Notified once, when the thread has written out its queue and ended.
    pub finished: tokio::sync::Notify,
}

impl Output {
    /// Events this output lost (each once).
    pub fn events_lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed) - self.reported_again.load(Ordering::Relaxed)
    }

    /// Whether `record` reports this output's own losses.
    fn is_own_report(&self, record: &Record) -> bool {
        matches!(&record.body, Body::Loss(loss)
            if loss.source == crate::model::LossSource::Output(self.name))
    }

    /// Counts `record` as lost here.
    fn lose(&self, record: &Record) {
        let n = weight(record);
        if self.is_own_report(record) {
            self.reported_again.fetch_add(n, Ordering::Relaxed);
        }
        self.lost.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts what was written but not flushed as lost here.
    fn lose_unflushed(&self, u: &mut Unflushed) {
        self.lost
            .fetch_add(u.events + u.reported + u.own, Ordering::Relaxed);
        self.reported_again.fetch_add(u.own, Ordering::Relaxed);
        *u = Unflushed::default();
    }

    pub fn failure(&self) -> Option<&str> {
        self.failed.get().map(String::as_str)
    }

    /// Events still in the queue (not written, not counted as lost).
    #[cfg(test)]
    pub fn queued(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }

    /// At the shutdown deadline: what is still queued is lost.
    pub fn lose_queued(&self) -> u64 {
        let n = self.queued.swap(0, Ordering::Relaxed);
        let own = self.queued_own.swap(0, Ordering::Relaxed);
        self.lost.fetch_add(n, Ordering::Relaxed);
        self.reported_again.fetch_add(own, Ordering::Relaxed);
        n
    }

    /// Events this output lost that no loss record it wrote carries (its last report did not
    /// make it out before the shutdown deadline): what the final log line must say.
    pub fn unreported(&self) -> u64 {
        self.events_lost()
            .saturating_sub(self.reported_written.load(Ordering::Relaxed))
    }

    fn enqueued(&self, record: &Record, sign: i8) {
        let n = weight(record);
        let own = if self.is_own_report(record) { n } else { 0 };
        if sign > 0 {
            self.queued.fetch_add(n, Ordering::Relaxed);
            self.queued_own.fetch_add(own, Ordering::Relaxed);
        } else {
            self.queued.fetch_sub(n, Ordering::Relaxed);
            self.queued_own.fetch_sub(own, Ordering::Relaxed);
        }
    }

    fn fail(&self, error: &io::Error) {
        if self.failed.set(error.to_string()).is_ok() {
            error!(
                output = self.name,
                "output {} failed: {error}; its records are counted as lost from now on", self.name
            );
            self.gone.notify_one();
        }
    }
}

enum Msg {
    Records(Vec<Record>),
}

/// What the inner sink accepted since its last successful flush, by what losing it means.
#[derive(Default)]
struct Unflushed {
    /// Records of events.
    events: u64,
    /// Counts carried by loss records of other sources.
    reported: u64,
    /// Counts carried by loss records of this output.
    own: u64,
}

impl Unflushed {
    fn add(&mut self, out: &Output, record: &Record) {
        match &record.body {
            Body::Loss(l) if out.is_own_report(record) => self.own += l.count,
            Body::Loss(l) => self.reported += l.count,
            _ => self.events += 1,
        }
    }
}

fn flush(inner: &mut dyn Sink, out: &Output, unflushed: &mut Unflushed) {
    if out.failure().is_some() {
        return;
    }
    match inner.flush() {
        Ok(()) => {
            out.reported_written
                .fetch_add(unflushed.own, Ordering::Relaxed);
            *unflushed = Unflushed::default();
        }
        Err(e) => {
            out.lose_unflushed(unflushed);
            out.fail(&e);
        }
    }
}

/// The pipeline's end of a queued output.
pub struct QueuedSink {
    tx: Sender<Msg>,
    output: Arc<Output>,
    /// Accepted records not handed over yet, handed over at `batch` (BATCH, or less for a
    /// queue smaller than that) or at a flush.
    pending: Vec<Record>,
    /// What `pending` stands for in `Output::queued` / `queued_own`, added at the hand-over
    /// (the shared counters are touched once per batch, not per record).
    pending_weight: u64,
    pending_own: u64,
    pending_bytes: usize,
    batch: usize,
    capacity: usize,
    max_bytes: usize,
    /// At shutdown: wait for room in the queue until then instead of dropping (the last
    /// records, the final loss report, must not be lost to a queue the reader is draining).
    wait_until: Option<std::time::Instant>,
}

/// Starts `inner` on its own thread behind a queue of `capacity` records (no byte budget).
#[cfg(test)]
pub fn spawn(
    name: &'static str,
    inner: Box<dyn Sink>,
    capacity: usize,
) -> io::Result<(QueuedSink, Arc<Output>, thread::JoinHandle<()>)> {
    spawn_bounded(name, inner, capacity, usize::MAX)
}

/// Starts `inner` on its own thread behind a queue of `capacity` records and `max_bytes`
/// approximate bytes. The thread ends when the [`QueuedSink`] is dropped and the queue is
/// written out (or the output failed).
pub fn spawn_bounded(
    name: &'static str,
    mut inner: Box<dyn Sink>,
    capacity: usize,
    max_bytes: usize,
) -> io::Result<(QueuedSink, Arc<Output>, thread::JoinHandle<()>)> {
    // Unbounded in messages, bounded in records (`Output::records`); a message is a batch.
    let (tx, rx) = mpsc::channel::<Msg>();
    let output = Arc::new(Output {
        name,
        lost: AtomicU64::new(0),
        reported_again: AtomicU64::new(0),
        queued: AtomicU64::new(0),
        queued_own: AtomicU64::new(0),
        reported_written: AtomicU64::new(0),
        records: AtomicUsize::new(0),
        bytes: AtomicUsize::new(0),
        failed: OnceLock::new(),
        gone: tokio::sync::Notify::new(),
        finished: tokio::sync::Notify::new(),
    });
    let out = output.clone();
    let thread = thread::Builder::new()
        .name(format!("output-{name}"))
        .spawn(move || {
            // Records accepted by the inner sink since its last successful flush: buffered,
            // so lost (and counted) if the flush fails.
            let mut unflushed = Unflushed::default();
            loop {
                let msg = match rx.try_recv() {
                    Ok(msg) => msg,
                    Err(mpsc::TryRecvError::Empty) => {
                        // Ran empty: what was written goes out now.
                        if unflushed.events + unflushed.reported + unflushed.own > 0 {
                            flush(&mut *inner, &out, &mut unflushed);
                        }
                        match rx.recv() {
                            Ok(msg) => msg,
                            Err(_) => break,
                        }
                    }
                    Err(mpsc::TryRecvError::Disconnected) => break,
                };
                match msg {
                    Msg::Records(batch) => {
                        out.records.fetch_sub(batch.len(), Ordering::Relaxed);
                        let bytes: usize = batch.iter().map(Record::approx_bytes).sum();
                        out.bytes.fetch_sub(bytes, Ordering::Relaxed);
                        for record in batch {
                            out.enqueued(&record, -1);
                            if out.failure().is_some() {
                                out.lose(&record);
                            } else if let Err(e) = inner.write(&record) {
                                out.lose(&record);
                                out.lose_unflushed(&mut unflushed);
                                out.fail(&e);
                            } else {
                                unflushed.add(&out, &record);
                            }
                        }
                    }
                }
            }
            flush(&mut *inner, &out, &mut unflushed);
            out.finished.notify_one();
        })?;
    Ok((
        QueuedSink {
            tx,
            output: output.clone(),
            pending: Vec::with_capacity(BATCH),
            pending_weight: 0,
            pending_own: 0,
            pending_bytes: 0,
            batch: BATCH.min(capacity).max(1),
            capacity,
            max_bytes,
            wait_until: None,
        },
        output,
        thread,
    ))
}

impl QueuedSink {
    /// Hands the pending records to the writer thread.
    fn hand_over(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let batch = std::mem::replace(&mut self.pending, Vec::with_capacity(self.batch));
        let out = &self.output;
        out.records.fetch_add(batch.len(), Ordering::Relaxed);
        let bytes = std::mem::take(&mut self.pending_bytes);
        out.bytes.fetch_add(bytes, Ordering::Relaxed);
        out.queued
            .fetch_add(std::mem::take(&mut self.pending_weight), Ordering::Relaxed);
        out.queued_own
            .fetch_add(std::mem::take(&mut self.pending_own), Ordering::Relaxed);
        if let Err(mpsc::SendError(Msg::Records(batch))) = self.tx.send(Msg::Records(batch)) {
            // The writer thread is gone (it panicked): what it would have written is lost.
            out.records.fetch_sub(batch.len(), Ordering::Relaxed);
            out.bytes.fetch_sub(bytes, Ordering::Relaxed);
            for record in &batch {
                out.enqueued(record, -1);
                out.lose(record);
            }
        }
    }

    /// Whether the queue has room for one more record of `bytes`; at shutdown, waits for it
    /// until the deadline.
    fn room(&mut self, bytes: usize) -> bool {
        loop {
            let out = &self.output;
            if out.records.load(Ordering::Relaxed) + self.pending.len() < self.capacity
                && out.bytes.load(Ordering::Relaxed) + self.pending_bytes + bytes <= self.max_bytes
            {
                return true;
            }
            if self.wait_until.is_none_or(|t| Instant::now() >= t) {
                return false;
            }
            self.hand_over();
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Sink for QueuedSink {
    fn write(&mut self, record: &Record) -> io::Result<()> {
        let bytes = record.approx_bytes();
        if self.output.failure().is_some() || !self.room(bytes) {
            self.output.lose(record);
            return Ok(());
        }
        self.pending_bytes += bytes;
        let n = weight(record);
        self.pending_weight += n;
        if self.output.is_own_report(record) {
            self.pending_own += n;
        }
        self.pending.push(record.clone());
        if self.pending.len() >= self.batch {
            self.hand_over();
        }
        Ok(())
    }

    fn finish(&mut self, deadline: Instant) {
        self.wait_until = Some(deadline);
    }

    /// Hands over what is pending: the writer flushes its output when it runs empty, so a
    /// flush costs it no second wake-up.
    fn flush(&mut self) -> io::Result<()> {
        self.hand_over();
        Ok(())
    }
}

impl Drop for QueuedSink {
    fn drop(&mut self) {
        self.hand_over();
    }
}

#[cfg(test)]
#[path = "queued_tests.rs"]
mod tests;
