//! Core-dumping signals and process exits.

use serde::Serialize;

use super::{
    Common,
    describe::{Attrs, Describe, Line, Tone, opt, task},
    signals::Origin,
};

/// What the target had installed for the signal when it was generated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Handler {
    /// SIG_DFL: for these signals, terminate and dump core.
    Default,
    /// SIG_IGN.
    Ignored,
    /// A handler function: the process may survive.
    Handled,
}

/// RLIMIT_CORE: a number of bytes, or "unlimited".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RlimitCore(pub u64);

impl Serialize for RlimitCore {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 == u64::MAX {
            s.serialize_str("unlimited")
        } else {
            s.serialize_u64(self.0)
        }
    }
}

impl std::fmt::Display for RlimitCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0 == u64::MAX {
            f.write_str("unlimited")
        } else {
            write!(f, "{}", self.0)
        }
    }
}

/// `kind:"core_signal"`: a core-dumping signal and its outcome. The common pid/tid/comm,
/// cgroup and netns are the TARGET's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CoreSignal {
    pub signal: u32,
    pub signal_name: String,
    pub origin: Origin,
    /// Name of si_code ("SEGV_MAPERR", "SI_TKILL", ...).
    pub si_code: String,
    pub sender_pid: Option<u32>,
    pub sender_comm: Option<String>,
    /// The sending thread (internal: the trace tie of a signal a serving thread sent).
    #[serde(skip)]
    pub sender_tid: Option<u32>,
    /// The generate result ("delivered", "ignored", "already_pending", ...).
    pub result: String,
    pub handler: Option<Handler>,
    /// Whether a core was written; null when unknown (the process outlived the wait).
    pub core_dumped: Option<bool>,
    /// Why no core was written ("rlimit_core=0", "handled", ...); null when one was.
    pub core_suppressed_by: Option<String>,
    pub rlimit_core: Option<RlimitCore>,
    /// The target's dumpable mode (0 = not dumpable, 1 = dumpable, 2 = root-only).
    pub dumpable: Option<u32>,
    /// The node's kernel.core_pattern and kernel.core_uses_pid when the signal was seen.
    pub core_pattern: Option<String>,
    pub core_uses_pid: Option<bool>,
    /// The exit status when the process died (signal | 0x80 if a core was dumped).
    pub exit_code: Option<u32>,
}

/// A watched process exited (internal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ProcessExit {
    pub exit_code: u32,
    pub watched_signal: u32,
}

impl Handler {
    fn name(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::Ignored => "ignored",
            Self::Handled => "handled",
        }
    }
}

impl Describe for CoreSignal {
    fn by_task(&self) -> bool {
        true
    }
    fn sender_task(&self) -> Option<(u32, u32)> {
        self.sender_pid.zip(self.sender_tid)
    }
    fn line(&self, c: &Common) -> Line {
        let (tone, verdict) = match (self.core_dumped, &self.core_suppressed_by) {
            (Some(true), _) => (Tone::Alarm, "core dumped".to_owned()),
            (Some(false), why) => (Tone::Warn, format!("no core ({})", opt(why))),
            (None, _) => (Tone::Warn, "core unknown".to_owned()),
        };
        let sender = match (&self.sender_comm, self.sender_pid) {
            (Some(comm), Some(pid)) => format!("{comm}[{pid}]"),
            _ => "-".into(),
        };
        Line {
            tag: format!("{:<12}", self.signal_name),
            tone,
            text: format!(
                "{} {} origin={} sender={sender} result={} {verdict} rlimit_core={} \
                 core_pattern={:?} exit_code={} cgroup={} netns={}",
                task(c),
                self.si_code,
                self.origin.name(),
                self.result,
                opt(&self.rlimit_core),
                self.core_pattern.as_deref().unwrap_or("-"),
                opt(&self.exit_code),
                opt(&c.cgroup_id),
                opt(&c.netns),
            ),
        }
    }
    fn layer(&self) -> &'static str {
        "process"
    }
    fn span_name(&self) -> Option<std::borrow::Cow<'static, str>> {
        Some("process.core_signal".into())
    }
    fn span_error(&self) -> Option<String> {
        Some(format!("{} {}", self.signal_name, self.si_code))
    }
    fn attributes(&self, a: &mut Attrs) {
        a.int("signal.number", self.signal);
        a.str("signal.name", &self.signal_name);
        a.str("probe.origin", self.origin.name());
        a.str("probe.si_code", &self.si_code);
        a.opt_int("probe.sender_pid", self.sender_pid);
        a.opt_str("probe.sender_comm", self.sender_comm.as_deref());
        a.str("probe.result", &self.result);
        a.opt_str("probe.handler", self.handler.map(Handler::name));
        a.bool("probe.core_dumped", self.core_dumped);
        a.opt_str(
            "probe.core_suppressed_by",
            self.core_suppressed_by.as_deref(),
        );
        match self.rlimit_core {
            Some(RlimitCore(u64::MAX)) => a.str("probe.rlimit_core", "unlimited"),
            Some(RlimitCore(n)) => a.int("probe.rlimit_core", n),
            None => {}
        }
        a.opt_int("probe.dumpable", self.dumpable);
        a.opt_str("probe.core_pattern", self.core_pattern.as_deref());
        a.bool("probe.core_uses_pid", self.core_uses_pid);
        a.opt_int("probe.exit_code", self.exit_code);
    }
}
