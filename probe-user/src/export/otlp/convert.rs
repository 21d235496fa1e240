//! Records -> OTLP protobuf spans and log records, built directly as the wire types (no SDK
//! span in between). Every event is a span named per kind (`tcp.reset.sent`,
//! `conntrack.expiry`, `process.core_signal`, ...) at the kernel's timestamp, with
//! OpenTelemetry semantic-convention attributes where one exists, `probe.*` otherwise, and
//! `isolation.layer` (kernel.tcp, kernel.netfilter, process, wasm.runtime, container, pod,
//! node). A finding is a parent span whose children are its evidence, one per layer. Wasm
//! output lines are log records (with the text) and spans (so TraceQL can count them per pod);
//! conntrack settings and losses are log records. All of it comes from the typed record
//! ([`Record::attributes`] and each kind's [`Describe`](crate::model::Describe)): no kind is
//! named here.

use opentelemetry_proto::tonic::{
    common::v1::{AnyValue, ArrayValue, InstrumentationScope, KeyValue, any_value::Value},
    logs::v1::{LogRecord, SeverityNumber},
    trace::v1::{Span, Status, span::SpanKind, status::StatusCode},
};

use crate::model::{self, AttrValue, Attrs, Record, describe::LogLine};

/// W3C trace flag: sampled.
const SAMPLED: u32 = 0x01;
/// OTLP span flags: whether the parent is remote is known (0x100), and it is (0x200).
const HAS_IS_REMOTE: u32 = 0x100;
const IS_REMOTE: u32 = 0x200;

/// The instrumentation scope of everything the agent exports.
pub fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "node-probe".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..InstrumentationScope::default()
    }
}

/// A typed attribute as an OTLP value.
pub fn any_value(v: AttrValue) -> AnyValue {
    let value = match v {
        AttrValue::Str(s) => Value::StringValue(s),
        AttrValue::Int(i) => Value::IntValue(i),
        AttrValue::Float(f) => Value::DoubleValue(f),
        AttrValue::Bool(b) => Value::BoolValue(b),
        AttrValue::List(items) => Value::ArrayValue(ArrayValue {
            values: items
                .into_iter()
                .map(|s| AnyValue {
                    value: Some(Value::StringValue(s)),
                })
                .collect(),
        }),
    };
    AnyValue { value: Some(value) }
}

pub fn key_value(key: impl Into<String>, value: AttrValue) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(any_value(value)),
        ..KeyValue::default()
    }
}

/// The attributes of a record, as the exporter sends them.
pub fn attributes(record: &Record) -> Vec<KeyValue> {
    let Attrs(list) = record.attributes();
    list.into_iter().map(|(k, v)| key_value(k, v)).collect()
}

/// A random ID that is not all zeroes (an all-zero ID is invalid in OTLP).
fn random_id<const N: usize>() -> Vec<u8> {
    loop {
        let id: [u8; N] = rand::random();
        if id != [0; N] {
            return id.to_vec();
        }
    }
}

fn span(
    name: String,
    trace_id: &[u8],
    parent: Vec<u8>,
    at: u64,
    attributes: Vec<KeyValue>,
    status: Option<Status>,
) -> Span {
    Span {
        trace_id: trace_id.to_vec(),
        span_id: random_id::<8>(),
        parent_span_id: parent,
        flags: SAMPLED | HAS_IS_REMOTE,
        name,
        kind: SpanKind::Internal as i32,
        start_time_unix_nano: at,
        end_time_unix_nano: at,
        attributes,
        status,
        ..Span::default()
    }
}

/// The spans of a record: one for an event (a parent and its evidence for a finding), none for
/// kinds that are only log records or internal.
pub fn spans(record: &Record) -> Vec<Span> {
    let Some(body) = record.body.describe() else {
        return Vec::new();
    };
    let Some(name) = body.span_name() else {
        return Vec::new();
    };
    // Inside the request's trace, as a child of the client's span, when the connection
    // carried a traceparent; a trace of its own otherwise.
    let (trace_id, parent, remote) = match &record.trace {
        Some(t) => (t.parent.trace_id.to_vec(), t.parent.span_id.to_vec(), true),
        None => (random_id::<16>(), Vec::new(), false),
    };
    let status = body.span_error().map(|message| Status {
        code: StatusCode::Error as i32,
        message,
    });
    let mut head = span(
        name.into_owned(),
        &trace_id,
        parent,
        record.time_unix_nano,
        attributes(record),
        status,
    );
    if remote {
        head.flags |= IS_REMOTE;
    }
    let head_id = head.span_id.clone();
    let mut out = vec![head];
    for ev in body.evidence() {
        let Some(name) = ev.body.describe().and_then(|b| b.span_name()) else {
            continue;
        };
        out.push(span(
            name.into_owned(),
            &trace_id,
            head_id.clone(),
            ev.time_unix_nano,
            attributes(ev),
            None,
        ));
    }
    out
}

/// The log record of a record that has one (Wasm lines, findings, settings, losses).
pub fn log_record(record: &Record, line: LogLine, observed_unix_nano: u64) -> LogRecord {
    let (number, text) = match line.severity {
        model::describe::Severity::Info => (SeverityNumber::Info, "INFO"),
        model::describe::Severity::Warn => (SeverityNumber::Warn, "WARN"),
    };
    let (trace_id, span_id) = match &record.trace {
        Some(t) => (t.parent.trace_id.to_vec(), t.parent.span_id.to_vec()),
        None => (Vec::new(), Vec::new()),
    };
    LogRecord {
        time_unix_nano: record.time_unix_nano,
        observed_time_unix_nano: observed_unix_nano,
        severity_number: number as i32,
        severity_text: text.into(),
        event_name: line.event_name.into(),
        body: Some(AnyValue {
            value: Some(Value::StringValue(line.body)),
        }),
        attributes: attributes(record),
        trace_id,
        span_id,
        ..LogRecord::default()
    }
}
