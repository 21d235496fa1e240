//! Loss records: what was dropped, where.

use serde::Serialize;

use super::{
    Common,
    describe::{Attrs, Describe, Line, LogLine, Severity, Tone},
};

/// Where events were lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LossSource {
    /// The kernel could not write to the ring buffer (full).
    Ringbuf,
    /// The agent's queue between reader and sinks was full.
    Channel,
    /// A record from the kernel failed the checked decode.
    Decode,
    /// The kernel could not queue a conntrack event on the agent's netlink socket (ENOBUFS);
    /// `count` is the number of overruns (each lost one or more events).
    Netlink,
    /// An output (`json`, `terminal`): its queue was full (nobody read stdout), or it failed.
    Output(&'static str),
}

impl Serialize for LossSource {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl LossSource {
    /// The `source` key.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ringbuf => "ringbuf",
            Self::Channel => "channel",
            Self::Decode => "decode",
            Self::Netlink => "netlink",
            Self::Output(name) => name,
        }
    }
}

/// `kind:"loss"`: events lost since the previous loss record of the same source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Loss {
    pub source: LossSource,
    pub count: u64,
    /// The kind of the lost events when the source knows it.
    pub lost_kind: Option<&'static str>,
}

impl Describe for Loss {
    fn line(&self, _: &Common) -> Line {
        Line {
            tag: format!("LOST        {} event(s)", self.count),
            tone: Tone::Notice,
            text: format!(
                "source={} kind={}",
                self.source.name(),
                self.lost_kind.unwrap_or("-")
            ),
        }
    }
    fn log(&self) -> Option<LogLine> {
        Some(LogLine {
            event_name: "probe.loss",
            severity: Severity::Warn,
            body: format!("{} events lost ({})", self.count, self.source.name()),
        })
    }
    fn attributes(&self, a: &mut Attrs) {
        a.str("probe.source", self.source.name());
        a.int("probe.count", self.count);
        a.opt_str("probe.lost_kind", self.lost_kind);
    }
}
