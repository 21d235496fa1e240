//! Prometheus metrics; also the counters the status document reports.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LossLabel {
    pub source: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SignalLabel {
    pub signal: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OtlpLabel {
    pub signal: String,
    /// `outcome` of a request (accepted, retry, too_large, rejected), or the `reason` records
    /// were refused for good (rejected, too_large, partial_success).
    pub cause: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProgramLabel {
    pub program: String,
    pub hook: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CapabilityLabel {
    pub capability: String,
    /// The hook chosen on this kernel, `none` when no candidate works or it is disabled.
    pub hook: String,
}

/// Prometheus metrics; also the counters the status document reports.
pub struct Metrics {
    registry: Registry,
    /// The events' own families (resets, core signals, Wasm output per pod).
    pub event: super::event_metrics::EventMetrics,
    events: Family<KindLabel, Counter>,
    /// The kinds `events` counts, in the order they were first counted or announced: what
    /// the status document lists (each kind is named where it is declared, not here).
    event_kinds: std::sync::Mutex<Vec<&'static str>>,
    losses: Family<LossLabel, Counter>,
    /// The (source, kind) pairs `losses` counts.
    loss_labels: std::sync::Mutex<Vec<(&'static str, &'static str)>>,
    pub queue_depth: Gauge,
    pub program_attached: Family<ProgramLabel, Gauge>,
    pub capability: Family<CapabilityLabel, Gauge>,
    pub pending_core_signals: Gauge,
    pub conntrack_flows_evicted: Counter,
    pub conntrack_destroys_without_state: Gauge,
    pub kubernetes_up: Gauge,
    pub own_traffic_skipped: Counter,
    /// Records over the OTLP output's budget (counted in its summaries instead).
    pub otlp_over_budget: Counter,
    /// HTTP/1.x request heads the kernel sent for the trace tie.
    pub http_requests: Counter,
    /// Records a process made while serving several traced requests, on none of their threads.
    pub trace_ties_ambiguous: Counter,
    /// HTTP/2 header blocks decoded, and connections (sides) whose HPACK table became unknown.
    pub http2_header_blocks: Counter,
    pub http2_tables_lost: Counter,
    /// HTTP/2 connections the kernel took as uninstrumented.
    pub http2_connections_untraced: Counter,
    /// 1 while the write hooks are attached (something is selected for capture).
    pub write_hooks_attached: Gauge,
    pub write_hooks_attaches: Counter,
    otlp_exported: Family<SignalLabel, Counter>,
    otlp_dropped: Family<SignalLabel, Counter>,
    otlp_requests: Family<OtlpLabel, Counter>,
    otlp_rejected: Family<OtlpLabel, Counter>,
    /// The HTTP endpoint's connections: open, closed for idling, evicted at the cap.
    pub http_connections: super::http_conn::ConnMetrics,
}

impl Metrics {
    pub(super) fn new() -> Self {
        let mut registry = Registry::with_prefix("probe");
        let event = super::event_metrics::EventMetrics::default();
        event.register(&mut registry);
        let events = Family::<KindLabel, Counter>::default();
        registry.register(
            "events",
            "Records written to the sinks, by kind",
            events.clone(),
        );
        let losses = Family::<LossLabel, Counter>::default();
        registry.register(
            "events_lost",
            "Events lost, by source (ringbuf, channel, decode) and kind",
            losses.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "queue_depth",
            "Events waiting between the ring-buffer reader and the sinks",
            queue_depth.clone(),
        );
        let program_attached = Family::<ProgramLabel, Gauge>::default();
        registry.register(
            "program_attached",
            "1 when the kernel program is attached, 0 when it could not be",
            program_attached.clone(),
        );
        let capability = Family::<CapabilityLabel, Gauge>::default();
        registry.register(
            "capability",
            "1 when the capability works on this kernel through the hook named, 0 when it does not",
            capability.clone(),
        );
        let pending_core_signals = Gauge::default();
        registry.register(
            "core_signals_pending",
            "Core-dumping signals waiting for their target's exit",
            pending_core_signals.clone(),
        );
        let conntrack_flows_evicted = Counter::default();
        registry.register(
            "conntrack_flows_evicted",
            "Expired conntrack flows forgotten (LRU) before a follow-up could join them",
            conntrack_flows_evicted.clone(),
        );
        let conntrack_destroys_without_state = Gauge::default();
        registry.register(
            "conntrack_destroys_without_state",
            "TCP conntrack destroy events that carried no TCP state (this kernel cannot tell expiries)",
            conntrack_destroys_without_state.clone(),
        );
        let kubernetes_up = Gauge::default();
        registry.register(
            "kubernetes_up",
            "1 while the Kubernetes API server answers every watch, 0 while one fails or before the first answer (and with enrichment off)",
            kubernetes_up.clone(),
        );
        let http_requests = Counter::default();
        registry.register(
            "http_requests",
            "HTTP/1.x requests read on the send and receive paths that carry a traceparent or end one on their connection, answers to traced requests, and HTTP/2 requests decoded (every one)",
            http_requests.clone(),
        );
        let trace_ties_ambiguous = Counter::default();
        registry.register(
            "trace_ties_ambiguous",
            "Records of a task whose process was serving more than one traced request at the time, on none of their threads: in no trace (a tie by process would be a guess)",
            trace_ties_ambiguous.clone(),
        );
        let http2_header_blocks = Counter::default();
        registry.register(
            "http2_header_blocks",
            "HTTP/2 request header blocks (h2c: gRPC and others in clear text) decoded for the trace tie, with their connection's HPACK table",
            http2_header_blocks.clone(),
        );
        let http2_tables_lost = Counter::default();
        registry.register(
            "http2_tables_lost",
            "HTTP/2 connections (per side) whose HPACK table became unknown (frames the kernel could not follow or copy, a connection begun before the agent or forgotten at the cap): their later requests join no trace",
            http2_tables_lost.clone(),
        );
        let http2_connections_untraced = Counter::default();
        registry.register(
            "http2_connections_untraced",
            "HTTP/2 connections whose first 16 request header blocks named no traceparent: taken as uninstrumented, the kernel follows them no more (their later requests join no trace)",
            http2_connections_untraced.clone(),
        );
        let own_traffic_skipped = Counter::default();
        registry.register(
            "own_traffic_skipped",
            "Resets and drops on the agent's own HTTP endpoint (probes, scrapes): not reported",
            own_traffic_skipped.clone(),
        );
        let otlp_over_budget = Counter::default();
        registry.register(
            "otlp_over_budget_records",
            "Records over the node's OTLP budget (--otlp-max-spans, --otlp-max-logs): written in full to the other outputs, counted in an OTLP summary (folded_by=otlp_budget) instead of a span of their own",
            otlp_over_budget.clone(),
        );
        let write_hooks_attached = Gauge::default();
        registry.register(
            "write_hooks_attached",
            "1 while the Wasm write hooks are attached (a runtime or Wasm pod is on the node), 0 while they are not (nothing is paid per write)",
            write_hooks_attached.clone(),
        );
        let write_hooks_attaches = Counter::default();
        registry.register(
            "write_hooks_attaches",
            "Times the Wasm write hooks were attached because a runtime or Wasm pod appeared",
            write_hooks_attaches.clone(),
        );
        let otlp_exported = Family::<SignalLabel, Counter>::default();
        registry.register(
            "otlp_exported",
            "Spans and log records the OTLP collector accepted, by signal",
            otlp_exported.clone(),
        );
        let otlp_dropped = Family::<SignalLabel, Counter>::default();
        registry.register(
            "otlp_dropped",
            "Spans and log records dropped (queue full while the collector was down or slow)",
            otlp_dropped.clone(),
        );
        let otlp_requests = Family::<OtlpLabel, Counter>::default();
        registry.register(
            "otlp_requests",
            "Export requests sent to the OTLP collector, by signal and what the collector answered (cause: accepted, retry, too_large, rejected)",
            otlp_requests.clone(),
        );
        let otlp_rejected = Family::<OtlpLabel, Counter>::default();
        registry.register(
            "otlp_rejected",
            "Spans and log records the collector refused for good and were dropped without a retry (also in otlp_dropped), by cause: rejected (e.g. HTTP 400), too_large (a single record over the collector's limit), partial_success",
            otlp_rejected.clone(),
        );
        let http_connections = super::http_conn::ConnMetrics::default();
        registry.register(
            "http_connections",
            "Open connections to these endpoints",
            http_connections.open.clone(),
        );
        registry.register(
            "http_connections_closed_idle",
            "Connections to these endpoints closed after --http-idle-timeout without a byte",
            http_connections.closed_idle.clone(),
        );
        registry.register(
            "http_connections_evicted",
            "Connections closed at --http-max-connections (the one idle the longest) to serve a new one",
            http_connections.evicted.clone(),
        );
        Self {
            registry,
            event,
            http_connections,
            otlp_exported,
            otlp_dropped,
            otlp_requests,
            otlp_rejected,
            conntrack_flows_evicted,
            conntrack_destroys_without_state,
            kubernetes_up,
            own_traffic_skipped,
            otlp_over_budget,
            http_requests,
            trace_ties_ambiguous,
            http2_header_blocks,
            http2_tables_lost,
            http2_connections_untraced,
            write_hooks_attached,
            write_hooks_attaches,
            events,
            event_kinds: Default::default(),
            losses,
            loss_labels: Default::default(),
            queue_depth,
            program_attached,
            capability,
            pending_core_signals,
        }
    }

    /// `probe_events_total{kind}`, the kind listed by the status document from now on (at 0
    /// until its first record).
    pub fn event_counter(&self, kind: &'static str) -> Counter {
        let mut kinds = self.event_kinds.lock().unwrap_or_else(|e| e.into_inner());
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
        self.events
            .get_or_create(&KindLabel { kind: kind.into() })
            .clone()
    }

    /// Every kind counted or announced, with its count.
    pub fn event_counts(&self) -> Vec<(&'static str, u64)> {
        let kinds = self.event_kinds.lock().unwrap_or_else(|e| e.into_inner());
        kinds
            .iter()
            .map(|&kind| {
                let n = self.events.get_or_create(&KindLabel { kind: kind.into() });
                (kind, n.get())
            })
            .collect()
    }

    /// `probe_lost_events_total{source,kind}` up by `n`.
    pub fn count_loss(&self, source: &'static str, kind: &'static str, n: u64) {
        let mut labels = self.loss_labels.lock().unwrap_or_else(|e| e.into_inner());
        if !labels.contains(&(source, kind)) {
            labels.push((source, kind));
        }
        let label = LossLabel {
            source: source.into(),
            kind: kind.into(),
        };
        self.losses.get_or_create(&label).inc_by(n);
    }

    /// Events lost at `source`, every kind.
    pub fn losses_at(&self, source: &str) -> u64 {
        let labels = self.loss_labels.lock().unwrap_or_else(|e| e.into_inner());
        labels
            .iter()
            .filter(|(s, _)| *s == source)
            .map(|&(source, kind)| {
                let label = LossLabel {
                    source: source.into(),
                    kind: kind.into(),
                };
                self.losses.get_or_create(&label).get()
            })
            .sum()
    }

    pub fn otlp_exported(&self, signal: &str) -> Counter {
        self.otlp_exported
            .get_or_create(&SignalLabel {
                signal: signal.into(),
            })
            .clone()
    }

    pub fn otlp_dropped(&self, signal: &str) -> Counter {
        self.otlp_dropped
            .get_or_create(&SignalLabel {
                signal: signal.into(),
            })
            .clone()
    }

    pub fn otlp_request(&self, signal: &str, outcome: &str) -> Counter {
        self.otlp_requests
            .get_or_create(&OtlpLabel {
                signal: signal.into(),
                cause: outcome.into(),
            })
            .clone()
    }

    pub fn otlp_rejected(&self, signal: &str, reason: &str) -> Counter {
        self.otlp_rejected
            .get_or_create(&OtlpLabel {
                signal: signal.into(),
                cause: reason.into(),
            })
            .clone()
    }

    /// The Prometheus/OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
