//! The export side of the OTLP sink: the task that takes queued records in batches (at most
//! [`BATCH`] records and `--otlp-batch-bytes` each, sent when a batch is full or
//! `--otlp-batch-delay` after the first record waited), and does with each answer what the
//! OTLP specification says: a retryable failure puts the batch back and waits (the collector's
//! `Retry-After`/RetryInfo, else a backoff doubling to 5 s); a batch too large is split in
//! halves and sent again (a single record too large is dropped); a batch refused for good
//! (HTTP 400, gRPC INVALID_ARGUMENT, ...) is dropped at once. Every dropped record is counted
//! (`probe_otlp_dropped_total`, and by cause in `probe_otlp_rejected_total`). At shutdown it
//! drains within its deadline and counts what it could not send.

use std::{sync::Arc, time::Duration};

use opentelemetry_proto::tonic::collector::{
    logs::v1::ExportLogsServiceResponse, metrics::v1::ExportMetricsServiceResponse,
    trace::v1::ExportTraceServiceResponse,
};
use tokio::time::Instant;
use tracing::{info, warn};

use super::{
    Queue, Queues, Redactor, Shared,
    transport::{Outcome, Service, Transport},
    wire,
};
use crate::status::AgentState;

/// Records per export request at most (the SDK's OTEL_BSP_MAX_EXPORT_BATCH_SIZE default).
pub const BATCH: usize = 512;

/// A queued record: its size in a request, and its encoded message.
pub type Item = (usize, Vec<u8>);

/// A signal: its service, its response, where its queue is. Requests of both signals have one
/// shape ([`wire::request`]).
pub(super) trait Signal {
    type Response: prost::Message + Default + Send + 'static;
    /// The `signal` label of the metrics.
    const NAME: &'static str;
    /// The signal's slot in per-signal arrays (`in_flight`).
    const SLOT: usize;
    const SERVICE: Service;
    fn rejected(response: &Self::Response) -> u64;
    fn queue(q: &mut Queues) -> &mut Queue;
}

pub(super) struct Traces;
pub(super) struct Logs;
pub(super) struct Metrics;

impl Signal for Traces {
    type Response = ExportTraceServiceResponse;
    const NAME: &'static str = "spans";
    const SLOT: usize = 0;
    const SERVICE: Service = Service {
        http_path: "/v1/traces",
        grpc_path: "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    };
    fn rejected(response: &Self::Response) -> u64 {
        response
            .partial_success
            .as_ref()
            .map_or(0, |p| p.rejected_spans.max(0) as u64)
    }
    fn queue(q: &mut Queues) -> &mut Queue {
        &mut q.spans
    }
}

impl Signal for Logs {
    type Response = ExportLogsServiceResponse;
    const NAME: &'static str = "logs";
    const SLOT: usize = 1;
    const SERVICE: Service = Service {
        http_path: "/v1/logs",
        grpc_path: "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
    };
    fn rejected(response: &Self::Response) -> u64 {
        response
            .partial_success
            .as_ref()
            .map_or(0, |p| p.rejected_log_records.max(0) as u64)
    }
    fn queue(q: &mut Queues) -> &mut Queue {
        &mut q.logs
    }
}

impl Signal for Metrics {
    type Response = ExportMetricsServiceResponse;
    /// Counted in metric families (one `Metric` each).
    const NAME: &'static str = "metrics";
    const SLOT: usize = 2;
    const SERVICE: Service = Service {
        http_path: "/v1/metrics",
        grpc_path: "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
    };
    fn rejected(response: &Self::Response) -> u64 {
        // Data points refused: counted as one family (the unit of this queue) when any.
        response
            .partial_success
            .as_ref()
            .map_or(0, |p| u64::from(p.rejected_data_points > 0))
    }
    fn queue(q: &mut Queues) -> &mut Queue {
        &mut q.metrics
    }
}

/// A retryable failure: the batch went back to its queue.
struct RetryLater {
    after: Option<Duration>,
    reason: String,
}

/// The export task's state.
pub(super) struct Exporter {
    pub transport: Transport,
    pub shared: Arc<Shared>,
    pub state: Arc<AgentState>,
    pub redactor: Redactor,
    /// The encoded Resource and InstrumentationScope messages every request carries.
    pub resource: Vec<u8>,
    pub scope: Vec<u8>,
    pub batch_bytes: usize,
    pub delay: Duration,
    failing: bool,
    /// The last reason a batch was refused for good (said once per change).
    last_rejection: Option<String>,
    /// Spans, log records and metric families taken from the queues and not yet answered for
    /// (counted as lost when the drain's deadline cuts a send short).
    in_flight: [u64; 3],
}

impl Exporter {
    #[expect(clippy::too_many_arguments, reason = "the task's whole configuration")]
    pub fn new(
        transport: Transport,
        shared: Arc<Shared>,
        state: Arc<AgentState>,
        redactor: Redactor,
        resource: Vec<u8>,
        scope: Vec<u8>,
        batch_bytes: usize,
        delay: Duration,
    ) -> Self {
        Self {
            transport,
            shared,
            state,
            redactor,
            resource,
            scope,
            batch_bytes,
            delay,
            failing: false,
            last_rejection: None,
            in_flight: [0; 3],
        }
    }

    /// Waits until something is to be sent: a full batch, the batching delay after the first
    /// waiting record, or the sink's close. True once the sink is closed.
    async fn wait_ready(&self) -> bool {
        loop {
            let wait = {
                let q = self.shared.lock();
                let full = |n: usize, bytes: usize| n >= BATCH || bytes >= self.batch_bytes;
                if q.closed
                    || full(q.spans.items.len(), q.spans.bytes)
                    || full(q.logs.items.len(), q.logs.bytes)
                {
                    return q.closed;
                }
                match q.since {
                    Some(t) if t.elapsed() >= self.delay => return false,
                    Some(t) => self.delay - t.elapsed(),
                    None => Duration::from_secs(1),
                }
            };
            let _ = tokio::time::timeout(wait, self.shared.notify.notified()).await;
        }
    }

    /// Takes what one request carries from `S`'s queue (at most `limit` records).
    fn take_batch<S: Signal>(&self, limit: usize) -> Vec<Item> {
        let mut q = self.shared.lock();
        let queue = S::queue(&mut q);
        let mut batch = Vec::new();
        let mut bytes = 0;
        while batch.len() < limit.min(BATCH) {
            let Some((len, _)) = queue.items.front() else {
                break;
            };
            if !batch.is_empty() && bytes + len > self.batch_bytes {
                break;
            }
            bytes += len;
            let item = queue.items.pop_front().expect("a front item");
            queue.bytes -= item.0;
            batch.push(item);
        }
        batch
    }

    /// Sends what `S`'s queue held when called, batch by batch.
    async fn send_queued<S: Signal>(&mut self) -> Result<(), RetryLater> {
        let mut left = S::queue(&mut self.shared.lock()).items.len();
        while left > 0 {
            let batch = self.take_batch::<S>(left);
            if batch.is_empty() {
                break;
            }
            left = left.saturating_sub(batch.len());
            self.send_batch::<S>(batch).await?;
        }
        Ok(())
    }

    /// One batch: split while the collector finds it too large; put back on a retryable
    /// failure (with what was not sent yet).
    async fn send_batch<S: Signal>(&mut self, batch: Vec<Item>) -> Result<(), RetryLater> {
        let mut stack = vec![batch];
        while let Some(part) = stack.pop() {
            self.set_in_flight::<S>(part.len() + stack.iter().map(Vec::len).sum::<usize>());
            let n = part.len() as u64;
            let body = wire::request(&self.resource, &self.scope, &part);
            let bytes = body.len();
            let outcome = self
                .transport
                .send::<S::Response>(S::SERVICE, body, S::rejected)
                .await;
            let metrics = &self.state.metrics;
            metrics.otlp_request(S::NAME, outcome_name(&outcome)).inc();
            let items = part;
            match outcome {
                Outcome::Accepted { rejected } => {
                    let rejected = rejected.min(n);
                    metrics.otlp_exported(S::NAME).inc_by(n - rejected);
                    if rejected > 0 {
                        self.drop_rejected::<S>(
                            rejected,
                            "partial_success",
                            "the collector refused part of a batch",
                        );
                    }
                    self.recovered();
                }
                Outcome::TooLarge { reason } if items.len() > 1 => {
                    let mut first = items;
                    let second = first.split_off(first.len() / 2);
                    info!(
                        "otlp: the collector found a batch of {n} {} ({bytes} bytes) too large ({}); sending it in halves",
                        S::NAME,
                        self.redactor.clean(&reason)
                    );
                    stack.push(second);
                    stack.push(first);
                }
                Outcome::TooLarge { reason } => {
                    let why =
                        format!("one of {bytes} bytes is too large for the collector: {reason}");
                    self.drop_rejected::<S>(n, "too_large", &why);
                }
                Outcome::Rejected { reason } => {
                    self.drop_rejected::<S>(n, "rejected", &reason);
                }
                Outcome::Retry { after, reason } => {
                    let mut back = items;
                    while let Some(p) = stack.pop() {
                        back.extend(p);
                    }
                    self.requeue::<S>(back);
                    self.set_in_flight::<S>(0);
                    return Err(RetryLater { after, reason });
                }
            }
        }
        self.set_in_flight::<S>(0);
        Ok(())
    }

    fn set_in_flight<S: Signal>(&mut self, n: usize) {
        self.in_flight[S::SLOT] = n as u64;
    }

    /// Records the collector will never take: dropped, counted, said once per reason.
    fn drop_rejected<S: Signal>(&mut self, n: u64, cause: &str, reason: &str) {
        let metrics = &self.state.metrics;
        metrics.otlp_dropped(S::NAME).inc_by(n);
        metrics.otlp_rejected(S::NAME, cause).inc_by(n);
        let reason = self.redactor.clean(reason);
        if self.last_rejection.as_deref() != Some(reason.as_str()) {
            warn!(
                "otlp: {n} {} dropped, not retried: {reason} (counted in probe_otlp_rejected_total)",
                S::NAME
            );
            self.state
                .set_exporter_state("running", Some(format!("otlp: {reason}")));
            self.last_rejection = Some(reason);
        }
    }

    /// A batch back in front of its queue; what no longer fits is dropped and counted.
    fn requeue<S: Signal>(&self, items: Vec<Item>) {
        let mut dropped = 0u64;
        {
            let mut q = self.shared.lock();
            let (capacity, max_bytes) = (self.shared.capacity, self.shared.max_bytes);
            let queue = S::queue(&mut q);
            for (len, item) in items.into_iter().rev() {
                if queue.items.len() < capacity && queue.bytes + len <= max_bytes {
                    queue.bytes += len;
                    queue.items.push_front((len, item));
                } else {
                    dropped += 1;
                }
            }
        }
        self.state.metrics.otlp_dropped(S::NAME).inc_by(dropped);
    }

    fn recovered(&mut self) {
        if self.failing {
            info!("otlp: export works again");
            self.state.set_exporter_state("running", None);
        }
        self.failing = false;
    }

    fn retrying(&mut self, reason: &str) {
        let reason = self.redactor.clean(reason);
        if !self.failing {
            warn!(
                "otlp: export failed ({reason}); retrying with backoff, newer records queue (bounded)"
            );
        }
        self.failing = true;
        self.state
            .set_exporter_state("retrying", Some(format!("otlp: {reason}")));
    }

    /// Counts what the drain could not send and says so once (the last word on OTLP losses).
    fn give_up(&self) {
        let (spans, logs) = {
            let mut q = self.shared.lock();
            let counts = (
                q.spans.items.len() as u64 + self.in_flight[Traces::SLOT],
                q.logs.items.len() as u64 + self.in_flight[Logs::SLOT],
            );
            q.spans = Queue::default();
            q.logs = Queue::default();
            counts
        };
        let m = &self.state.metrics;
        m.otlp_dropped("spans").inc_by(spans);
        m.otlp_dropped("logs").inc_by(logs);
        warn!(
            "otlp: shutdown: {spans} spans and {logs} log records could not be delivered before \
             the deadline (lost in total: {} spans, {} log records)",
            m.otlp_dropped("spans").get(),
            m.otlp_dropped("logs").get()
        );
    }
}

fn outcome_name(o: &Outcome) -> &'static str {
    match o {
        Outcome::Accepted { .. } => "accepted",
        Outcome::Retry { .. } => "retry",
        Outcome::TooLarge { .. } => "too_large",
        Outcome::Rejected { .. } => "rejected",
    }
}

/// The export task: waits for a batch, sends, waits out failures; after the sink closes,
/// drains within `drain_for`.
pub(super) async fn export_loop(mut ex: Exporter) {
    let mut backoff = Duration::from_millis(100);
    let mut drain_deadline: Option<Instant> = None;
    // After a retryable failure the batch put back goes out again as soon as the wait is over.
    let mut retry_now = false;
    loop {
        let closed = match drain_deadline {
            Some(_) => true,
            None if retry_now => ex.shared.lock().closed,
            None => ex.wait_ready().await,
        };
        retry_now = false;
        if closed && drain_deadline.is_none() {
            drain_deadline = Some(Instant::now() + ex.shared.drain_for);
        }
        ex.shared.lock().since = None;
        let shared = ex.shared.clone();
        // None: the drain's deadline passed during the round.
        let finished = {
            let round = async {
                ex.send_queued::<Traces>().await?;
                ex.send_queued::<Logs>().await?;
                ex.send_queued::<Metrics>().await
            };
            let mut round = std::pin::pin!(round);
            let mut result = None;
            if drain_deadline.is_none() {
                tokio::select! {
                    r = &mut round => result = Some(r),
                    () = shared.closing.notified() => {
                        drain_deadline = Some(Instant::now() + shared.drain_for);
                    }
                }
            }
            match (result, drain_deadline) {
                (Some(r), _) => Some(r),
                // While draining, an attempt (a black-holed collector holds it for
                // --otlp-timeout) may not outlast the deadline.
                (None, Some(deadline)) => tokio::time::timeout_at(deadline, round).await.ok(),
                (None, None) => unreachable!("a round ends or the drain begins"),
            }
        };
        let Some(result) = finished else {
            ex.give_up();
            return;
        };
        match result {
            Ok(()) => {
                backoff = Duration::from_millis(100);
                if drain_deadline.is_some() && ex.shared.lock().is_empty() {
                    return;
                }
            }
            Err(RetryLater { after, reason }) => {
                ex.retrying(&reason);
                retry_now = true;
                let wait = after.unwrap_or(backoff).max(Duration::from_millis(100));
                match drain_deadline {
                    Some(deadline) if Instant::now() + wait >= deadline => {
                        tokio::time::sleep_until(deadline).await;
                        ex.give_up();
                        return;
                    }
                    Some(_) => tokio::time::sleep(wait).await,
                    // Closing the sink (shutdown) ends the wait: the drain begins at once.
                    None => {
                        let _ = tokio::time::timeout(wait, ex.shared.closing.notified()).await;
                    }
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

impl Queue {
    pub fn push(&mut self, len: usize, item: Vec<u8>, capacity: usize, max_bytes: usize) -> bool {
        if self.items.len() >= capacity || self.bytes + len > max_bytes {
            return false;
        }
        self.bytes += len;
        self.items.push_back((len, item));
        true
    }
}

impl Queues {
    fn is_empty(&self) -> bool {
        self.spans.items.is_empty() && self.logs.items.is_empty()
    }
}
