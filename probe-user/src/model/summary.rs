//! `kind:"summary"`: records counted instead of sent one by one, as one record with their
//! exact count: a storming key's records the kernel counted (storm folding, every output), or
//! records over the node's OTLP budget (the OTLP output only).

use std::sync::Arc;

use serde::Serialize;

use super::{
    Common, Direction,
    describe::{Attrs, Describe, KindName, Line, LogLine, Severity, Tone, opt},
};

/// What folded the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FoldedBy {
    /// Storm folding in the kernel (`--fold-first`, `--fold-window`): one key's records.
    Kernel,
    /// The OTLP output's per-node budget (`--otlp-max-spans`, `--otlp-max-logs`): the
    /// records of one kind (and direction) over it in one second, whatever their key.
    OtlpBudget,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub folded_by: FoldedBy,
    /// The kind of the folded records (`tcp_reset`).
    pub folded_kind: &'static str,
    /// Records of the key folded since its previous summary: exact.
    pub count: u64,
    /// Wall-clock ns of the first and the last of them.
    pub first_unix_nano: u64,
    pub last_unix_nano: u64,
    pub direction: Option<Direction>,
    pub reason: Option<Arc<str>>,
    /// The key's service port: the lower of each connection's two ports (kernel folding;
    /// 0 over the OTLP budget: every port).
    pub port: u16,
    /// The spans of the key's records that went out in full since its previous summary (at
    /// most [`BESIDE_MAX`], the latest; kernel folding): where the detail of the storm is.
    pub beside: Vec<super::SpanRef>,
}

/// Full records a summary names at most.
pub const BESIDE_MAX: usize = 10;

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

    fn folded(&self) -> String {
        match self.folded_by {
            FoldedBy::Kernel => format!("folded port={}", self.port),
            FoldedBy::OtlpBudget => "over the OTLP budget".to_owned(),
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
                "{} reason={} over {:.3}s netns={} cgroup={}",
                self.folded(),
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
    fn links(&self) -> &[super::SpanRef] {
        &self.beside
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
                "{} more {} in {:.3}s, {} (counted, not sent one by one)",
                self.count,
                self.what(),
                self.seconds(),
                self.folded(),
            ),
        })
    }
    fn attributes(&self, a: &mut Attrs) {
        a.str("probe.summary.kind", self.folded_kind);
        a.str(
            "probe.summary.folded_by",
            match self.folded_by {
                FoldedBy::Kernel => "kernel",
                FoldedBy::OtlpBudget => "otlp_budget",
            },
        );
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
