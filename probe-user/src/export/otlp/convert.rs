//! Records -> OTLP spans and log records. Every event is a span named per kind
//! (`tcp.reset.sent`, `conntrack.expiry`, `process.core_signal`, ...) at the kernel's timestamp,
//! with OpenTelemetry semantic-convention attributes where one exists, `probe.*` otherwise, and
//! `isolation.layer` (kernel.tcp, kernel.netfilter, process, wasm.runtime, container, pod, node).
//! A finding is a parent span whose children are its evidence, one per layer. Wasm output lines
//! are log records (with the text) and spans (so TraceQL can count them per pod); conntrack
//! settings and losses are log records.

use std::{
    borrow::Cow,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use opentelemetry::{
    InstrumentationScope, KeyValue, Value as OtelValue,
    trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState},
};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SpanData, SpanEvents, SpanLinks};
use serde_json::Value;

use crate::model::{Body, Direction, Record};

/// Span names the exporter emits, by record kind (the dashboard test checks against these).
pub fn span_name(record: &Value) -> Option<&'static str> {
    Some(match record["kind"].as_str()? {
        "tcp_reset" if record["direction"] == "sent" => "tcp.reset.sent",
        "tcp_reset" => "tcp.reset.received",
        "core_signal" => "process.core_signal",
        "conntrack_expiry" => "conntrack.expiry",
        "packet_drop" => "kernel.packet_drop",
        "wasm_output" => "wasm.output",
        _ => return None,
    })
}

/// The layer of the isolation stack a record describes.
pub fn layer(record: &Value) -> &'static str {
    match record["kind"].as_str().unwrap_or("") {
        "tcp_reset" => "kernel.tcp",
        "conntrack_expiry" | "conntrack_settings" => "kernel.netfilter",
        "packet_drop" if record["reason"] == "NETFILTER_DROP" => "kernel.netfilter",
        "packet_drop" => "kernel.tcp",
        "core_signal" => "process",
        "wasm_output" => "wasm.runtime",
        _ => "node",
    }
}

/// Record key -> attribute name; keys not listed become `probe.<key>`, keys that already are
/// dotted semantic-convention names (`k8s.pod.name`) stay as they are.
fn attribute_name(kind: &str, key: &str) -> Option<Cow<'static, str>> {
    let fixed: &'static str = match (kind, key) {
        (
            _,
            "time_unix_nano" | "kind" | "evidence" | "summary" | "text" | "data_b64" | "trace_id"
            | "parent_span_id",
        ) => {
            return None;
        }
        (_, "node") => "k8s.node.name",
        (_, "pid") => "process.pid",
        (_, "tid") => "thread.id",
        (_, "comm") => "process.executable.name",
        (_, "netns") => "probe.netns.inode",
        (_, "cgroup_id") => "probe.cgroup.id",
        ("tcp_reset", "saddr") => "network.local.address",
        ("tcp_reset", "sport") => "network.local.port",
        ("tcp_reset", "daddr") => "network.peer.address",
        ("tcp_reset", "dport") => "network.peer.port",
        ("tcp_reset" | "packet_drop", "family") => "network.type",
        ("tcp_reset", "reason") => "tcp.reset.reason",
        ("tcp_reset", "tcp_state") => "tcp.state",
        ("packet_drop", "saddr") => "source.address",
        ("packet_drop", "sport") => "source.port",
        ("packet_drop", "daddr") => "destination.address",
        ("packet_drop", "dport") => "destination.port",
        ("packet_drop", "reason") => "packet.drop.reason",
        ("packet_drop", "count") => "packet.drop.count",
        ("conntrack_expiry" | "finding", "orig_saddr" | "saddr") => "client.address",
        ("conntrack_expiry" | "finding", "orig_sport" | "sport") => "client.port",
        ("conntrack_expiry" | "finding", "orig_daddr" | "daddr") => "server.address",
        ("conntrack_expiry" | "finding", "orig_dport" | "dport") => "server.port",
        ("core_signal", "signal") => "signal.number",
        ("core_signal", "signal_name") => "signal.name",
        ("wasm_output", "stream") => "log.iostream",
        _ if key.contains('.') => return Some(Cow::Owned(key.to_owned())),
        _ => return Some(Cow::Owned(format!("probe.{key}"))),
    };
    Some(Cow::Borrowed(fixed))
}

fn otel_value(v: &Value) -> Option<OtelValue> {
    Some(match v {
        Value::Null => return None,
        Value::Bool(b) => OtelValue::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => OtelValue::I64(i),
            None => OtelValue::F64(n.as_f64()?),
        },
        Value::String(s) => OtelValue::String(s.clone().into()),
        Value::Array(items) => OtelValue::Array(
            items
                .iter()
                .filter_map(|i| i.as_str().map(|s| s.to_owned().into()))
                .collect::<Vec<opentelemetry::StringValue>>()
                .into(),
        ),
        Value::Object(_) => OtelValue::String(v.to_string().into()),
    })
}

/// The attributes of a record (as its JSON form shows it).
pub fn attributes(record: &Value) -> Vec<KeyValue> {
    let kind = record["kind"].as_str().unwrap_or("");
    let mut out = vec![KeyValue::new("isolation.layer", layer(record))];
    if matches!(kind, "tcp_reset" | "packet_drop") {
        out.push(KeyValue::new("network.transport", "tcp"));
    }
    let Some(map) = record.as_object() else {
        return out;
    };
    for (key, value) in map {
        if key == "k8s.pod.labels" {
            if let Some(labels) = value.as_object() {
                for (l, v) in labels {
                    if let Some(v) = v.as_str() {
                        out.push(KeyValue::new(format!("k8s.pod.label.{l}"), v.to_owned()));
                    }
                }
            }
            continue;
        }
        if let (Some(name), Some(v)) = (attribute_name(kind, key), otel_value(value)) {
            out.push(KeyValue::new(name, v));
        }
    }
    out
}

pub fn time(unix_nano: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(unix_nano)
}

fn span(
    name: Cow<'static, str>,
    trace_id: TraceId,
    parent: SpanId,
    at: SystemTime,
    attributes: Vec<KeyValue>,
    status: Status,
    scope: &InstrumentationScope,
) -> SpanData {
    let ids = RandomIdGenerator::default();
    SpanData {
        span_context: SpanContext::new(
            trace_id,
            ids.new_span_id(),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
        parent_span_id: parent,
        parent_span_is_remote: false,
        span_kind: SpanKind::Internal,
        name,
        start_time: at,
        end_time: at,
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status,
        instrumentation_scope: scope.clone(),
    }
}

/// The spans of a record: one for an event, a parent and its evidence for a finding, none for
/// kinds that are log records.
pub fn spans(record: &Record, scope: &InstrumentationScope) -> Vec<SpanData> {
    let json = serde_json::to_value(record).unwrap_or_default();
    let trace_id = RandomIdGenerator::default().new_trace_id();
    if let Body::Finding(f) = &record.body {
        let parent = span(
            Cow::Owned(format!("finding.{}", f.finding)),
            trace_id,
            SpanId::INVALID,
            time(record.time_unix_nano),
            attributes(&json),
            Status::error(f.summary.clone()),
            scope,
        );
        let parent_id = parent.span_context.span_id();
        let mut out = vec![parent];
        for ev in &f.evidence {
            let Some(name) = span_name(ev) else { continue };
            out.push(span(
                Cow::Borrowed(name),
                trace_id,
                parent_id,
                time(
                    ev["time_unix_nano"]
                        .as_u64()
                        .unwrap_or(record.time_unix_nano),
                ),
                attributes(ev),
                Status::Unset,
                scope,
            ));
        }
        return out;
    }
    let Some(name) = span_name(&json) else {
        return Vec::new();
    };
    // Inside the request's trace, as a child of the client's span, when the connection
    // carried a traceparent; a trace of its own otherwise.
    let (trace_id, parent, remote) = match &record.trace {
        Some(t) => (
            TraceId::from_bytes(t.parent.trace_id),
            SpanId::from_bytes(t.parent.span_id),
            true,
        ),
        None => (trace_id, SpanId::INVALID, false),
    };
    let status = match &record.body {
        Body::TcpReset(r) if r.direction == Direction::Received => {
            Status::error("connection reset by peer")
        }
        Body::CoreSignal(c) => Status::error(format!("{} {}", c.signal_name, c.si_code)),
        _ => Status::Unset,
    };
    let mut s = span(
        Cow::Borrowed(name),
        trace_id,
        parent,
        time(record.time_unix_nano),
        attributes(&json),
        status,
        scope,
    );
    s.parent_span_is_remote = remote;
    vec![s]
}

/// Whether a record becomes a log record.
pub fn is_log(record: &Record) -> bool {
    matches!(
        record.body,
        Body::WasmOutput(_) | Body::ConntrackSettings(_) | Body::Loss(_)
    )
}
