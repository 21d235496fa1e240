//! How a kind describes itself to the renderers: its terminal line, its OTLP span name, layer,
//! status and typed attributes, or the log record it becomes. The terminal and OTLP sinks
//! render every kind through [`Describe`] and name none; a new kind implements it next to its
//! type (and travels as [`Body::Other`](super::Body::Other) when it is not one of the built-in
//! variants), so no renderer changes.

use std::{any::Any, borrow::Cow, fmt, net::IpAddr};

use serde::Serialize;

use super::Common;

/// A typed attribute value (OTLP's scalar and string-array values) as a kind hands it over,
/// borrowed: a sink writes it where it goes (the OTLP encoder: straight into protobuf)
/// without an owned copy in between.
#[derive(Clone, Copy)]
pub enum AttrRef<'a> {
    Str(&'a str),
    /// Text the sink formats (an address, a number shown as text).
    Display(&'a dyn fmt::Display),
    Int(i64),
    Float(f64),
    Bool(bool),
    List(&'a [String]),
}

/// Where attributes go. `key` is the concatenation of its parts (a label's prefix and its
/// name), so no key is built as a `String`.
pub trait AttrSink {
    fn put(&mut self, key: &[&str], value: AttrRef<'_>);
}

/// A record's attributes in the order they are added, written into a sink; `None` values are
/// left out.
pub struct Attrs<'s>(&'s mut dyn AttrSink);

impl<'s> Attrs<'s> {
    pub fn new(sink: &'s mut dyn AttrSink) -> Self {
        Self(sink)
    }
    pub fn push(&mut self, key: &str, value: AttrRef<'_>) {
        self.0.put(&[key], value);
    }
    /// `key` made of `prefix` and `name` (`k8s.pod.label.<name>`).
    pub fn prefixed(&mut self, prefix: &str, name: &str, value: AttrRef<'_>) {
        self.0.put(&[prefix, name], value);
    }
    pub fn str(&mut self, key: &str, value: &str) {
        self.push(key, AttrRef::Str(value));
    }
    pub fn opt_str(&mut self, key: &str, value: Option<&str>) {
        if let Some(v) = value {
            self.str(key, v);
        }
    }
    /// A value shown as text (formatted by the sink, into a reused buffer).
    pub fn display(&mut self, key: &str, value: impl fmt::Display) {
        self.push(key, AttrRef::Display(&value));
    }
    pub fn ip(&mut self, key: &str, value: IpAddr) {
        self.display(key, value);
    }
    pub fn opt_ip(&mut self, key: &str, value: Option<IpAddr>) {
        if let Some(v) = value {
            self.ip(key, v);
        }
    }
    pub fn int(&mut self, key: &str, value: impl Into<u64>) {
        let v: u64 = value.into();
        self.push(
            key,
            i64::try_from(v).map_or(AttrRef::Float(v as f64), AttrRef::Int),
        );
    }
    pub fn opt_int<T: Into<u64>>(&mut self, key: &str, value: Option<T>) {
        if let Some(v) = value {
            self.int(key, v);
        }
    }
    pub fn signed(&mut self, key: &str, value: i64) {
        self.push(key, AttrRef::Int(value));
    }
    pub fn float(&mut self, key: &str, value: Option<f64>) {
        if let Some(v) = value {
            self.push(key, AttrRef::Float(v));
        }
    }
    pub fn bool(&mut self, key: &str, value: Option<bool>) {
        if let Some(v) = value {
            self.push(key, AttrRef::Bool(v));
        }
    }
    pub fn list(&mut self, key: &str, value: &[String]) {
        self.push(key, AttrRef::List(value));
    }
    /// A JSON scalar (sysctl values): numbers stay numbers.
    pub fn json(&mut self, key: &str, value: &serde_json::Value) {
        let v = match value {
            serde_json::Value::Null => return,
            serde_json::Value::Bool(b) => AttrRef::Bool(*b),
            serde_json::Value::Number(n) => match (n.as_i64(), n.as_f64()) {
                (Some(i), _) => AttrRef::Int(i),
                (None, Some(f)) => AttrRef::Float(f),
                (None, None) => return,
            },
            serde_json::Value::String(s) => AttrRef::Str(s),
            other => AttrRef::Display(other),
        };
        self.push(key, v);
    }
}

/// How loud a terminal line is (the terminal picks the colours).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    Dim,
    Warn,
    Alarm,
    Notice,
}

/// A terminal line after its timestamp: a tag (coloured by tone) and the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub tag: String,
    pub tone: Tone,
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Info,
    Warn,
}

/// A kind that is exported as an OTLP log record rather than a span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub event_name: &'static str,
    pub severity: Severity,
    pub body: String,
}

/// What every written kind tells the renderers. Internal kinds (joined into others, never
/// written) have no `Describe`.
pub trait Describe {
    /// The terminal line; `common` has the task, namespace and cgroup.
    fn line(&self, common: &Common) -> Line;
    /// The layer of the isolation stack the record describes.
    fn layer(&self) -> &'static str {
        "node"
    }
    /// The TCP flow the record is about, when it is about one: the stages that join records
    /// by connection (trace context, conntrack findings, the agent's own traffic, the pod of
    /// an address) ask this, never the kind.
    fn flow(&self) -> Option<super::Flow> {
        None
    }
    /// Whether the record's task (`Common::pid`/`tid`) did what it describes (a core signal's
    /// target, a Wasm runtime's write), so that the request the task was serving then is the
    /// record's. Not for what the kernel does for a connection in whichever task runs (a
    /// reset, a drop): those are tied by their `flow`.
    fn by_task(&self) -> bool {
        false
    }
    /// Another task that caused it (a signal's sender: pid, tid), whose request it joins when
    /// its own task was serving none.
    fn sender_task(&self) -> Option<(u32, u32)> {
        None
    }
    /// The span's name, when the kind is a span.
    fn span_name(&self) -> Option<Cow<'static, str>> {
        None
    }
    /// An error status message for the span, when the event is a failure.
    fn span_error(&self) -> Option<String> {
        None
    }
    /// The log record, when the kind is one.
    fn log(&self) -> Option<LogLine> {
        None
    }
    /// The records this one joins (a finding's evidence): child spans of its span.
    fn evidence(&self) -> Vec<&super::Record> {
        Vec::new()
    }
    /// Other records' spans this one's span links to (a summary's full records).
    fn links(&self) -> &[super::SpanRef] {
        &[]
    }
    /// The kind's own attributes, semantic-convention names where one exists.
    fn attributes(&self, out: &mut Attrs);
}

/// `task=comm[pid]` or `-`.
pub fn task(common: &Common) -> String {
    match (&common.comm, common.pid) {
        (Some(comm), Some(pid)) => format!("{comm}[{pid}]"),
        _ => "-".into(),
    }
}

/// An optional value, `-` when unknown.
pub fn opt<T: fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "-".into(), ToString::to_string)
}

/// `addr:port`, IPv6 in brackets.
pub fn endpoint(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// The name of a kind that is not a built-in variant of [`Body`](super::Body).
pub trait KindName {
    const KIND: &'static str;
}

/// A kind carried as [`Body::Other`](super::Body::Other): anything that describes itself,
/// serializes (its JSON keys) and clones. Implemented for every such type.
pub trait OtherKind: Describe + fmt::Debug + Send + Sync + 'static {
    fn kind(&self) -> &'static str;
    fn json(&self) -> serde_json::Value;
    /// Its keys as a JSON object, written straight into `out` in its struct's order (the JSON
    /// output's path: no `Value` per record); false if it failed.
    fn json_into(&self, out: &mut Vec<u8>) -> bool;
    fn clone_box(&self) -> Box<dyn OtherKind>;
    fn as_any(&self) -> &dyn Any;
}

impl<T> OtherKind for T
where
    T: KindName + Describe + Serialize + Clone + fmt::Debug + Send + Sync + 'static,
{
    fn kind(&self) -> &'static str {
        T::KIND
    }
    fn json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
    fn json_into(&self, out: &mut Vec<u8>) -> bool {
        serde_json::to_writer(out, self).is_ok()
    }
    fn clone_box(&self) -> Box<dyn OtherKind> {
        Box::new(self.clone())
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The box [`Body::Other`](super::Body::Other) holds: cloned, compared and serialized through
/// the kind's own JSON form.
#[derive(Debug)]
pub struct Other(pub Box<dyn OtherKind>);

impl Other {
    pub fn new(kind: impl OtherKind) -> Self {
        Self(Box::new(kind))
    }
    /// The concrete kind, for the stage that handles it.
    pub fn downcast_ref<T: 'static>(&self) -> Option<&T> {
        self.0.as_any().downcast_ref()
    }
}

impl Clone for Other {
    fn clone(&self) -> Self {
        Self(self.0.clone_box())
    }
}

impl PartialEq for Other {
    fn eq(&self, other: &Self) -> bool {
        self.0.kind() == other.0.kind() && self.0.json() == other.0.json()
    }
}

impl Serialize for Other {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.json().serialize(s)
    }
}
