//! Unit tests of the queued output: blocking, loss counting, failure.

use std::{
    sync::{Condvar, Mutex},
    time::Duration,
};

use super::*;
use crate::export::terminal::tests::{loss_record, reset_record};

/// Closed (None) or open for success (true) or failure (false).
type Latch = Arc<(Mutex<Option<bool>>, Condvar)>;

/// A sink that blocks until released, then fails or succeeds.
struct Gate {
    open: Latch,
    written: Arc<AtomicU64>,
}

impl Sink for Gate {
    fn write(&mut self, _: &Record) -> io::Result<()> {
        let (lock, cv) = &*self.open;
        let mut g = lock.lock().unwrap();
        while g.is_none() {
            g = cv.wait(g).unwrap();
        }
        if *g == Some(false) {
            return Err(io::Error::from(io::ErrorKind::BrokenPipe));
        }
        self.written.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn gate() -> (Gate, Latch, Arc<AtomicU64>) {
    let open = Arc::new((Mutex::new(None), Condvar::new()));
    let written = Arc::new(AtomicU64::new(0));
    (
        Gate {
            open: open.clone(),
            written: written.clone(),
        },
        open,
        written,
    )
}

fn release(open: &(Mutex<Option<bool>>, Condvar), ok: bool) {
    *open.0.lock().unwrap() = Some(ok);
    open.1.notify_all();
}

#[test]
fn a_blocked_output_costs_the_queue_then_counts_not_blocks() {
    let (g, open, written) = gate();
    let (mut sink, out, thread) = spawn("json", Box::new(g), 4).unwrap();
    let record = reset_record();
    // Returns at once every time although nothing is written: at most one batch (four)
    // taken by the writer, which blocks on its first record, and four queued; the rest
    // counted. (Whether the writer took its batch before the writes ran out is the thread
    // scheduler's choice: 12 or 16 lost.)
    for _ in 0..20 {
        sink.write(&record).unwrap();
    }
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        out.lost.load(Ordering::Relaxed) >= 12,
        "{}",
        out.lost.load(Ordering::Relaxed)
    );
    release(&open, true);
    drop(sink);
    thread.join().unwrap();
    assert_eq!(
        written.load(Ordering::Relaxed) + out.lost.load(Ordering::Relaxed),
        20
    );
    assert_eq!(out.queued(), 0);
    assert!(out.failure().is_none());
}

/// The last loss report stuck at the shutdown deadline: what it carried is "unreported", the
/// number the agent's last WARN line says; a loss report that got out carries its count.
#[test]
fn what_no_written_loss_record_carries_is_unreported() {
    let (g, open, written) = gate();
    let (mut sink, out, thread) = spawn("json", Box::new(g), 1).unwrap();
    sink.write(&reset_record()).unwrap();
    // The pipeline ran empty: the record goes to the writer, which blocks on it.
    sink.flush().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    sink.write(&reset_record()).unwrap();
    // Full: lost here, 1 event.
    sink.write(&reset_record()).unwrap();
    assert_eq!(out.unreported(), 1);
    // The deadline passes with one queued record: lost too.
    assert_eq!(out.lose_queued(), 1);
    assert_eq!(out.unreported(), 2);
    release(&open, true);
    // This output's own report of the 2 gets out: nothing is unreported any more.
    let mut own = loss_record();
    if let Body::Loss(l) = &mut own.body {
        l.source = crate::model::LossSource::Output("json");
        l.count = 2;
    }
    std::thread::sleep(Duration::from_millis(50));
    sink.write(&own).unwrap();
    drop(sink);
    thread.join().unwrap();
    assert_eq!(out.unreported(), 0);
    assert!(written.load(Ordering::Relaxed) >= 2);
}

#[test]
fn a_dropped_loss_record_hands_its_count_on() {
    let (g, open, written) = gate();
    let (mut sink, out, thread) = spawn("json", Box::new(g), 1).unwrap();
    sink.write(&reset_record()).unwrap();
    // The pipeline ran empty: the record goes to the writer, which blocks on it.
    sink.flush().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    // The writer holds the first record; the second fills the queue.
    sink.write(&reset_record()).unwrap();
    // A loss record reporting 17 lost events finds the queue full: the 17 are this
    // output's losses now (the record itself is no event).
    sink.write(&loss_record()).unwrap();
    assert_eq!(out.lost.load(Ordering::Relaxed), 17);
    release(&open, true);
    drop(sink);
    thread.join().unwrap();
    assert_eq!(written.load(Ordering::Relaxed), 2);
}

/// Buffers every write (Ok) and fails to flush, as a BufWriter on a closed pipe does.
struct FailingFlush;

impl Sink for FailingFlush {
    fn write(&mut self, _: &Record) -> io::Result<()> {
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::BrokenPipe))
    }
}

#[test]
fn records_buffered_when_the_flush_fails_are_counted() {
    let (mut sink, out, thread) = spawn("json", Box::new(FailingFlush), 64).unwrap();
    let record = reset_record();
    for _ in 0..5 {
        sink.write(&record).unwrap();
    }
    sink.flush().unwrap();
    for _ in 0..3 {
        sink.write(&record).unwrap();
    }
    drop(sink);
    thread.join().unwrap();
    assert_eq!(out.lost.load(Ordering::Relaxed), 8);
}

#[test]
fn a_failed_output_is_said_once_and_counts_every_later_record() {
    let (g, open, written) = gate();
    release(&open, false);
    let (mut sink, out, thread) = spawn("json", Box::new(g), 64).unwrap();
    let record = reset_record();
    for _ in 0..10 {
        sink.write(&record).unwrap();
    }
    drop(sink);
    thread.join().unwrap();
    assert_eq!(written.load(Ordering::Relaxed), 0);
    assert_eq!(out.lost.load(Ordering::Relaxed), 10);
    assert!(
        out.failure().unwrap().contains("roken pipe"),
        "{:?}",
        out.failure()
    );
}

/// A sink that counts what it was given.
struct Counting(Arc<AtomicU64>);

impl Sink for Counting {
    fn write(&mut self, _: &Record) -> io::Result<()> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Records reach the writer a batch at a time, or at the pipeline's flush, never one wake-up
/// per record; nothing is held back past a flush.
#[test]
fn records_are_handed_over_in_batches_and_at_a_flush() {
    let written = Arc::new(AtomicU64::new(0));
    let (mut sink, out, thread) = spawn("json", Box::new(Counting(written.clone())), 1024).unwrap();
    let record = reset_record();
    for _ in 0..3 {
        sink.write(&record).unwrap();
    }
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        written.load(Ordering::Relaxed),
        0,
        "held until a batch or a flush"
    );
    // The shared counters learn of them at the hand-over (once per batch).
    assert_eq!((sink.pending.len(), sink.pending_weight), (3, 3));
    assert_eq!(out.queued(), 0);
    sink.flush().unwrap();
    let wait = |n: u64| {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while written.load(Ordering::Relaxed) < n && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        written.load(Ordering::Relaxed)
    };
    assert_eq!(wait(3), 3);
    for _ in 0..BATCH {
        sink.write(&record).unwrap();
    }
    assert_eq!(
        wait(3 + BATCH as u64),
        3 + BATCH as u64,
        "a full batch goes without a flush"
    );
    drop(sink);
    thread.join().unwrap();
    assert_eq!(out.queued(), 0);
    assert_eq!(out.lost.load(Ordering::Relaxed), 0);
}

/// Long records (Wasm lines) are held to the byte budget, however few they are.
#[test]
fn the_queue_is_bounded_in_bytes_too() {
    use crate::model::{Body, Stream, WasmOutput};
    let (g, open, written) = gate();
    let mut line = reset_record();
    line.kind = "wasm_output";
    line.body = Body::WasmOutput(Box::new(WasmOutput {
        stream: Stream::Stdout,
        runtime: "wasmtime".into(),
        text: "x".repeat(16 * 1024),
        data_b64: None,
        partial: true,
        truncated: false,
        write_result: Some(16384),
        fd_target: Some("pipe".into()),
    }));
    let size = line.approx_bytes();
    assert!(size > 16 * 1024);
    // Room for three lines in bytes, a thousand in records.
    let (mut sink, out, thread) = spawn_bounded("json", Box::new(g), 1000, 3 * size).unwrap();
    for _ in 0..20 {
        sink.write(&line).unwrap();
        sink.flush().unwrap();
    }
    std::thread::sleep(Duration::from_millis(50));
    // One held by the blocked writer, three queued, the rest counted as lost.
    let lost = out.lost.load(Ordering::Relaxed);
    assert!((15..=17).contains(&lost), "{lost}");
    assert!(out.bytes.load(Ordering::Relaxed) <= 3 * size);
    release(&open, true);
    drop(sink);
    thread.join().unwrap();
    assert_eq!(
        written.load(Ordering::Relaxed) + out.lost.load(Ordering::Relaxed),
        20
    );
    assert_eq!(
        out.bytes.load(Ordering::Relaxed),
        0,
        "every byte handed back"
    );
}
