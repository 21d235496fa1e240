//! OTLP protobuf written directly from a record's attributes: a span or log record becomes its
//! encoded message once, when it is queued, without building the generated structs (whose
//! String per attribute key and value, moves and repeated length computations were most of the
//! export's cost). A kind hands its attributes to an [`AttrEncoder`] (the model's
//! [`AttrSink`]), which writes them as protobuf at once: no owned copy of a key or a value,
//! formatted values (addresses) through one reused buffer. Requests are framed around the
//! queued messages. The field numbers are opentelemetry-proto's (trace.proto, logs.proto,
//! common.proto); the unit tests decode these bytes with prost into the generated types.

use std::fmt::Write as _;

use bytes::BufMut as _;
use prost::encoding::{WireType, encoded_len_varint, key_len};

use crate::model::{AttrRef, AttrSink};

/// A field's key; every tag here is below 16, one byte.
#[inline]
fn encode_key(tag: u32, wire_type: WireType, buf: &mut Vec<u8>) {
    debug_assert!(tag < 16);
    buf.push(((tag << 3) | wire_type as u32) as u8);
}

/// A varint; one byte below 128 (most lengths here).
#[inline]
fn encode_varint(v: u64, buf: &mut Vec<u8>) {
    if v < 0x80 {
        buf.push(v as u8);
    } else {
        prost::encoding::encode_varint(v, buf);
    }
}

/// Length of a length-delimited field of `len` bytes, tag included.
pub fn delimited_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

fn delimited(tag: u32, bytes: &[u8], buf: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(bytes.len() as u64, buf);
    buf.put_slice(bytes);
}

/// A bytes or string field, left out when empty (proto3).
fn opt_bytes(tag: u32, bytes: &[u8], buf: &mut Vec<u8>) {
    if !bytes.is_empty() {
        delimited(tag, bytes, buf);
    }
}

fn fixed64(tag: u32, v: u64, buf: &mut Vec<u8>) {
    if v != 0 {
        encode_key(tag, WireType::SixtyFourBit, buf);
        buf.put_u64_le(v);
    }
}

fn fixed32(tag: u32, v: u32, buf: &mut Vec<u8>) {
    if v != 0 {
        // Span.flags is field 16: a two-byte key.
        prost::encoding::encode_key(tag, WireType::ThirtyTwoBit, buf);
        buf.put_u32_le(v);
    }
}

fn varint(tag: u32, v: u64, buf: &mut Vec<u8>) {
    if v != 0 {
        encode_key(tag, WireType::Varint, buf);
        encode_varint(v, buf);
    }
}

/// An AnyValue message (its oneof is written even when it holds the default).
fn any_value(v: &AttrRef<'_>, buf: &mut Vec<u8>) {
    match *v {
        AttrRef::Str(s) => delimited(1, s.as_bytes(), buf),
        AttrRef::Bool(b) => {
            encode_key(2, WireType::Varint, buf);
            encode_varint(u64::from(b), buf);
        }
        AttrRef::Int(i) => {
            encode_key(3, WireType::Varint, buf);
            encode_varint(i as u64, buf);
        }
        AttrRef::Float(f) => {
            encode_key(4, WireType::SixtyFourBit, buf);
            buf.put_f64_le(f);
        }
        AttrRef::List(items) => {
            // ArrayValue { repeated AnyValue values = 1 }, each a string.
            let len: usize = items
                .iter()
                .map(|s| delimited_len(1, delimited_len(1, s.len())))
                .sum();
            encode_key(5, WireType::LengthDelimited, buf);
            encode_varint(len as u64, buf);
            for s in items {
                encode_key(1, WireType::LengthDelimited, buf);
                encode_varint(delimited_len(1, s.len()) as u64, buf);
                delimited(1, s.as_bytes(), buf);
            }
        }
        AttrRef::Display(_) => unreachable!("formatted before it is encoded"),
    }
}

fn any_value_len(v: &AttrRef<'_>) -> usize {
    match *v {
        AttrRef::Str(s) => delimited_len(1, s.len()),
        AttrRef::Bool(b) => key_len(2) + encoded_len_varint(u64::from(b)),
        AttrRef::Int(i) => key_len(3) + encoded_len_varint(i as u64),
        AttrRef::Float(_) => key_len(4) + 8,
        AttrRef::List(items) => delimited_len(
            5,
            items
                .iter()
                .map(|s| delimited_len(1, delimited_len(1, s.len())))
                .sum(),
        ),
        AttrRef::Display(_) => unreachable!("formatted before it is measured"),
    }
}

/// The field of `Span` that holds its attributes: the entries an [`AttrEncoder`] writes
/// (a log record's are moved to its own field by [`retag`]).
const SPAN_ATTRIBUTES: u32 = 9;
/// The field of `LogRecord` that holds its attributes.
const LOG_ATTRIBUTES: u32 = 6;

/// Attributes written as `repeated KeyValue` entries (each KeyValue { key = 1, AnyValue
/// value = 2 }) of a span, as a kind hands them over: formatted values go through one reused
/// buffer, nothing is allocated per attribute. Reused from record to record.
#[derive(Default)]
pub struct AttrEncoder {
    buf: Vec<u8>,
    scratch: String,
}

impl AttrEncoder {
    pub fn clear(&mut self) {
        self.buf.clear();
    }
    /// The entries written since the last [`clear`](Self::clear).
    pub fn entries(&self) -> &[u8] {
        &self.buf
    }
}

impl AttrSink for AttrEncoder {
    fn put(&mut self, key: &[&str], value: AttrRef<'_>) {
        let Self { buf, scratch } = self;
        let value = match value {
            AttrRef::Display(d) => {
                scratch.clear();
                let _ = write!(scratch, "{d}");
                AttrRef::Str(scratch)
            }
            v => v,
        };
        let key_len: usize = key.iter().map(|k| k.len()).sum();
        let value_len = any_value_len(&value);
        let key_field = if key_len == 0 {
            0
        } else {
            delimited_len(1, key_len)
        };
        let kv_len = key_field + delimited_len(2, value_len);
        buf.reserve(delimited_len(SPAN_ATTRIBUTES, kv_len));
        encode_key(SPAN_ATTRIBUTES, WireType::LengthDelimited, buf);
        encode_varint(kv_len as u64, buf);
        if key_len > 0 {
            encode_key(1, WireType::LengthDelimited, buf);
            encode_varint(key_len as u64, buf);
            for part in key {
                buf.put_slice(part.as_bytes());
            }
        }
        encode_key(2, WireType::LengthDelimited, buf);
        encode_varint(value_len as u64, buf);
        any_value(&value, buf);
    }
}

/// Copies a span's attribute entries into `buf` as the entries of field `tag`: each entry's
/// one-byte key changes, its length and bytes do not.
fn retag(entries: &[u8], tag: u32, buf: &mut Vec<u8>) {
    let mut rest = entries;
    while let Some((&key, after)) = rest.split_first() {
        debug_assert_eq!(u32::from(key) >> 3, SPAN_ATTRIBUTES);
        let mut len_bytes = after;
        let Ok(len) = prost::encoding::decode_varint(&mut len_bytes) else {
            return;
        };
        let prefix = after.len() - len_bytes.len();
        let Some(entry) = after.get(..prefix + len as usize) else {
            return;
        };
        encode_key(tag, WireType::LengthDelimited, buf);
        buf.put_slice(entry);
        rest = &after[entry.len()..];
    }
}

/// What a span is made of.
pub struct SpanFields<'a> {
    pub trace_id: &'a [u8],
    pub span_id: &'a [u8],
    pub parent_span_id: &'a [u8],
    pub flags: u32,
    pub name: &'a str,
    pub kind: i32,
    pub time_unix_nano: u64,
    /// Entries an [`AttrEncoder`] wrote.
    pub attributes: &'a [u8],
    /// (code, message) when the status is set.
    pub status: Option<(i32, &'a str)>,
    /// Other spans it links to (`Span.links`: trace and span ID only).
    pub links: &'a [crate::model::SpanRef],
}

/// An encoded `Span` message.
pub fn span(s: &SpanFields<'_>) -> Vec<u8> {
    let mut buf = Vec::with_capacity(
        96 + s.name.len() + s.attributes.len() + s.status.map_or(0, |(_, m)| 8 + m.len()),
    );
    opt_bytes(1, s.trace_id, &mut buf);
    opt_bytes(2, s.span_id, &mut buf);
    opt_bytes(4, s.parent_span_id, &mut buf);
    opt_bytes(5, s.name.as_bytes(), &mut buf);
    varint(6, s.kind as u64, &mut buf);
    fixed64(7, s.time_unix_nano, &mut buf);
    fixed64(8, s.time_unix_nano, &mut buf);
    buf.put_slice(s.attributes);
    for link in s.links {
        // Link { bytes trace_id = 1; bytes span_id = 2; }
        let len = delimited_len(1, link.trace_id.len()) + delimited_len(2, link.span_id.len());
        encode_key(13, WireType::LengthDelimited, &mut buf);
        encode_varint(len as u64, &mut buf);
        delimited(1, &link.trace_id, &mut buf);
        delimited(2, &link.span_id, &mut buf);
    }
    if let Some((code, message)) = s.status {
        // Status { string message = 2; StatusCode code = 3 }
        let len = if message.is_empty() {
            0
        } else {
            delimited_len(2, message.len())
        } + if code == 0 {
            0
        } else {
            key_len(3) + encoded_len_varint(code as u64)
        };
        encode_key(15, WireType::LengthDelimited, &mut buf);
        encode_varint(len as u64, &mut buf);
        opt_bytes(2, message.as_bytes(), &mut buf);
        varint(3, code as u64, &mut buf);
    }
    fixed32(16, s.flags, &mut buf);
    buf
}

/// What a log record is made of.
pub struct LogFields<'a> {
    pub time_unix_nano: u64,
    pub observed_unix_nano: u64,
    pub severity_number: i32,
    pub severity_text: &'a str,
    pub body: &'a str,
    /// Entries an [`AttrEncoder`] wrote (a span's: moved to the log record's field).
    pub attributes: &'a [u8],
    pub trace_id: &'a [u8],
    pub span_id: &'a [u8],
    pub event_name: &'a str,
}

/// An encoded `LogRecord` message.
pub fn log_record(l: &LogFields<'_>) -> Vec<u8> {
    let mut buf = Vec::with_capacity(
        96 + l.severity_text.len() + l.body.len() + l.attributes.len() + l.event_name.len(),
    );
    fixed64(1, l.time_unix_nano, &mut buf);
    varint(2, l.severity_number as u64, &mut buf);
    opt_bytes(3, l.severity_text.as_bytes(), &mut buf);
    // AnyValue body { string_value = 1 }
    encode_key(5, WireType::LengthDelimited, &mut buf);
    encode_varint(delimited_len(1, l.body.len()) as u64, &mut buf);
    delimited(1, l.body.as_bytes(), &mut buf);
    retag(l.attributes, LOG_ATTRIBUTES, &mut buf);
    opt_bytes(9, l.trace_id, &mut buf);
    opt_bytes(10, l.span_id, &mut buf);
    fixed64(11, l.observed_unix_nano, &mut buf);
    opt_bytes(12, l.event_name.as_bytes(), &mut buf);
    buf
}

/// What one encoded record adds to a request (its field key and length prefix included).
pub fn item_len(item: &[u8]) -> usize {
    delimited_len(2, item.len())
}

/// An export request (`ExportTraceServiceRequest` or `ExportLogsServiceRequest`: the same
/// shape) around encoded records: one resource, one scope, the records as its repeated field 2
/// (each with its [`item_len`]).
pub fn request(resource: &[u8], scope: &[u8], items: &[(usize, Vec<u8>)]) -> Vec<u8> {
    let items_len: usize = items.iter().map(|(len, _)| len).sum();
    let scoped_len = delimited_len(1, scope.len()) + items_len;
    let resourced_len = delimited_len(1, resource.len()) + delimited_len(2, scoped_len);
    let mut buf = Vec::with_capacity(delimited_len(1, resourced_len));
    encode_key(1, WireType::LengthDelimited, &mut buf);
    encode_varint(resourced_len as u64, &mut buf);
    delimited(1, resource, &mut buf);
    encode_key(2, WireType::LengthDelimited, &mut buf);
    encode_varint(scoped_len as u64, &mut buf);
    delimited(1, scope, &mut buf);
    for (_, item) in items {
        delimited(2, item, &mut buf);
    }
    buf
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::{
        collector::{logs::v1::ExportLogsServiceRequest, trace::v1::ExportTraceServiceRequest},
        common::v1::{AnyValue, ArrayValue, InstrumentationScope, KeyValue, any_value::Value},
        logs::v1::LogRecord,
        resource::v1::Resource,
        trace::v1::{Span, Status},
    };
    use prost::Message as _;

    use super::*;
    use crate::model::Attrs;

    fn attrs() -> Vec<u8> {
        let mut enc = AttrEncoder::default();
        let mut a = Attrs::new(&mut enc);
        a.ip("network.peer.address", "10.96.0.15".parse().unwrap());
        a.push("empty", AttrRef::Str(""));
        a.int("process.pid", 4242u32);
        a.signed("negative", -7);
        a.signed("zero", 0);
        a.float("probe.ratio", Some(7.5));
        a.bool("probe.core_dumped", Some(false));
        a.bool("yes", Some(true));
        a.list("probe.status", &["ASSURED".into(), String::new()]);
        a.list("none", &[]);
        a.prefixed(
            "k8s.pod.label.",
            "app",
            AttrRef::Str("x".repeat(200).as_str()),
        );
        a.int("big", u64::MAX);
        enc.entries().to_vec()
    }

    fn kv(key: &str, value: Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
            ..KeyValue::default()
        }
    }

    fn expected_attrs() -> Vec<KeyValue> {
        let s = |v: &str| AnyValue {
            value: Some(Value::StringValue(v.into())),
        };
        vec![
            kv(
                "network.peer.address",
                Value::StringValue("10.96.0.15".into()),
            ),
            kv("empty", Value::StringValue(String::new())),
            kv("process.pid", Value::IntValue(4242)),
            kv("negative", Value::IntValue(-7)),
            kv("zero", Value::IntValue(0)),
            kv("probe.ratio", Value::DoubleValue(7.5)),
            kv("probe.core_dumped", Value::BoolValue(false)),
            kv("yes", Value::BoolValue(true)),
            kv(
                "probe.status",
                Value::ArrayValue(ArrayValue {
                    values: vec![s("ASSURED"), s("")],
                }),
            ),
            kv("none", Value::ArrayValue(ArrayValue { values: Vec::new() })),
            kv("k8s.pod.label.app", Value::StringValue("x".repeat(200))),
            kv("big", Value::DoubleValue(u64::MAX as f64)),
        ]
    }

    #[test]
    fn a_span_decodes_to_what_prost_would_have_sent() {
        let a = attrs();
        let bytes = span(&SpanFields {
            trace_id: &[7; 16],
            span_id: &[8; 8],
            parent_span_id: &[9; 8],
            flags: 0x301,
            name: "tcp.reset.sent",
            kind: 1,
            time_unix_nano: 1_700_000_000_123_456_789,
            attributes: &a,
            status: Some((2, "out of memory")),
            links: &[crate::model::SpanRef {
                trace_id: [3; 16],
                span_id: [4; 8],
            }],
        });
        let expected = Span {
            trace_id: vec![7; 16],
            span_id: vec![8; 8],
            parent_span_id: vec![9; 8],
            flags: 0x301,
            name: "tcp.reset.sent".into(),
            kind: 1,
            start_time_unix_nano: 1_700_000_000_123_456_789,
            end_time_unix_nano: 1_700_000_000_123_456_789,
            attributes: expected_attrs(),
            status: Some(Status {
                message: "out of memory".into(),
                code: 2,
            }),
            links: vec![opentelemetry_proto::tonic::trace::v1::span::Link {
                trace_id: vec![3; 16],
                span_id: vec![4; 8],
                ..Default::default()
            }],
            ..Span::default()
        };
        assert_eq!(Span::decode(bytes.as_slice()).unwrap(), expected);
        // Byte for byte what prost writes for the same message.
        assert_eq!(bytes, expected.encode_to_vec());
        let plain = span(&SpanFields {
            trace_id: &[7; 16],
            span_id: &[8; 8],
            parent_span_id: &[],
            flags: 0x101,
            name: "n",
            kind: 1,
            time_unix_nano: 5,
            attributes: &[],
            status: None,
            links: &[],
        });
        let decoded = Span::decode(plain.as_slice()).unwrap();
        assert!(decoded.parent_span_id.is_empty() && decoded.status.is_none());
    }

    #[test]
    fn a_log_record_and_requests_decode() {
        let a = attrs();
        let log = log_record(&LogFields {
            time_unix_nano: 11,
            observed_unix_nano: 12,
            severity_number: 13,
            severity_text: "WARN",
            body: "héllo",
            attributes: &a,
            trace_id: &[1; 16],
            span_id: &[2; 8],
            event_name: "wasm.output",
        });
        let expected = LogRecord {
            time_unix_nano: 11,
            observed_time_unix_nano: 12,
            severity_number: 13,
            severity_text: "WARN".into(),
            body: Some(AnyValue {
                value: Some(Value::StringValue("héllo".into())),
            }),
            attributes: expected_attrs(),
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            event_name: "wasm.output".into(),
            ..LogRecord::default()
        };
        assert_eq!(LogRecord::decode(log.as_slice()).unwrap(), expected);

        let resource = Resource {
            attributes: vec![kv("service.name", Value::StringValue("node-probe".into()))],
            ..Resource::default()
        };
        let scope = InstrumentationScope {
            name: "node-probe".into(),
            ..InstrumentationScope::default()
        };
        let items = vec![(item_len(&log), log.clone()), (item_len(&log), log)];
        let body = request(&resource.encode_to_vec(), &scope.encode_to_vec(), &items);
        let req = ExportLogsServiceRequest::decode(body.as_slice()).unwrap();
        assert_eq!(req.resource_logs.len(), 1);
        let rl = &req.resource_logs[0];
        assert_eq!(rl.resource.as_ref(), Some(&resource));
        assert_eq!(rl.scope_logs[0].scope.as_ref(), Some(&scope));
        assert_eq!(
            rl.scope_logs[0].log_records,
            vec![expected.clone(), expected]
        );
        // The trace request has the same shape.
        let s = span(&SpanFields {
            trace_id: &[7; 16],
            span_id: &[8; 8],
            parent_span_id: &[],
            flags: 1,
            name: "x",
            kind: 1,
            time_unix_nano: 1,
            attributes: &a,
            status: None,
            links: &[],
        });
        let body = request(
            &resource.encode_to_vec(),
            &scope.encode_to_vec(),
            &[(item_len(&s), s)],
        );
        let req = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
        assert_eq!(req.resource_spans[0].scope_spans[0].spans[0].name, "x");
    }
}
