//! The agent's own state, for operators: which programs attached (or why not), event and
//! loss counters, queue depth, exporter state, effective configuration. Served over HTTP by
//! `http.rs` as health checks, a JSON status document and Prometheus metrics.

pub mod event_metrics;
mod exposition;
pub mod http;
mod http_conn;
mod metrics;

pub use self::metrics::{CapabilityLabel, Metrics, ProgramLabel};

use std::{
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::SystemTime,
};

use serde::Serialize;

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
    /// Whether the program is attached in the kernel now (the write gate's programs come and
    /// go with the Wasm runtimes on the node).
    pub attached: bool,
    /// Attached only while something needs it (the write gate's programs).
    pub on_demand: bool,
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
    write_hooks: Mutex<Option<std::sync::Arc<dyn Snapshot>>>,
    tls_libraries: Mutex<Option<std::sync::Arc<dyn Snapshot>>>,
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
            write_hooks: Mutex::new(None),
            tls_libraries: Mutex::new(None),
        }
    }

    /// The write gate's report (`write_hooks`; absent while capture is off).
    pub fn set_write_hooks(&self, gate: std::sync::Arc<dyn Snapshot>) {
        *self.write_hooks.lock().unwrap_or_else(|e| e.into_inner()) = Some(gate);
    }

    /// The libssl files the TLS uprobes cover (`tls_libraries`; absent without the hook).
    pub fn set_tls_libraries(&self, coverage: std::sync::Arc<dyn Snapshot>) {
        *self.tls_libraries.lock().unwrap_or_else(|e| e.into_inner()) = Some(coverage);
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

    /// The write gate attached or detached `programs`: their reports and gauges follow.
    pub fn set_on_demand(&self, programs: &[&str], attached: bool) {
        let mut reports = self.programs.lock().unwrap_or_else(|e| e.into_inner());
        for r in reports
            .iter_mut()
            .filter(|r| programs.contains(&r.program.as_str()))
        {
            r.on_demand = true;
            r.attached = attached;
            self.metrics
                .program_attached
                .get_or_create(&ProgramLabel {
                    program: r.program.clone(),
                    hook: r.hook.clone(),
                })
                .set(i64::from(attached));
        }
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
        for (kind, n) in self.metrics.event_counts() {
            events.insert(kind.into(), n.into());
        }
        for source in ["ringbuf", "channel", "decode", "netlink"] {
            let total = self.metrics.losses_at(source);
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
            "http_requests": self.metrics.http_requests.get(),
            "trace_ties_ambiguous": self.metrics.trace_ties_ambiguous.get(),
            "http2": {
                "header_blocks": self.metrics.http2_header_blocks.get(),
                "tables_lost": self.metrics.http2_tables_lost.get(),
                "connections_untraced": self.metrics.http2_connections_untraced.get(),
            },
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
            "write_hooks": self
                .write_hooks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .map(|g| g.snapshot()),
            "tls_libraries": self
                .tls_libraries
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
