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
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value::Value},
    logs::v1::SeverityNumber,
    trace::v1::{span::SpanKind, status::StatusCode},
};

use rand::{Rng as _, SeedableRng as _, rngs::SmallRng};

use super::wire::{self, AttrEncoder};
use crate::model::{self, Attrs, Record, describe::LogLine};

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

/// A string attribute (the resource's, built once).
pub fn key_value(key: String, value: String) -> KeyValue {
    KeyValue {
        key,
        value: Some(AnyValue {
            value: Some(Value::StringValue(value)),
        }),
        ..KeyValue::default()
    }
}

/// Random trace and span IDs: a small fast generator seeded from the OS (IDs need to be
/// unique, not secret).
pub struct Ids(SmallRng);

impl Default for Ids {
    fn default() -> Self {
        Self(SmallRng::from_os_rng())
    }
}

impl Ids {
    /// A random ID that is not all zeroes (an all-zero ID is invalid in OTLP).
    fn id<const N: usize>(&mut self) -> [u8; N] {
        loop {
            let mut id = [0u8; N];
            self.0.fill(&mut id[..]);
            if id != [0; N] {
                return id;
            }
        }
    }
}

/// A record's [`Record::attributes`] as span attribute entries, in `enc` (cleared first).
pub fn encode_attributes(record: &Record, enc: &mut AttrEncoder) {
    enc.clear();
    record.attributes(&mut Attrs::new(enc));
}

/// The spans of a record, encoded: one for an event (a parent and its evidence for a
/// finding), none for kinds that are only log records or internal. `attrs` are the record's
/// attributes from [`encode_attributes`] (encoded once for its span and its log record).
pub fn span_messages(record: &Record, attrs: &[u8], ids: &mut Ids) -> Vec<Vec<u8>> {
    let Some(body) = record.body.describe() else {
        return Vec::new();
    };
    let Some(name) = body.span_name() else {
        return Vec::new();
    };
    // Inside the request's trace, as a child of the client's span, when the connection
    // carried a traceparent; a trace of its own otherwise.
    // The IDs chosen before the sinks (a metric's exemplar names the same span); drawn here
    // for records made after them.
    let (own_trace, head_id) = record.span_ids().unwrap_or_else(|| (ids.id(), ids.id()));
    let (trace_id, parent, flags): ([u8; 16], &[u8], u32) = match &record.trace {
        Some(t) => (
            t.parent.trace_id,
            &t.parent.span_id,
            SAMPLED | HAS_IS_REMOTE | IS_REMOTE,
        ),
        None => (own_trace, &[], SAMPLED | HAS_IS_REMOTE),
    };
    let error = body.span_error();
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
        links: body.links(),
    })];
    let mut ev_attrs = AttrEncoder::default();
    for ev in body.evidence() {
        let Some(name) = ev.body.describe().and_then(|b| b.span_name()) else {
            continue;
        };
        encode_attributes(ev, &mut ev_attrs);
        out.push(wire::span(&wire::SpanFields {
            trace_id: &trace_id,
            span_id: &ids.id::<8>(),
            parent_span_id: &head_id,
            flags: SAMPLED | HAS_IS_REMOTE,
            name: &name,
            kind: SpanKind::Internal as i32,
            time_unix_nano: ev.time_unix_nano,
            attributes: ev_attrs.entries(),
            status: None,
            links: &[],
        }));
    }
    out
}

fn body_has_span(record: &Record) -> bool {
    record
        .body
        .describe()
        .is_some_and(|b| b.span_name().is_some())
}

/// The log record of a record that has one (Wasm lines, findings, settings, losses), encoded;
/// `attrs` are the record's from [`encode_attributes`].
pub fn log_message(
    record: &Record,
    attrs: &[u8],
    line: &LogLine,
    observed_unix_nano: u64,
) -> Vec<u8> {
    let (number, text) = match line.severity {
        model::describe::Severity::Info => (SeverityNumber::Info, "INFO"),
        model::describe::Severity::Warn => (SeverityNumber::Warn, "WARN"),
    };
    // Inside the request's trace at the client's span; else at the record's own span (a Wasm
    // line's log record and its span link both ways in Grafana).
    let own = record.span_ids();
    let (trace_id, span_id): (&[u8], &[u8]) = match (&record.trace, &own) {
        (Some(t), _) => (&t.parent.trace_id, &t.parent.span_id),
        (None, Some((trace, span))) if body_has_span(record) => (trace, span),
        (None, _) => (&[], &[]),
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
    let mut enc = AttrEncoder::default();
    encode_attributes(record, &mut enc);
    let bytes = wire::span(&wire::SpanFields {
        trace_id: &[1; 16],
        span_id: &[1; 8],
        parent_span_id: &[],
        flags: 0,
        name: "t",
        kind: 1,
        time_unix_nano: 1,
        attributes: enc.entries(),
        status: None,
        links: &[],
    });
    opentelemetry_proto::tonic::trace::v1::Span::decode(bytes.as_slice())
        .expect("the wire encoder writes a Span prost decodes")
        .attributes
}

/// The spans of a record as the generated types, decoded from what is sent.
#[cfg(test)]
pub fn spans(record: &Record) -> Vec<opentelemetry_proto::tonic::trace::v1::Span> {
    use prost::Message as _;
    let mut enc = AttrEncoder::default();
    encode_attributes(record, &mut enc);
    span_messages(record, enc.entries(), &mut Ids::default())
        .iter()
        .map(|b| {
            opentelemetry_proto::tonic::trace::v1::Span::decode(b.as_slice())
                .expect("the wire encoder writes a Span prost decodes")
        })
        .collect()
}
