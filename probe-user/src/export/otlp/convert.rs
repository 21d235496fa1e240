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
    logs::v1::SeverityNumber,
    trace::v1::{span::SpanKind, status::StatusCode},
};

use super::wire;
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

/// A typed attribute as an OTLP value (the resource's, built once).
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

/// A random ID that is not all zeroes (an all-zero ID is invalid in OTLP).
fn random_id<const N: usize>() -> [u8; N] {
    loop {
        let id: [u8; N] = rand::random();
        if id != [0; N] {
            return id;
        }
    }
}

/// The spans of a record, encoded: one for an event (a parent and its evidence for a
/// finding), none for kinds that are only log records or internal. `attrs` are the record's
/// [`Record::attributes`] (built once for its span and its log record).
pub fn span_messages(record: &Record, attrs: &Attrs) -> Vec<Vec<u8>> {
    let Some(body) = record.body.describe() else {
        return Vec::new();
    };
    let Some(name) = body.span_name() else {
        return Vec::new();
    };
    // Inside the request's trace, as a child of the client's span, when the connection
    // carried a traceparent; a trace of its own otherwise.
    let (trace_id, parent, flags): ([u8; 16], &[u8], u32) = match &record.trace {
        Some(t) => (
            t.parent.trace_id,
            &t.parent.span_id,
            SAMPLED | HAS_IS_REMOTE | IS_REMOTE,
        ),
        None => (random_id(), &[], SAMPLED | HAS_IS_REMOTE),
    };
    let error = body.span_error();
    let head_id: [u8; 8] = random_id();
    let mut out = vec![wire::span(&wire::SpanFields {
        trace_id: &trace_id,
        span_id: &head_id,
        parent_span_id: parent,
        flags,
        name: &name,
        kind: SpanKind::Internal as i32,
        time_unix_nano: record.time_unix_nano,
        attributes: attrs,
        status: error
            .as_deref()
            .map(|message| (StatusCode::Error as i32, message)),
    })];
    for ev in body.evidence() {
        let Some(name) = ev.body.describe().and_then(|b| b.span_name()) else {
            continue;
        };
        out.push(wire::span(&wire::SpanFields {
            trace_id: &trace_id,
            span_id: &random_id::<8>(),
            parent_span_id: &head_id,
            flags: SAMPLED | HAS_IS_REMOTE,
            name: &name,
            kind: SpanKind::Internal as i32,
            time_unix_nano: ev.time_unix_nano,
            attributes: &ev.attributes(),
            status: None,
        }));
    }
    out
}

/// The log record of a record that has one (Wasm lines, findings, settings, losses), encoded;
/// `attrs` are the record's [`Record::attributes`].
pub fn log_message(
    record: &Record,
    attrs: &Attrs,
    line: &LogLine,
    observed_unix_nano: u64,
) -> Vec<u8> {
    let (number, text) = match line.severity {
        model::describe::Severity::Info => (SeverityNumber::Info, "INFO"),
        model::describe::Severity::Warn => (SeverityNumber::Warn, "WARN"),
    };
    let (trace_id, span_id): (&[u8], &[u8]) = match &record.trace {
        Some(t) => (&t.parent.trace_id, &t.parent.span_id),
        None => (&[], &[]),
    };
    wire::log_record(&wire::LogFields {
        time_unix_nano: record.time_unix_nano,
        observed_unix_nano,
        severity_number: number as i32,
        severity_text: text,
        body: &line.body,
        attributes: attrs,
        trace_id,
        span_id,
        event_name: line.event_name,
    })
}

/// The attributes of a record as the exporter sends them (the wire encoder's bytes, decoded).
#[cfg(test)]
pub fn attributes(record: &Record) -> Vec<KeyValue> {
    use prost::Message as _;
    let bytes = wire::span(&wire::SpanFields {
        trace_id: &[1; 16],
        span_id: &[1; 8],
        parent_span_id: &[],
        flags: 0,
        name: "t",
        kind: 1,
        time_unix_nano: 1,
        attributes: &record.attributes(),
        status: None,
    });
    opentelemetry_proto::tonic::trace::v1::Span::decode(bytes.as_slice())
        .expect("the wire encoder writes a Span prost decodes")
        .attributes
}

/// The spans of a record as the generated types, decoded from what is sent.
#[cfg(test)]
pub fn spans(record: &Record) -> Vec<opentelemetry_proto::tonic::trace::v1::Span> {
    use prost::Message as _;
    span_messages(record, &record.attributes())
        .iter()
        .map(|b| {
            opentelemetry_proto::tonic::trace::v1::Span::decode(b.as_slice())
                .expect("the wire encoder writes a Span prost decodes")
        })
        .collect()
}
