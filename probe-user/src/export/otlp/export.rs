//! The export side of the OTLP sink: the exporters of a protocol, and the task that sends
//! queued batches, retries with backoff while the collector fails, and at shutdown drains
//! within its deadline, counting what it could not send.

use std::{collections::HashMap, sync::Arc, time::Duration};

use opentelemetry::InstrumentationScope;
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::{
    logs::{LogBatch, LogExporter as _, SdkLogRecord},
    trace::{SpanData, SpanExporter as _},
};
use tracing::{info, warn};

use super::{OtlpConfig, OtlpError, Protocol, Redactor, Shared};
use crate::status::AgentState;

/// Both exporters of one protocol.
pub(super) enum Exporters {
    Grpc(
        opentelemetry_otlp::SpanExporter,
        opentelemetry_otlp::LogExporter,
    ),
    Http(
        opentelemetry_otlp::SpanExporter,
        opentelemetry_otlp::LogExporter,
    ),
}

pub(super) fn build(config: &OtlpConfig) -> Result<Exporters, OtlpError> {
    let endpoint = config.endpoint();
    let redactor = Redactor::new(config);
    let err = |source: opentelemetry_otlp::ExporterBuildError| OtlpError::Build {
        endpoint: config.shown.clone(),
        reason: redactor.clean(&source.to_string()),
    };
    let headers: HashMap<String, String> = config.headers.iter().cloned().collect();
    // https:// verifies the collector against the node's CA bundle (rustls-native-certs:
    // SSL_CERT_FILE, SSL_CERT_DIR, else the system's store; the image sets SSL_CERT_FILE).
    let tls = endpoint.starts_with("https://");
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
            let tls_config = || {
                tonic::transport::ClientTlsConfig::new()
                    .with_native_roots()
                    .assume_http2(true)
            };
            let mut spans = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .with_timeout(config.timeout)
                .with_metadata(metadata.clone());
            let mut logs = opentelemetry_otlp::LogExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .with_timeout(config.timeout)
                .with_metadata(metadata);
            if tls {
                spans = spans.with_tls_config(tls_config());
                logs = logs.with_tls_config(tls_config());
            }
            Exporters::Grpc(spans.build().map_err(err)?, logs.build().map_err(err)?)
        }
        Protocol::HttpProtobuf => {
            let base = endpoint.trim_end_matches('/');
            if tls {
                let connector = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_native_roots()
                    .map_err(|e| OtlpError::Build {
                        endpoint: config.shown.clone(),
                        reason: format!("no CA certificates for https:// ({e})"),
                    })?
                    .https_only()
                    .enable_http1()
                    .build();
                let client =
                    opentelemetry_http::hyper::HyperClient::new(connector, config.timeout, None);
                http_exporters(client, base, config, headers).map_err(err)?
            } else {
                let client = opentelemetry_http::hyper::HyperClient::with_default_connector(
                    config.timeout,
                    None,
                );
                http_exporters(client, base, config, headers).map_err(err)?
            }
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

/// Both HTTP/protobuf exporters on one client (plain or TLS).
fn http_exporters<C: opentelemetry_http::HttpClient + Clone + 'static>(
    client: C,
    base: &str,
    config: &OtlpConfig,
    headers: HashMap<String, String>,
) -> Result<Exporters, opentelemetry_otlp::ExporterBuildError> {
    Ok(Exporters::Http(
        opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client.clone())
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(format!("{base}/v1/traces"))
            .with_timeout(config.timeout)
            .with_headers(headers.clone())
            .build()?,
        opentelemetry_otlp::LogExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(format!("{base}/v1/logs"))
            .with_timeout(config.timeout)
            .with_headers(headers)
            .build()?,
    ))
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

pub(super) async fn export_loop(
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
