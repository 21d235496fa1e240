//! `kind:"summary"`: the records of one storming key that the kernel counted instead of
//! sending (storm folding), as one record with their exact count.

use std::sync::Arc;

use serde::Serialize;

use super::{
    Common, Direction,
    describe::{Attrs, Describe, KindName, Line, LogLine, Severity, Tone, opt},
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// The kind of the folded records (`tcp_reset`).
    pub folded_kind: &'static str,
    /// Records of the key folded since its previous summary: exact.
    pub count: u64,
    /// Wall-clock ns of the first and the last of them.
    pub first_unix_nano: u64,
    pub last_unix_nano: u64,
    pub direction: Option<Direction>,
    pub reason: Option<Arc<str>>,
    /// The key's service port: the lower of each connection's two ports.
    pub port: u16,
}

impl KindName for Summary {
    const KIND: &'static str = "summary";
}

impl Summary {
    fn what(&self) -> &'static str {
        match (self.folded_kind, self.direction) {
            ("tcp_reset", Some(Direction::Sent)) => "RST sent",
            ("tcp_reset", Some(Direction::Received)) => "RST received",
            _ => self.folded_kind,
        }
    }

    fn seconds(&self) -> f64 {
        self.last_unix_nano.saturating_sub(self.first_unix_nano) as f64 / 1e9
    }
}

/// `41230` as `41,230`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl Describe for Summary {
    fn line(&self, c: &Common) -> Line {
        Line {
            tag: format!("{} ×{}", self.what(), thousands(self.count)),
            tone: Tone::Notice,
            text: format!(
                "folded port={} reason={} over {:.3}s netns={} cgroup={}",
                self.port,
                opt(&self.reason),
                self.seconds(),
                opt(&c.netns),
                opt(&c.cgroup_id),
            ),
        }
    }
    fn layer(&self) -> &'static str {
        "kernel.tcp"
    }
    fn span_name(&self) -> Option<std::borrow::Cow<'static, str>> {
        Some(match self.direction {
            Some(Direction::Sent) => "tcp.reset.sent.summary".into(),
            Some(Direction::Received) => "tcp.reset.received.summary".into(),
            None => "probe.summary".into(),
        })
    }
    fn log(&self) -> Option<LogLine> {
        Some(LogLine {
            event_name: "probe.summary",
            severity: Severity::Warn,
            body: format!(
                "{} more {} on port {} in {:.3}s (folded: counted, not sent one by one)",
                self.count,
                self.what(),
                self.port,
                self.seconds()
            ),
        })
    }
    fn attributes(&self, a: &mut Attrs) {
        a.str("probe.summary.kind", self.folded_kind);
        a.int("probe.summary.count", self.count);
        a.int("probe.summary.first_unix_nano", self.first_unix_nano);
        a.int("probe.summary.last_unix_nano", self.last_unix_nano);
        a.int("probe.summary.port", self.port);
        if let Some(d) = self.direction {
            a.str(
                "probe.direction",
                match d {
                    Direction::Sent => "sent",
                    Direction::Received => "received",
                },
            );
            a.str("network.transport", "tcp");
        }
        a.opt_str("tcp.reset.reason", self.reason.as_deref());
    }
}
