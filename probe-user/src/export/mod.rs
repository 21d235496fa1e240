//! Sinks: where records go. The terminal stream is the default; `--output json` writes JSON
//! Lines. Both write to any `io::Write` so they are tested on buffers.

pub mod json;
mod json_fast;
#[cfg(test)]
mod new_kind;
pub mod otlp;
pub mod queued;
pub mod terminal;

use std::io::{self, Write};

use crate::model::Record;

pub use self::{json::JsonSink, terminal::TerminalSink};

/// The stdout sink (JSON, else terminal) and its name, if one was asked for.
pub fn stdout_sink(
    json: bool,
    terminal: bool,
    color: bool,
) -> Option<(&'static str, Box<dyn Sink>)> {
    if json {
        return Some(("json", Box::new(JsonSink::new(stdout()))));
    }
    terminal.then(|| {
        (
            "terminal",
            Box::new(TerminalSink::new(stdout(), color)) as Box<dyn Sink>,
        )
    })
}

pub trait Sink: Send {
    fn write(&mut self, record: &Record) -> io::Result<()>;
    fn flush(&mut self) -> io::Result<()>;
    /// Shutdown: the records still to come (the last ones, the final loss report) may wait
    /// for room until `deadline` instead of being dropped.
    fn finish(&mut self, _deadline: std::time::Instant) {}
    /// The event metrics now, for an output that exports them (OTLP).
    fn metrics(&mut self, _snapshot: &crate::model::MetricsSnapshot) {}
    /// Whether it exports metrics (the snapshot is taken only then).
    fn wants_metrics(&self) -> bool {
        false
    }
}

/// Several sinks at once (stdout and OTLP).
pub struct Fanout(pub Vec<Box<dyn Sink>>);

impl Sink for Fanout {
    fn write(&mut self, record: &Record) -> io::Result<()> {
        for s in &mut self.0 {
            s.write(record)?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        for s in &mut self.0 {
            s.flush()?;
        }
        Ok(())
    }

    fn finish(&mut self, deadline: std::time::Instant) {
        for s in &mut self.0 {
            s.finish(deadline);
        }
    }

    fn metrics(&mut self, snapshot: &crate::model::MetricsSnapshot) {
        for s in &mut self.0 {
            s.metrics(snapshot);
        }
    }

    fn wants_metrics(&self) -> bool {
        self.0.iter().any(|s| s.wants_metrics())
    }
}

/// Stdout, buffered; flushed by the pipeline whenever its queue runs empty.
pub fn stdout() -> Box<dyn Write + Send> {
    Box::new(io::BufWriter::with_capacity(64 * 1024, io::stdout()))
}
