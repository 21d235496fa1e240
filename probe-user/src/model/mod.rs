//! Owned, enriched records: what the sinks render. The JSON contract (README) is the serde
//! form of [`Record`]: common keys first, then the keys of the kind.

use std::net::IpAddr;

use serde::Serialize;

mod common;
mod k8s;
pub mod signals;

use self::signals::Origin;
pub use self::{common::Common, k8s::K8sAttrs};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Record {
    /// Written as `time_unix_nano` (exact) and `time` (RFC 3339 UTC with nanoseconds: what jq
    /// and JavaScript read without rounding the 64-bit number).
    #[serde(flatten, serialize_with = "time_keys")]
    pub time_unix_nano: u64,
    pub kind: &'static str,
    pub node: String,
    #[serde(flatten)]
    pub common: Common,
    #[serde(flatten)]
    pub body: Body,
    /// Kubernetes keys (`k8s.pod.name`, ...), when the event belongs to a pod.
    #[serde(flatten)]
    pub k8s: Option<Box<K8sAttrs>>,
    /// The W3C trace context of the HTTP request last sent on the event's connection.
    #[serde(flatten)]
    pub trace: Option<TraceRef>,
}

fn time_keys<S: serde::Serializer>(nanos: &u64, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap as _;
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(*nanos);
    let mut map = s.serialize_map(Some(2))?;
    map.serialize_entry("time_unix_nano", nanos)?;
    map.serialize_entry("time", &humantime::format_rfc3339_nanos(time).to_string())?;
    map.end()
}

/// `traceparent` of a request: `00-<trace-id>-<parent-id>-<flags>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
}

/// The request a record belongs to: `trace_id` and `parent_span_id` (the client's span), hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TraceRef {
    pub trace_id: String,
    pub parent_span_id: String,
    #[serde(skip)]
    pub parent: TraceParent,
}

/// The head of an HTTP/1.x request sent on a TCP socket (internal: feeds the trace
/// contexts, never written). `saddr:sport` is the sender's end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HttpRequest {
    pub family: Family,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    #[serde(skip)]
    pub traceparent: Option<TraceParent>,
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
    PacketDrop(PacketDrop),
    /// Internal: the trace context of a connection, never written.
    HttpRequest(HttpRequest),
    ConntrackExpiry(ConntrackExpiry),
    ConntrackSettings(ConntrackSettings),
    Finding(Finding),
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
            Self::PacketDrop(_) => "packet_drop",
            Self::HttpRequest(_) => "http_request",
            Self::ConntrackExpiry(_) => "conntrack_expiry",
            Self::ConntrackSettings(_) => "conntrack_settings",
            Self::Finding(_) => "finding",
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

/// `kind:"packet_drop"`: TCP packets of one flow the kernel dropped for one reason since the
/// previous record of that flow and reason. `saddr:sport` is the packet's source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PacketDrop {
    pub family: Family,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    /// `enum skb_drop_reason` name without its prefix ("NO_SOCKET", "NETFILTER_DROP", ...);
    /// null where the kernel gives no drop reason (before 5.17).
    pub reason: Option<String>,
    /// Packets dropped since the previous record (the decoder puts the kernel's running total
    /// here; the drop stage turns it into the increase).
    pub count: u64,
    /// The kernel aggregation key, for reading the total after the last record.
    #[serde(skip)]
    pub key: probe_common::DropKey,
}

/// `kind:"conntrack_expiry"`: an established TCP conntrack entry was destroyed without FIN or
/// RST: its timeout ran out (or it was deleted by hand). The common `netns` is the watched
/// namespace's inode.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConntrackExpiry {
    /// The watched namespace: "host" or the `--conntrack-netns` path.
    pub netns_path: String,
    pub proto: String,
    pub tcp_state: Option<String>,
    pub orig_saddr: IpAddr,
    pub orig_sport: u16,
    pub orig_daddr: IpAddr,
    pub orig_dport: u16,
    pub reply_saddr: IpAddr,
    pub reply_sport: u16,
    pub reply_daddr: IpAddr,
    pub reply_dport: u16,
    /// The namespace's timeout for the entry's state when the event arrived, in seconds.
    pub timeout_s: Option<u64>,
    /// The sysctl that timeout comes from.
    pub timeout_sysctl: Option<String>,
    /// From the entry's creation to its destruction (needs `nf_conntrack_timestamp`).
    pub established_for_s: Option<f64>,
    pub zone: u16,
    pub mark: u32,
    /// Named `ip_conntrack_status` bits (ASSURED, SEEN_REPLY, SRC_NAT, DST_NAT, ...).
    pub status: Vec<String>,
    pub conntrack_id: Option<u32>,
    /// Per direction, when `nf_conntrack_acct` is on.
    pub orig_packets: Option<u64>,
    pub orig_bytes: Option<u64>,
    pub reply_packets: Option<u64>,
    pub reply_bytes: Option<u64>,
    /// When the entry was created, when its timeout ran out, and when the kernel reaped it
    /// (lazily: at the flow's next packet or a GC pass), with `nf_conntrack_timestamp` on.
    pub start_unix_nano: Option<u64>,
    pub stop_unix_nano: Option<u64>,
    pub destroyed_unix_nano: Option<u64>,
}

/// `kind:"conntrack_settings"`: the conntrack sysctls of a watched namespace, at start and
/// whenever one changes (`nf_conntrack_count` changes alone do not count as a change).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConntrackSettings {
    pub netns_path: String,
    /// One key per sysctl, named as the sysctl (`net.netfilter.nf_conntrack_max`); numbers
    /// where the value is one.
    #[serde(flatten)]
    pub sysctls: std::collections::BTreeMap<String, serde_json::Value>,
}

/// `kind:"finding"`: observations joined into a cause a person can act on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// "conntrack_expiry_reset", "conntrack_expiry_drop", "conntrack_table_full".
    pub finding: &'static str,
    /// One sentence naming the cause and what to do.
    pub summary: String,
    /// The records the finding joins, as they were written.
    pub evidence: Vec<serde_json::Value>,
    pub netns_path: Option<String>,
    /// The flow as its client sent it (conntrack original direction).
    pub saddr: Option<IpAddr>,
    pub sport: Option<u16>,
    pub daddr: Option<IpAddr>,
    pub dport: Option<u16>,
    /// Where the flow really went (the reply direction's source: a DNAT backend).
    pub backend_addr: Option<IpAddr>,
    pub backend_port: Option<u16>,
    pub timeout_s: Option<u64>,
    pub timeout_sysctl: Option<String>,
    pub established_for_s: Option<f64>,
}

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
