//! The OTLP sink: records encoded straight into OTLP protobuf (opentelemetry-proto), sent over
//! gRPC (tonic) or HTTP/protobuf (hyper) by an export task of our own, which does with every
//! answer what the OTLP specification says (see `export`). The sink converts records on the
//! consumer's thread and puts them in bounded queues (`--otlp-queue-size` records and
//! `--otlp-queue-bytes` per signal): a collector that is down or slow costs at most the
//! queues; records that find a queue full are dropped and counted
//! (`probe_otlp_dropped_total`).

mod budget;
pub mod convert;
mod export;
mod metrics;
mod transport;
mod wire;

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::{common::v1::KeyValue, resource::v1::Resource};
use prost::Message as _;
use thiserror::Error;
use tokio::sync::Notify;
use tracing::info;

use self::export::{Exporter, Item, export_loop};
use super::Sink;
use crate::{model::Record, status::AgentState};

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
    /// Records per queue at most, and their encoded bytes at most (per signal).
    pub queue_size: usize,
    pub queue_bytes: usize,
    /// Encoded bytes per export request at most, and how long the first waiting record waits
    /// for a batch to fill.
    pub batch_bytes: usize,
    pub batch_delay: Duration,
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

/// One signal's queue: encoded records with their size in a request, and the sum of the
/// sizes.
#[derive(Default)]
pub(super) struct Queue {
    items: VecDeque<Item>,
    bytes: usize,
}

/// What waits to be exported.
#[derive(Default)]
pub(super) struct Queues {
    spans: Queue,
    logs: Queue,
    /// The latest metrics snapshot not sent yet (one `Metric` per family): a newer one
    /// replaces it (cumulative counts: the newest says all).
    metrics: Queue,
    /// When the oldest record now waiting arrived (the batching delay counts from it).
    since: Option<Instant>,
    closed: bool,
}

pub(super) struct Shared {
    queues: Mutex<Queues>,
    notify: Notify,
    /// Notified once, when the sink closes (ends a retry backoff early).
    closing: Notify,
    /// Records per queue at most, and their encoded bytes at most.
    capacity: usize,
    max_bytes: usize,
    drain_for: Duration,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct OtlpSink {
    shared: Arc<Shared>,
    /// A record's attributes, encoded once for its span and its log record (reused).
    attrs: wire::AttrEncoder,
    ids: convert::Ids,
    state: Arc<AgentState>,
    /// A batch's bytes: the export task is woken when a queue holds that much.
    batch_bytes: usize,
    /// Records over the node's budget, until their summary.
    over_budget: budget::OverBudget,
}

impl OtlpSink {
    /// Builds the transport (a bad endpoint or header is an error naming it) and starts the
    /// export task.
    pub fn start(
        config: &OtlpConfig,
        state: Arc<AgentState>,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), OtlpError> {
        let transport = transport::Transport::new(config)?;
        let shared = Arc::new(Shared {
            queues: Mutex::new(Queues::default()),
            notify: Notify::new(),
            closing: Notify::new(),
            capacity: config.queue_size,
            max_bytes: config.queue_bytes,
            drain_for: config.drain_for,
        });
        info!(
            endpoint = config.shown,
            protocol = ?config.protocol,
            "otlp: exporting spans and logs"
        );
        let exporter = Exporter::new(
            transport,
            shared.clone(),
            state.clone(),
            Redactor::new(config),
            config.resource.encode_to_vec(),
            convert::scope().encode_to_vec(),
            config.batch_bytes,
            config.batch_delay,
        );
        let task = tokio::spawn(export_loop(exporter));
        Ok((
            Self {
                shared,
                attrs: wire::AttrEncoder::default(),
                ids: convert::Ids::default(),
                state,
                batch_bytes: config.batch_bytes,
                over_budget: budget::OverBudget::default(),
            },
            task,
        ))
    }

    fn push(&self, spans: Vec<Vec<u8>>, log: Option<Vec<u8>>) {
        let sized: Vec<Item> = spans.into_iter().map(|s| (wire::item_len(&s), s)).collect();
        let log = log.map(|l| (wire::item_len(&l), l));
        let (capacity, max_bytes) = (self.shared.capacity, self.shared.max_bytes);
        let (mut dropped_spans, mut dropped_logs) = (0u64, 0u64);
        let full = {
            let mut q = self.shared.lock();
            for (len, s) in sized {
                dropped_spans += u64::from(!q.spans.push(len, s, capacity, max_bytes));
            }
            if let Some((len, l)) = log {
                dropped_logs += u64::from(!q.logs.push(len, l, capacity, max_bytes));
            }
            q.since.get_or_insert_with(Instant::now);
            let full = |n: usize, bytes: usize| n >= export::BATCH || bytes >= self.batch_bytes;
            full(q.spans.items.len(), q.spans.bytes) || full(q.logs.items.len(), q.logs.bytes)
        };
        let m = &self.state.metrics;
        if dropped_spans > 0 {
            m.otlp_dropped("spans").inc_by(dropped_spans);
        }
        if dropped_logs > 0 {
            m.otlp_dropped("logs").inc_by(dropped_logs);
        }
        if full {
            self.shared.notify.notify_one();
        }
    }
}

impl Sink for OtlpSink {
    fn write(&mut self, record: &Record) -> std::io::Result<()> {
        if record.span.is_over_budget() {
            self.over_budget.add(record, Instant::now());
            return Ok(());
        }
        self.convert(record);
        Ok(())
    }

    /// Summaries of the records over the budget, once a second (checked at each burst's
    /// flush; the consumer flushes at least every loss interval).
    fn flush(&mut self) -> std::io::Result<()> {
        self.send_summaries(false);
        Ok(())
    }

    fn finish(&mut self, _deadline: Instant) {
        self.send_summaries(true);
    }

    /// The snapshot replaces the one not sent yet, and goes at the next send.
    fn metrics(&mut self, snapshot: &crate::model::MetricsSnapshot) {
        use prost::Message as _;
        let mut queue = Queue::default();
        for m in metrics::metrics(snapshot) {
            let m = m.encode_to_vec();
            let len = wire::item_len(&m);
            queue.bytes += len;
            queue.items.push_back((len, m));
        }
        {
            let mut q = self.shared.lock();
            q.metrics = queue;
            q.since.get_or_insert_with(Instant::now);
        }
        self.shared.notify.notify_one();
    }

    fn wants_metrics(&self) -> bool {
        true
    }
}

impl OtlpSink {
    fn send_summaries(&mut self, all: bool) {
        for summary in self.over_budget.take_due(Instant::now(), all) {
            self.convert(&summary);
        }
    }

    /// A record's spans and log record into the queues.
    fn convert(&mut self, record: &Record) {
        let Some(body) = record.body.describe() else {
            return;
        };
        let line = body.log();
        if line.is_none() && body.span_name().is_none() {
            return;
        }
        // Once for the span and the log record of a record that is both (Wasm lines).
        convert::encode_attributes(record, &mut self.attrs);
        let attrs = self.attrs.entries();
        let log = line
            .map(|line| convert::log_message(record, attrs, &line, crate::clock::unix_nanos_now()));
        let spans = convert::span_messages(record, attrs, &mut self.ids);
        if log.is_some() || !spans.is_empty() {
            self.push(spans, log);
        }
    }
}

impl Drop for OtlpSink {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
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
        ("service.name".to_owned(), service_name.to_owned()),
        ("host.name".into(), crate::enrich::default_node_name()),
        ("k8s.node.name".into(), node.to_owned()),
        ("os.type".into(), "linux".into()),
        ("service.version".into(), env!("CARGO_PKG_VERSION").into()),
    ];
    if let Some(c) = cluster {
        attrs.push(("k8s.cluster.name".into(), c.to_owned()));
    }
    if let Some(release) = crate::enrich::read_sysctl("kernel/osrelease") {
        attrs.push(("os.version".into(), release));
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
            attrs.push((key.into(), v));
        }
    }
    // Later keys win (OTEL_RESOURCE_ATTRIBUTES may set service.version, ...).
    for (k, v) in extra {
        attrs.retain(|(key, _)| key != k);
        attrs.push((k.clone(), v.clone()));
    }
    Resource {
        attributes: attrs
            .into_iter()
            .map(|(k, v)| convert::key_value(k, v))
            .collect::<Vec<KeyValue>>(),
        ..Resource::default()
    }
}

#[cfg(test)]
mod tests;
