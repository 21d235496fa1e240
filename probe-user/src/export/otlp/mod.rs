//! The OTLP sink (opentelemetry-otlp 0.33, gRPC or HTTP/protobuf). The sink converts records
//! on the consumer's thread and puts them in bounded queues; an export task sends batches. A
//! collector that is down or slow costs at most the queues (`--otlp-queue-size` spans and as
//! many log records): a failed batch is retried with backoff while newer records wait, and
//! records that find a full queue are dropped and counted (`probe_otlp_dropped_total`).

pub mod convert;

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use opentelemetry::{
    InstrumentationScope, KeyValue,
    logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity},
};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::{
    Resource,
    logs::{LogBatch, LogExporter as _, SdkLogRecord, SdkLoggerProvider},
    trace::{SpanData, SpanExporter as _},
};
use thiserror::Error;
use tokio::sync::Notify;
use tracing::{info, warn};

use super::Sink;
use crate::{
    record::{Body, Record},
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

/// Both exporters of one protocol.
enum Exporters {
    Grpc(
        opentelemetry_otlp::SpanExporter,
        opentelemetry_otlp::LogExporter,
    ),
    Http(
        opentelemetry_otlp::SpanExporter,
        opentelemetry_otlp::LogExporter,
    ),
}

fn build(config: &OtlpConfig) -> Result<Exporters, OtlpError> {
    let endpoint = config.endpoint();
    let redactor = Redactor::new(config);
    let err = |source: opentelemetry_otlp::ExporterBuildError| OtlpError::Build {
        endpoint: config.shown.clone(),
        reason: redactor.clean(&source.to_string()),
    };
    let headers: HashMap<String, String> = config.headers.iter().cloned().collect();
    let mut exporters = match config.protocol {
        Protocol::Grpc => {
            let mut metadata = tonic::metadata::MetadataMap::new();
            for (k, v) in &headers {
                let (Ok(k), Ok(v)) = (
                    tonic::metadata::MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes()),
                    v.parse(),
                ) else {
                    return Err(OtlpError::Header(k.clone()));
                };
                metadata.insert(k, v);
            }
            Exporters::Grpc(
                opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(endpoint.clone())
                    .with_timeout(config.timeout)
                    .with_metadata(metadata.clone())
                    .build()
                    .map_err(err)?,
                opentelemetry_otlp::LogExporter::builder()
                    .with_tonic()
                    .with_endpoint(endpoint.clone())
                    .with_timeout(config.timeout)
                    .with_metadata(metadata)
                    .build()
                    .map_err(err)?,
            )
        }
        Protocol::HttpProtobuf => {
            let base = endpoint.trim_end_matches('/');
            Exporters::Http(
                opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                    .with_endpoint(format!("{base}/v1/traces"))
                    .with_timeout(config.timeout)
                    .with_headers(headers.clone())
                    .build()
                    .map_err(err)?,
                opentelemetry_otlp::LogExporter::builder()
                    .with_http()
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                    .with_endpoint(format!("{base}/v1/logs"))
                    .with_timeout(config.timeout)
                    .with_headers(headers)
                    .build()
                    .map_err(err)?,
            )
        }
    };
    match &mut exporters {
        Exporters::Grpc(s, l) | Exporters::Http(s, l) => {
            s.set_resource(&config.resource);
            l.set_resource(&config.resource);
        }
    }
    Ok(exporters)
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

    fn log_record(&self, record: &Record) -> SdkLogRecord {
        let logger = self.logs.logger("node-probe");
        let mut log = logger.create_log_record();
        let json = serde_json::to_value(record).unwrap_or_default();
        log.set_timestamp(convert::time(record.time_unix_nano));
        log.set_observed_timestamp(std::time::SystemTime::now());
        let (severity, body): (Severity, String) = match &record.body {
            Body::WasmOutput(w) => (
                match w.stream {
                    crate::record::Stream::Stdout => Severity::Info,
                    crate::record::Stream::Stderr => Severity::Warn,
                },
                w.text.clone(),
            ),
            Body::Loss(l) => (
                Severity::Warn,
                format!("{} events lost ({})", l.count, l.source.name()),
            ),
            _ => (Severity::Info, record.kind.to_owned()),
        };
        log.set_severity_number(severity);
        log.set_severity_text(severity.name());
        log.set_event_name(match record.kind {
            "wasm_output" => "wasm.output",
            "conntrack_settings" => "conntrack.settings",
            _ => "probe.loss",
        });
        log.set_body(AnyValue::String(body.into()));
        for kv in convert::attributes(&json) {
            let value = match kv.value {
                opentelemetry::Value::Bool(b) => AnyValue::Boolean(b),
                opentelemetry::Value::I64(i) => AnyValue::Int(i),
                opentelemetry::Value::F64(f) => AnyValue::Double(f),
                other => AnyValue::String(other.as_str().into_owned().into()),
            };
            log.add_attribute(kv.key, value);
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
        let log = convert::is_log(record).then(|| self.log_record(record));
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

/// Records per export call.
const BATCH: usize = 512;

/// Counts what the drain could not send and says so once (the last word on OTLP losses).
fn give_up(shared: &Shared, state: &AgentState, unsent: (u64, u64)) {
    let (s, l) = {
        let mut q = shared.queues.lock().unwrap_or_else(|e| e.into_inner());
        let counts = (q.spans.len() as u64, q.logs.len() as u64);
        q.spans.clear();
        q.logs.clear();
        counts
    };
    let (spans, logs) = (unsent.0 + s, unsent.1 + l);
    state.metrics.otlp_dropped("spans").inc_by(spans);
    state.metrics.otlp_dropped("logs").inc_by(logs);
    let total_spans = state.metrics.otlp_dropped("spans").get();
    let total_logs = state.metrics.otlp_dropped("logs").get();
    warn!(
        "otlp: shutdown: {spans} spans and {logs} log records could not be delivered before \
         the deadline (lost in total: {total_spans} spans, {total_logs} log records)"
    );
}

async fn export_loop(
    exporters: Exporters,
    shared: Arc<Shared>,
    state: Arc<AgentState>,
    redactor: Redactor,
) {
    let scope = InstrumentationScope::builder("node-probe").build();
    let mut backoff = Duration::from_millis(100);
    let mut failing = false;
    let mut drain_deadline = None;
    loop {
        let (spans, logs, closed) = {
            let mut q = shared.queues.lock().unwrap_or_else(|e| e.into_inner());
            let n = q.spans.len().min(BATCH);
            let spans: Vec<SpanData> = q.spans.drain(..n).collect();
            let n = q.logs.len().min(BATCH);
            let logs: Vec<SdkLogRecord> = q.logs.drain(..n).collect();
            (spans, logs, q.closed)
        };
        if closed && drain_deadline.is_none() {
            drain_deadline = Some(tokio::time::Instant::now() + shared.drain_for);
        }
        if spans.is_empty() && logs.is_empty() {
            if closed {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), shared.notify.notified()).await;
            continue;
        }
        let (span_count, log_count) = (spans.len() as u64, logs.len() as u64);
        let attempt = async {
            match &exporters {
                Exporters::Grpc(s, l) | Exporters::Http(s, l) => {
                    let mut first_err = None;
                    let mut unsent_spans = Vec::new();
                    if !spans.is_empty() {
                        let keep = spans.clone();
                        match s.export(spans).await {
                            Ok(()) => {
                                state.metrics.otlp_exported("spans").inc_by(span_count);
                            }
                            Err(e) => {
                                first_err = Some(e.to_string());
                                unsent_spans = keep;
                            }
                        }
                    }
                    let mut unsent_logs = Vec::new();
                    if !logs.is_empty() {
                        let pairs: Vec<(&SdkLogRecord, &InstrumentationScope)> =
                            logs.iter().map(|l| (l, &scope)).collect();
                        match l.export(LogBatch::new(&pairs)).await {
                            Ok(()) => {
                                state.metrics.otlp_exported("logs").inc_by(log_count);
                            }
                            Err(e) => {
                                first_err.get_or_insert(e.to_string());
                                unsent_logs = logs;
                            }
                        }
                    }
                    match first_err {
                        None => Ok(()),
                        Some(e) => Err((e, unsent_spans, unsent_logs)),
                    }
                }
            }
        };
        // While draining, an attempt (a black-holed collector holds it for --otlp-timeout)
        // may not outlast the deadline.
        let mut attempt = std::pin::pin!(attempt);
        if drain_deadline.is_none() {
            tokio::select! {
                r = &mut attempt => {
                    handled(r, &mut failing, &mut backoff, &shared, &state, &redactor, None).await;
                    continue;
                }
                () = shared.closing.notified() => {
                    drain_deadline = Some(tokio::time::Instant::now() + shared.drain_for);
                }
            }
        }
        let deadline = drain_deadline.unwrap_or_else(tokio::time::Instant::now);
        match tokio::time::timeout_at(deadline, attempt).await {
            Ok(r) => {
                if !handled(
                    r,
                    &mut failing,
                    &mut backoff,
                    &shared,
                    &state,
                    &redactor,
                    drain_deadline,
                )
                .await
                {
                    return;
                }
            }
            Err(_) => {
                give_up(&shared, &state, (span_count, log_count));
                return;
            }
        }
    }
}

/// What an export attempt's result does; false when the drain gave up.
async fn handled(
    result: Result<(), (String, Vec<SpanData>, Vec<SdkLogRecord>)>,
    failing: &mut bool,
    backoff: &mut Duration,
    shared: &Shared,
    state: &AgentState,
    redactor: &Redactor,
    drain_deadline: Option<tokio::time::Instant>,
) -> bool {
    match result {
        Ok(()) => {
            if *failing {
                info!("otlp: export works again");
                state.set_exporter_state("running", None);
            }
            *failing = false;
            *backoff = Duration::from_millis(100);
        }
        Err((e, spans, logs)) => {
            let e = redactor.clean(&e);
            if !*failing {
                warn!(
                    "otlp: export failed ({e}); retrying with backoff, newer records queue (bounded)"
                );
            }
            *failing = true;
            state.set_exporter_state("retrying", Some(format!("otlp: {e}")));
            if drain_deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                give_up(shared, state, (spans.len() as u64, logs.len() as u64));
                return false;
            }
            // Put the batch back in front; what no longer fits is dropped and counted.
            let mut dropped = (0u64, 0u64);
            {
                let mut q = shared.queues.lock().unwrap_or_else(|e| e.into_inner());
                for s in spans.into_iter().rev() {
                    if q.spans.len() < shared.capacity {
                        q.spans.push_front(s);
                    } else {
                        dropped.0 += 1;
                    }
                }
                for l in logs.into_iter().rev() {
                    if q.logs.len() < shared.capacity {
                        q.logs.push_front(l);
                    } else {
                        dropped.1 += 1;
                    }
                }
            }
            state.metrics.otlp_dropped("spans").inc_by(dropped.0);
            state.metrics.otlp_dropped("logs").inc_by(dropped.1);
            match drain_deadline {
                None => {
                    // Closing the sink (shutdown) ends the wait: the drain begins at once.
                    let _ = tokio::time::timeout(*backoff, shared.closing.notified()).await;
                }
                Some(deadline) => {
                    tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + *backoff))
                        .await;
                }
            }
            *backoff = (*backoff * 2).min(Duration::from_secs(5));
        }
    }
    true
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
