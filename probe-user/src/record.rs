//! Owned, enriched records: what the sinks render. The JSON contract (README) is the serde
//! form of [`Record`]: common keys first, then the keys of the kind.

use std::net::IpAddr;

use serde::Serialize;

use crate::{decode::Common, signals::Origin};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Record {
    pub time_unix_nano: u64,
    pub kind: &'static str,
    pub node: String,
    #[serde(flatten)]
    pub common: Common,
    #[serde(flatten)]
    pub body: Body,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Body {
    TcpReset(TcpReset),
    CoreSignal(CoreSignal),
    /// Internal: joined into the `core_signal` record of the process, never written.
    ProcessExit(ProcessExit),
    WasmOutput(WasmOutput),
    /// Internal: assembled into `wasm_output` lines, never written.
    WasmWrite(WasmWrite),
    /// Internal: completes a `WasmWrite`, never written.
    WasmWriteResult(WasmWriteResult),
    Loss(Loss),
}

impl Body {
    /// The `kind` key.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::TcpReset(_) => "tcp_reset",
            Self::CoreSignal(_) => "core_signal",
            Self::ProcessExit(_) => "process_exit",
            Self::WasmOutput(_) => "wasm_output",
            Self::WasmWrite(_) => "wasm_write",
            Self::WasmWriteResult(_) => "wasm_write_result",
            Self::Loss(_) => "loss",
        }
    }
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// `kind:"wasm_output"`: one line (or an idle/exit-flushed partial line) a Wasm runtime wrote
/// to stdout or stderr. pid/comm are the runtime process's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WasmOutput {
    pub stream: Stream,
    /// The runtime pattern that selected the process ("wasmtime", "containerd-shim-spin*",
    /// "cgroup" when selected through its cgroup).
    pub runtime: String,
    /// The line without its newline: exact when valid UTF-8, else losslessly escaped
    /// (`\\` for a backslash, `\xNN` for a byte that is not UTF-8).
    pub text: String,
    /// The raw bytes, base64, only when they are not valid UTF-8.
    pub data_b64: Option<String>,
    /// Bytes of the write beyond the capture cap are missing.
    pub truncated: bool,
    /// Result of the (last) write that carried the line: bytes written, or -errno.
    pub write_result: Option<i64>,
    /// Where the fd pointed: "pipe", "socket", "tty", "/dev/null", a file path; null if
    /// unknown.
    pub fd_target: Option<String>,
}

/// A chunk of a captured write (internal).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WasmWrite {
    pub fd: u32,
    pub runtime: u32,
    pub offset: u64,
    pub total_len: u64,
    pub truncated: bool,
    pub unreadable: bool,
    pub data: Vec<u8>,
}

/// The result of a captured write (internal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct WasmWriteResult {
    pub fd: u32,
    pub result: i64,
    /// What the fd was when the write returned, from the kernel ("pipe", "/dev/null", ...);
    /// `Some("file")` for regular files (userspace may find the path); None when closed.
    pub fd_kind: Option<&'static str>,
}

/// A watched process exited (internal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ProcessExit {
    pub exit_code: u32,
    pub watched_signal: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Sent,
    Received,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    Ipv4,
    Ipv6,
}

/// `kind:"tcp_reset"`. `saddr:sport` is the local end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TcpReset {
    pub direction: Direction,
    pub family: Family,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    pub tcp_state: Option<String>,
    pub reason: Option<String>,
    pub socket_cookie: Option<u64>,
}

/// Where events were lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LossSource {
    /// The kernel could not write to the ring buffer (full).
    Ringbuf,
    /// The agent's queue between reader and sinks was full.
    Channel,
    /// A record from the kernel failed the checked decode.
    Decode,
}

impl LossSource {
    /// The `source` key.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ringbuf => "ringbuf",
            Self::Channel => "channel",
            Self::Decode => "decode",
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
