//! The agent's own state, for operators: which programs attached (or why not), event and
//! loss counters, queue depth, exporter state, effective configuration. Served over HTTP by
//! `http.rs` as health checks, a JSON status document and Prometheus metrics.

pub mod http;

use std::{
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::SystemTime,
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use serde::Serialize;

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
    pub events: Family<KindLabel, Counter>,
    pub losses: Family<LossLabel, Counter>,
    pub queue_depth: Gauge,
    pub program_attached: Family<ProgramLabel, Gauge>,
    pub capability: Family<CapabilityLabel, Gauge>,
    pub pending_core_signals: Gauge,
    pub conntrack_flows_evicted: Counter,
    pub conntrack_destroys_without_state: Gauge,
    pub kubernetes_up: Gauge,
    pub own_traffic_skipped: Counter,
    otlp_exported: Family<SignalLabel, Counter>,
    otlp_dropped: Family<SignalLabel, Counter>,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("probe");
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
        let own_traffic_skipped = Counter::default();
        registry.register(
            "own_traffic_skipped",
            "Resets and drops on the agent's own HTTP endpoint (probes, scrapes): not reported",
            own_traffic_skipped.clone(),
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
        Self {
            registry,
            otlp_exported,
            otlp_dropped,
            conntrack_flows_evicted,
            conntrack_destroys_without_state,
            kubernetes_up,
            own_traffic_skipped,
            events,
            losses,
            queue_depth,
            program_attached,
            capability,
            pending_core_signals,
        }
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

    /// The Prometheus/OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// A subsystem whose state the status document shows as it is when asked (the Kubernetes
/// caches); status depends on this trait, not on the subsystem.
pub trait Snapshot: Send + Sync {
    fn snapshot(&self) -> serde_json::Value;
}

/// One watched conntrack namespace, as the status document shows it.
#[derive(Debug, Clone, Serialize)]
pub struct WatchReport {
    pub netns: String,
    pub inode: Option<u32>,
    pub subscribed: bool,
    pub error: Option<String>,
}

/// One capability of the probe on this kernel: the hook chosen, or why none works.
#[derive(Debug, Clone, Serialize)]
pub struct CapabilityReport {
    pub capability: String,
    pub hook: Option<String>,
    pub programs: Vec<String>,
    /// Set when no hook works (what is lost and the kernel's reason), or it is disabled.
    pub error: Option<String>,
    /// Candidates tried before the chosen one, with the kernel's reason each.
    pub tried: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProgramReport {
    pub program: String,
    pub hook: String,
    pub attached: bool,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ExporterReport {
    pub sinks: Vec<String>,
    pub state: String,
    pub last_error: Option<String>,
}

/// Shared by the pipeline (writes) and the HTTP server (reads).
pub struct AgentState {
    started: SystemTime,
    pub metrics: Metrics,
    programs: Mutex<Vec<ProgramReport>>,
    capabilities: Mutex<Vec<CapabilityReport>>,
    exporter: Mutex<ExporterReport>,
    config: serde_json::Value,
    ready: AtomicBool,
    output_failed: AtomicBool,
    conntrack: Mutex<Vec<WatchReport>>,
    kubernetes: Mutex<Option<std::sync::Arc<dyn Snapshot>>>,
}

impl AgentState {
    pub fn new(config: serde_json::Value, sinks: Vec<String>) -> Self {
        Self {
            started: SystemTime::now(),
            metrics: Metrics::new(),
            programs: Mutex::new(Vec::new()),
            capabilities: Mutex::new(Vec::new()),
            exporter: Mutex::new(ExporterReport {
                sinks,
                state: "starting".into(),
                last_error: None,
            }),
            config,
            ready: AtomicBool::new(false),
            output_failed: AtomicBool::new(false),
            conntrack: Mutex::new(Vec::new()),
            kubernetes: Mutex::new(None),
        }
    }

    pub fn set_kubernetes(&self, cache: std::sync::Arc<dyn Snapshot>) {
        *self.kubernetes.lock().unwrap_or_else(|e| e.into_inner()) = Some(cache);
    }

    pub fn set_conntrack(&self, reports: Vec<WatchReport>) {
        *self.conntrack.lock().unwrap_or_else(|e| e.into_inner()) = reports;
    }

    pub fn set_programs(&self, reports: Vec<ProgramReport>) {
        for r in &reports {
            self.metrics
                .program_attached
                .get_or_create(&ProgramLabel {
                    program: r.program.clone(),
                    hook: r.hook.clone(),
                })
                .set(i64::from(r.attached));
        }
        *self.programs.lock().unwrap_or_else(|e| e.into_inner()) = reports;
    }

    pub fn set_capabilities(&self, reports: Vec<CapabilityReport>) {
        for r in &reports {
            self.metrics
                .capability
                .get_or_create(&CapabilityLabel {
                    capability: r.capability.clone(),
                    hook: r.hook.clone().unwrap_or_else(|| "none".into()),
                })
                .set(i64::from(r.hook.is_some()));
        }
        *self.capabilities.lock().unwrap_or_else(|e| e.into_inner()) = reports;
    }

    /// Ready: programs attached and the pipeline running (enrichment has no cache yet).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
        self.set_exporter_state(if ready { "running" } else { "stopping" }, None);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && !self.output_failed.load(Ordering::Relaxed)
    }

    /// An output the user asked for is dead: not ready from now on, and the status says why.
    pub fn set_output_failed(&self, name: &str, error: &str) {
        self.output_failed.store(true, Ordering::Relaxed);
        self.set_exporter_state("failed", Some(format!("output {name}: {error}")));
    }

    pub fn set_exporter_state(&self, state: &str, error: Option<String>) {
        let mut e = self.exporter.lock().unwrap_or_else(|e| e.into_inner());
        e.state = state.into();
        if error.is_some() {
            e.last_error = error;
        }
    }

    /// The /health/status document.
    pub fn status(&self) -> serde_json::Value {
        let programs = self
            .programs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let exporter = self
            .exporter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut events = serde_json::Map::new();
        let mut losses = serde_json::Map::new();
        // Families are read through the text encoding's source of truth: the counters.
        for kind in [
            "tcp_reset",
            "core_signal",
            "wasm_output",
            "packet_drop",
            "conntrack_expiry",
            "conntrack_settings",
            "finding",
            "loss",
        ] {
            let n = self
                .metrics
                .events
                .get_or_create(&KindLabel { kind: kind.into() })
                .get();
            events.insert(kind.into(), n.into());
        }
        for source in ["ringbuf", "channel", "decode", "netlink"] {
            let total: u64 = [
                "tcp_reset",
                "core_signal",
                "process_exit",
                "wasm_write",
                "wasm_write_result",
                "packet_drop",
                "conntrack_expiry",
                "http_request",
                "unknown",
            ]
            .iter()
            .map(|kind| {
                self.metrics
                    .losses
                    .get_or_create(&LossLabel {
                        source: source.into(),
                        kind: (*kind).into(),
                    })
                    .get()
            })
            .sum();
            losses.insert(source.into(), total.into());
        }
        serde_json::json!({
            "ready": self.is_ready(),
            "uptime_seconds": self.started.elapsed().map(|d| d.as_secs()).unwrap_or(0),
            "capabilities": self.capabilities.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            "programs": programs,
            "events": events,
            "losses": losses,
            "queue_depth": self.metrics.queue_depth.get(),
            "core_signals_pending": self.metrics.pending_core_signals.get(),
            "conntrack": {
                "watches": self.conntrack.lock().unwrap_or_else(|e| e.into_inner()).clone(),
                "flows_evicted": self.metrics.conntrack_flows_evicted.get(),
                "destroys_without_tcp_state": self.metrics.conntrack_destroys_without_state.get(),
            },
            "kubernetes": self
                .kubernetes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .map(|c| c.snapshot()),
            "exporter": exporter,
            "otlp": {
                "exported_spans": self.metrics.otlp_exported("spans").get(),
                "exported_logs": self.metrics.otlp_exported("logs").get(),
                "dropped_spans": self.metrics.otlp_dropped("spans").get(),
                "dropped_logs": self.metrics.otlp_dropped("logs").get(),
            },
            "config": self.config,
        })
    }
}
