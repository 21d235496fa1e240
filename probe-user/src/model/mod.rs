//! Owned, enriched records: what the sinks render. The JSON contract (docs/json.md) is the serde
//! form of [`Record`]: common keys first, then the keys of the kind.

use serde::Serialize;

mod common;
mod conntrack;
pub mod describe;
mod k8s;
mod loss;
mod metrics;
mod network;
mod process;
#[cfg(test)]
pub mod samples;
pub mod signals;
mod span;
mod summary;
mod wasm;

pub use self::{
    common::Common,
    conntrack::{ConntrackExpiry, Evidence, Finding},
    describe::{AttrRef, AttrSink, Attrs, Describe, Other},
    k8s::K8sAttrs,
    loss::{Loss, LossSource},
    metrics::{MetricFamily, MetricPoint, MetricsSnapshot},
    network::{Direction, End, Family, Flow, H2Frame, HttpRequest, HttpSide, PacketDrop, TcpReset},
    process::{CoreSignal, Handler, ProcessExit, RlimitCore},
    span::{OwnSpan, SpanRef, hex, hex_into},
    summary::{BESIDE_MAX, FoldedBy, Summary},
    wasm::{Stream, WasmOutput, WasmWrite, WasmWriteResult},
};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Record {
    /// Written as `time_unix_nano` (exact) and `time` (RFC 3339 UTC with nanoseconds: what jq
    /// and JavaScript read without rounding the 64-bit number).
    #[serde(flatten, serialize_with = "time_keys")]
    pub time_unix_nano: u64,
    pub kind: &'static str,
    /// Shared by every record (a clone is a reference count, not an allocation).
    pub node: std::sync::Arc<str>,
    #[serde(flatten)]
    pub common: Common,
    #[serde(flatten)]
    pub body: Body,
    /// Kubernetes keys (`k8s.pod.name`, ...), when the event belongs to a pod.
    #[serde(flatten)]
    pub k8s: Option<Box<K8sAttrs>>,
    /// The W3C trace context of the HTTP request the record belongs to: the one last sent on its
    /// connection, or the one its connection, thread or process was serving.
    /// Boxed: set on few records, and the record is moved several times on its way out.
    #[serde(flatten)]
    pub trace: Option<Box<TraceRef>>,
    /// Its own span's ID, chosen before the sinks (`Stages::emit`): written as `span_id`
    /// (hex) when chosen, the ID of its OTLP span (a summary's `beside` names these).
    #[serde(flatten, serialize_with = "span_key")]
    pub span: OwnSpan,
}

impl Record {
    /// About what the record holds in memory: itself, and the variable-sized part of the kinds
    /// that have one (a Wasm line's text; a finding's evidence). What byte budgets count.
    pub fn approx_bytes(&self) -> usize {
        size_of::<Self>()
            + match &self.body {
                Body::WasmOutput(w) => {
                    size_of::<WasmOutput>()
                        + w.text.len()
                        + w.data_b64.as_ref().map_or(0, String::len)
                        + w.runtime.len()
                        + w.fd_target.as_ref().map_or(0, String::len)
                }
                Body::Finding(f) => {
                    size_of::<Finding>() + f.summary.len() + f.evidence.len() * size_of::<Self>()
                }
                _ => 0,
            }
    }
}

fn time_keys<S: serde::Serializer>(nanos: &u64, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap as _;
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(*nanos);
    let mut map = s.serialize_map(Some(2))?;
    map.serialize_entry("time_unix_nano", nanos)?;
    // Formatted straight into the output (no String per record).
    map.serialize_entry(
        "time",
        &format_args!("{}", humantime::format_rfc3339_nanos(time)),
    )?;
    map.end()
}

fn span_key<S: serde::Serializer>(span: &OwnSpan, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap as _;
    let id = span.id();
    let mut map = s.serialize_map(Some(usize::from(id.is_some())))?;
    if let Some(id) = id {
        map.serialize_entry("span_id", &hex(&id))?;
    }
    map.end()
}

/// `traceparent` of a request: `00-<trace-id>-<parent-id>-<flags>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
}

/// The request a record belongs to: `trace_id` and `parent_span_id` (the span of the request's
/// sender: the client's), hex, and how the record was tied to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TraceRef {
    pub trace_id: String,
    pub parent_span_id: String,
    pub trace_tie: Tie,
    #[serde(skip)]
    pub parent: TraceParent,
}

impl TraceRef {
    pub fn new(parent: TraceParent, tie: Tie) -> Self {
        Self {
            trace_id: hex(&parent.trace_id),
            parent_span_id: hex(&parent.span_id),
            trace_tie: tie,
            parent,
        }
    }
}

/// How a record was tied to a request's trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Tie {
    /// The record is about the connection the request was sent (client) or received (server)
    /// on, while it was the connection's latest request.
    Connection,
    /// The record's task is the thread that received the request, while serving it.
    Thread,
    /// The record's task is in the process that received the request, while it was the only
    /// traced request that process was serving.
    Process,
    /// As `Thread`, for the task that caused the record (a signal's sender), when the record's
    /// own task was serving no traced request.
    SenderThread,
    /// As `Process`, for the process that caused the record.
    SenderProcess,
}

impl Tie {
    pub fn name(self) -> &'static str {
        match self {
            Self::Connection => "connection",
            Self::Thread => "thread",
            Self::Process => "process",
            Self::SenderThread => "sender_thread",
            Self::SenderProcess => "sender_process",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Body {
    TcpReset(TcpReset),
    /// Boxed: rare, and the largest of the kinds of one event (records stay small).
    CoreSignal(Box<CoreSignal>),
    /// Internal: joined into the `core_signal` record of the process, never written.
    ProcessExit(ProcessExit),
    /// Boxed: a line owns its strings anyway; inline it would make every record larger.
    WasmOutput(Box<WasmOutput>),
    /// Internal: assembled into `wasm_output` lines, never written.
    WasmWrite(WasmWrite),
    /// Internal: completes a `WasmWrite`, never written.
    WasmWriteResult(WasmWriteResult),
    /// Boxed: the largest of the frequent kinds (a TCP reset is the size the others set).
    PacketDrop(Box<PacketDrop>),
    /// Internal: the trace context of a connection, never written.
    HttpRequest(HttpRequest),
    /// Boxed, as `Finding`: rare and large, they would make every record large.
    ConntrackExpiry(Box<ConntrackExpiry>),
    Finding(Box<Finding>),
    Loss(Loss),
    /// A kind that is not one of the above: it describes and serializes itself.
    Other(Other),
}

// Every record is moved several times between the ring buffer and the sinks (channel, stages,
// the queued output's copy, the correlator's ring): rare or large bodies are boxed to keep
// it at this size (64-bit targets).
const _: () = assert!(size_of::<Record>() <= 216);

impl Body {
    /// A packet drop's body (boxed), e.g. for `Enricher::kernel_events`.
    pub fn packet_drop(d: PacketDrop) -> Self {
        Self::PacketDrop(Box::new(d))
    }

    /// A Wasm output line's body (boxed), e.g. for `Enricher::kernel_events`.
    pub fn wasm_output(w: WasmOutput) -> Self {
        Self::WasmOutput(Box::new(w))
    }

    /// The `kind` of every built-in variant a sink writes (`/status` and
    /// `probe_events_total` show each from the start, at 0).
    pub const WRITTEN_KINDS: [&'static str; 7] = [
        "tcp_reset",
        "core_signal",
        "wasm_output",
        "packet_drop",
        "conntrack_expiry",
        "finding",
        "loss",
    ];

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
            Self::Finding(_) => "finding",
            Self::Loss(_) => "loss",
            Self::Other(o) => o.0.kind(),
        }
    }

    /// The TCP flow of a written kind that is about one ([`Describe::flow`]).
    pub fn flow(&self) -> Option<Flow> {
        self.describe()?.flow()
    }

    /// How the kind renders; `None` for internal kinds, which are never written.
    pub fn describe(&self) -> Option<&dyn Describe> {
        Some(match self {
            Self::TcpReset(b) => b,
            Self::CoreSignal(b) => &**b,
            Self::WasmOutput(b) => &**b,
            Self::PacketDrop(b) => &**b,
            Self::ConntrackExpiry(b) => &**b,
            Self::Finding(b) => &**b,
            Self::Loss(b) => b,
            Self::Other(b) => &*b.0,
            Self::ProcessExit(_)
            | Self::WasmWrite(_)
            | Self::WasmWriteResult(_)
            | Self::HttpRequest(_) => return None,
        })
    }
}

impl Record {
    /// The record's typed attributes: the layer, the common keys, the kind's own, and the
    /// Kubernetes keys (pod labels as `k8s.pod.label.<name>`).
    pub fn attributes(&self, a: &mut Attrs<'_>) {
        let body = self.body.describe();
        a.str("isolation.layer", body.map_or("node", |b| b.layer()));
        a.str("k8s.node.name", &self.node);
        let c = &self.common;
        a.opt_int("process.pid", c.pid);
        a.opt_int("thread.id", c.tid);
        a.opt_str("process.executable.name", c.comm.as_deref());
        a.opt_int("probe.netns.inode", c.netns);
        a.opt_int("probe.cgroup.id", c.cgroup_id);
        if let Some(b) = body {
            b.attributes(a);
        }
        if let Some(k) = &self.k8s {
            k.attributes(a);
        }
        if let Some(t) = &self.trace {
            a.str("probe.trace.tie", t.trace_tie.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_written_kinds_are_the_samples_kinds() {
        let mut samples: Vec<_> = samples::all().iter().map(|r| r.body.kind()).collect();
        let mut written = Body::WRITTEN_KINDS.to_vec();
        samples.sort_unstable();
        written.sort_unstable();
        assert_eq!(samples, written);
    }
}
