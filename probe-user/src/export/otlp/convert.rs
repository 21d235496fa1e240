//! Records -> OTLP spans and log records. Every event is a span named per kind
//! (`tcp.reset.sent`, `conntrack.expiry`, `process.core_signal`, ...) at the kernel's timestamp,
//! with OpenTelemetry semantic-convention attributes where one exists, `probe.*` otherwise, and
//! `isolation.layer` (kernel.tcp, kernel.netfilter, process, wasm.runtime, container, pod, node).
//! A finding is a parent span whose children are its evidence, one per layer. Wasm output lines
//! are log records (with the text) and spans (so TraceQL can count them per pod); conntrack
//! settings and losses are log records. All of it comes from the typed record
//! ([`Record::attributes`] and each kind's [`Describe`](crate::model::Describe)): no kind is
//! named here.

use std::{
    borrow::Cow,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use opentelemetry::{
    InstrumentationScope, KeyValue, StringValue, Value as OtelValue,
    trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState},
};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SpanData, SpanEvents, SpanLinks};

use crate::model::{AttrValue, Attrs, Record};

/// A typed attribute as OpenTelemetry's value.
pub fn otel_value(v: AttrValue) -> OtelValue {
    match v {
        AttrValue::Str(s) => OtelValue::String(s.into()),
        AttrValue::Int(i) => OtelValue::I64(i),
        AttrValue::Float(f) => OtelValue::F64(f),
        AttrValue::Bool(b) => OtelValue::Bool(b),
        AttrValue::List(items) => OtelValue::Array(
            items
                .into_iter()
                .map(StringValue::from)
                .collect::<Vec<_>>()
                .into(),
        ),
    }
}

/// The attributes of a record, as the exporter sends them.
pub fn attributes(record: &Record) -> Vec<KeyValue> {
    let Attrs(list) = record.attributes();
    list.into_iter()
        .map(|(k, v)| KeyValue::new(k, otel_value(v)))
        .collect()
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

/// The spans of a record: one for an event (a parent and its evidence for a finding), none for
/// kinds that are only log records or internal.
pub fn spans(record: &Record, scope: &InstrumentationScope) -> Vec<SpanData> {
    let Some(body) = record.body.describe() else {
        return Vec::new();
    };
    let Some(name) = body.span_name() else {
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
        None => (
            RandomIdGenerator::default().new_trace_id(),
            SpanId::INVALID,
            false,
        ),
    };
    let status = body.span_error().map_or(Status::Unset, Status::error);
    let mut head = span(
        name,
        trace_id,
        parent,
        time(record.time_unix_nano),
        attributes(record),
        status,
        scope,
    );
    head.parent_span_is_remote = remote;
    let head_id = head.span_context.span_id();
    let mut out = vec![head];
    for ev in body.evidence() {
        let Some(name) = ev.body.describe().and_then(|b| b.span_name()) else {
            continue;
        };
        out.push(span(
            name,
            trace_id,
            head_id,
            time(ev.time_unix_nano),
            attributes(ev),
            Status::Unset,
            scope,
        ));
    }
    out
}
