//! The OTLP sink (opentelemetry-otlp 0.33, gRPC or HTTP/protobuf). The sink converts records
//! on the consumer's thread and puts them in bounded queues; an export task sends batches. A
//! collector that is down or slow costs at most the queues (`--otlp-queue-size` spans and as
//! many log records): a failed batch is retried with backoff while newer records wait, and
//! records that find a full queue are dropped and counted (`probe_otlp_dropped_total`).

pub mod convert;
mod export;

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use opentelemetry::{
    InstrumentationScope, KeyValue,
    logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity},
};
use opentelemetry_sdk::{
    Resource,
    logs::{SdkLogRecord, SdkLoggerProvider},
    trace::SpanData,
};
use thiserror::Error;
use tokio::sync::Notify;
use tracing::info;

use self::export::{build, export_loop};
use super::Sink;
use crate::{
    model::{self, AttrValue, Record, describe::LogLine},
    status::AgentState,
};

#[derive(Debug, Error)]
pub enum OtlpError {
    /// Endpoint and reason with every secret of the configuration redacted.
    #[error("OTLP endpoint {endpoint}: {reason}")]
    Build { endpoint: String, reason: String },
    #[error("OTLP header {0:?}: its value cannot be sent as gRPC metadata")]
    Header(String),
}

/// Takes the configuration's secrets (the endpoint's userinfo and query, header values) out
/// of any text before it is logged or shown: exporters' errors may quote what they were given.
#[derive(Debug, Clone, Default)]
pub struct Redactor(Vec<String>);

impl Redactor {
    pub fn new(config: &OtlpConfig) -> Self {
        let mut secrets: Vec<String> = config.headers.iter().map(|(_, v)| v.clone()).collect();
        if let Some(url) = &config.endpoint {
            let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
            if let Some((_, query)) = rest.split_once('?') {
                secrets.push(query.to_owned());
            }
            let authority = rest.split(['/', '?']).next().unwrap_or_default();
            if let Some((userinfo, _)) = authority.rsplit_once('@') {
                secrets.push(userinfo.to_owned());
                secrets.extend(userinfo.split(':').map(str::to_owned));
            }
        }
        secrets.retain(|s| !s.is_empty());
        // Longest first: a userinfo before the password inside it.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Self(secrets)
    }

    pub fn clean(&self, text: &str) -> String {
        self.0.iter().fold(text.to_owned(), |t, secret| {
            t.replace(secret.as_str(), "<redacted>")
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    Grpc,
    #[value(name = "http/protobuf")]
    HttpProtobuf,
}

#[derive(Debug, Clone)]
pub struct OtlpConfig {
    /// The URL as given (may carry userinfo: never log it; `shown` is what may be shown).
    pub endpoint: Option<String>,
    /// The endpoint without its secrets.
    pub shown: String,
    pub protocol: Protocol,
    /// Header names (lowercase, checked at parse time) and values (secret).
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
    pub queue_size: usize,
    /// How long what is queued may still be sent once the sink is closed (at shutdown):
    /// export attempts and retries stop at this deadline, and what is left is counted as
    /// dropped and said in one line.
    pub drain_for: Duration,
    pub resource: Resource,
}

/// Where the collector is when `--otlp-endpoint` is not given.
pub fn default_endpoint(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Grpc => "http://localhost:4317",
        Protocol::HttpProtobuf => "http://localhost:4318",
    }
}

impl OtlpConfig {
    pub fn endpoint(&self) -> String {
        self.endpoint
            .clone()
            .unwrap_or_else(|| default_endpoint(self.protocol).to_owned())
    }
}

/// What waits to be exported.
#[derive(Default)]
struct Queues {
    spans: VecDeque<SpanData>,
    logs: VecDeque<SdkLogRecord>,
    closed: bool,
}

struct Shared {
    queues: Mutex<Queues>,
    notify: Notify,
    /// Notified once, when the sink closes (ends a retry backoff early).
    closing: Notify,
    capacity: usize,
    drain_for: Duration,
}

pub struct OtlpSink {
    shared: Arc<Shared>,
    scope: InstrumentationScope,
    logs: SdkLoggerProvider,
    state: Arc<AgentState>,
}

impl OtlpSink {
    /// Builds the exporters (a bad endpoint or header is an error naming it) and starts the
    /// export task.
    pub fn start(
        config: &OtlpConfig,
        state: Arc<AgentState>,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), OtlpError> {
        let exporters = build(config)?;
        let shared = Arc::new(Shared {
            queues: Mutex::new(Queues::default()),
            notify: Notify::new(),
            closing: Notify::new(),
            capacity: config.queue_size,
            drain_for: config.drain_for,
        });
        info!(
            endpoint = config.shown,
            protocol = ?config.protocol,
            "otlp: exporting spans and logs"
        );
        let task = tokio::spawn(export_loop(
            exporters,
            shared.clone(),
            state.clone(),
            Redactor::new(config),
        ));
        Ok((
            Self {
                shared,
                scope: InstrumentationScope::builder("node-probe")
                    .with_version(env!("CARGO_PKG_VERSION"))
                    .build(),
                logs: SdkLoggerProvider::builder().build(),
                state,
            },
            task,
        ))
    }

    fn log_record(&self, record: &Record, line: LogLine) -> SdkLogRecord {
        let logger = self.logs.logger("node-probe");
        let mut log = logger.create_log_record();
        log.set_timestamp(convert::time(record.time_unix_nano));
        log.set_observed_timestamp(std::time::SystemTime::now());
        let severity = match line.severity {
            model::describe::Severity::Info => Severity::Info,
            model::describe::Severity::Warn => Severity::Warn,
        };
        log.set_severity_number(severity);
        log.set_severity_text(severity.name());
        log.set_event_name(line.event_name);
        log.set_body(AnyValue::String(line.body.into()));
        for (key, value) in record.attributes().0 {
            let value = match value {
                AttrValue::Bool(b) => AnyValue::Boolean(b),
                AttrValue::Int(i) => AnyValue::Int(i),
                AttrValue::Float(f) => AnyValue::Double(f),
                AttrValue::Str(s) => AnyValue::String(s.into()),
                AttrValue::List(items) => AnyValue::ListAny(Box::new(
                    items
                        .into_iter()
                        .map(|s| AnyValue::String(s.into()))
                        .collect(),
                )),
            };
            log.add_attribute(key, value);
        }
        log
    }

    fn push(&self, spans: Vec<SpanData>, log: Option<SdkLogRecord>) {
        let mut q = self.shared.queues.lock().unwrap_or_else(|e| e.into_inner());
        let (mut dropped_spans, mut dropped_logs) = (0u64, 0u64);
        for s in spans {
            if q.spans.len() < self.shared.capacity {
                q.spans.push_back(s);
            } else {
                dropped_spans += 1;
            }
        }
        if let Some(l) = log {
            if q.logs.len() < self.shared.capacity {
                q.logs.push_back(l);
            } else {
                dropped_logs += 1;
            }
        }
        drop(q);
        let m = &self.state.metrics;
        if dropped_spans > 0 {
            m.otlp_dropped("spans").inc_by(dropped_spans);
        }
        if dropped_logs > 0 {
            m.otlp_dropped("logs").inc_by(dropped_logs);
        }
        self.shared.notify.notify_one();
    }
}

impl Sink for OtlpSink {
    fn write(&mut self, record: &Record) -> std::io::Result<()> {
        let log = record
            .body
            .describe()
            .and_then(|b| b.log())
            .map(|line| self.log_record(record, line));
        let spans = convert::spans(record, &self.scope);
        if log.is_some() || !spans.is_empty() {
            self.push(spans, log);
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for OtlpSink {
    fn drop(&mut self) {
        self.shared
            .queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .closed = true;
        self.shared.notify.notify_one();
        self.shared.closing.notify_one();
    }
}

/// The resource: service.name, host.name, k8s.node.name, k8s.cluster.name, os and kernel,
/// and the node settings that explain findings (core_pattern, conntrack timeouts).
pub fn resource(
    service_name: &str,
    node: &str,
    cluster: Option<&str>,
    extra: &[(String, String)],
) -> Resource {
    let mut attrs = vec![
        KeyValue::new("host.name", crate::enrich::default_node_name()),
        KeyValue::new("k8s.node.name", node.to_owned()),
        KeyValue::new("os.type", "linux"),
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
    ];
    if let Some(c) = cluster {
        attrs.push(KeyValue::new("k8s.cluster.name", c.to_owned()));
    }
    if let Some(release) = crate::enrich::read_sysctl("kernel/osrelease") {
        attrs.push(KeyValue::new("os.version", release));
    }
    for (name, key) in [
        ("kernel/core_pattern", "linux.kernel.core_pattern"),
        (
            "net/netfilter/nf_conntrack_tcp_timeout_established",
            "linux.net.netfilter.nf_conntrack_tcp_timeout_established",
        ),
        (
            "net/netfilter/nf_conntrack_max",
            "linux.net.netfilter.nf_conntrack_max",
        ),
    ] {
        if let Some(v) = crate::enrich::read_sysctl(name) {
            attrs.push(KeyValue::new(key, v));
        }
    }
    for (k, v) in extra {
        attrs.push(KeyValue::new(k.clone(), v.clone()));
    }
    Resource::builder()
        .with_service_name(service_name.to_owned())
        .with_attributes(attrs)
        .build()
}

#[cfg(test)]
mod tests;
