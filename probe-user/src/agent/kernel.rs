//! The kernel side: the programs loaded and attached (the hook table), the maps the agent
//! reads, and the write gate that attaches the write hooks while a runtime is on the node.

use std::sync::{Arc, atomic::AtomicUsize};

use aya::maps::{MapData, PerCpuArray};
use tracing::warn;

use super::AgentError;
use crate::{
    config::{Cli, values::VerifierLog},
    counts::{self, EventCounter},
    decode::SymbolTables,
    enrich,
    loader::{self, LoaderConfig, Probe, gate::GateThread},
    pipeline,
    status::AgentState,
};

/// What the kernel hands the pipeline: its events and its per-CPU loss counts.
pub struct Streams {
    pub ring: pipeline::EventRing,
    pub losses: PerCpuArray<MapData, u64>,
}

pub struct Kernel {
    pub probe: Probe,
    pub tables: Arc<SymbolTables>,
    /// The maps the pipeline's stages read or feed (None: missing, said once at start).
    pub wasm_cgroups: Option<Box<dyn pipeline::WasmCgroupMap>>,
    pub event_counts: Option<EventCounter>,
    pub folds: Option<Box<dyn enrich::folds::FoldMap>>,
    pub drop_flows: Option<Box<dyn enrich::drops::DropMap>>,
    write_gate: Option<GateThread>,
    tls_watcher: Option<loader::libssl::Watcher>,
    /// How many Wasm cgroups are captured (the gate attaches the write hooks while any is).
    pub wasm_cgroup_count: Arc<AtomicUsize>,
}

impl Kernel {
    /// Loads and attaches what this kernel allows; fails when nothing attaches or a map every
    /// event needs is missing.
    pub fn load(cli: &Cli, state: &Arc<AgentState>) -> Result<(Self, Streams), AgentError> {
        let mut probe = Probe::load(&loader_config(cli))?;
        state.set_programs(probe.program_reports());
        state.set_capabilities(probe.capability_reports());
        probe.log_capabilities();
        if probe.attached() == 0 {
            return Err(AgentError::NothingAttached);
        }
        let ring = pipeline::EventRing {
            ring: probe.take_events()?,
            polling: optional(
                probe.take_reader_polling(),
                "the reader is woken for every batch of records",
            ),
        };
        let losses = probe.take_losses()?;
        let tables = Arc::new(probe.tables.clone());
        let limits = counts::Limits {
            max_series: cli.metrics_max_series as usize,
            idle: cli.metrics_series_idle,
        };
        let event_counts = optional(
            probe.take_event_counts(),
            "the event metrics (probe_tcp_resets_total...) will be missing",
        )
        .map(|map| {
            EventCounter::new(
                Box::new(map),
                tables.clone(),
                state.metrics.event.clone(),
                limits,
            )
        });
        let wasm_cgroups = optional(
            probe.take_wasm_cgroups(),
            "Wasm pods will not be captured by cgroup",
        )
        .map(|map| Box::new(map) as Box<dyn pipeline::WasmCgroupMap>);
        let folds = optional(
            probe.take_folds(),
            "folded resets will have no summary records",
        )
        .map(|map| Box::new(map) as Box<dyn enrich::folds::FoldMap>);
        let drop_flows = optional(
            probe.take_drop_flows(),
            "packet drop counts after a flow's last record will be missing",
        )
        .map(|map| Box::new(map) as Box<dyn enrich::drops::DropMap>);
        // The write hooks are attached only while a runtime or a Wasm pod is on the node.
        let wasm_cgroup_count = Arc::new(AtomicUsize::new(0));
        let write_gate = loader::gate::start(&mut probe, state, wasm_cgroup_count.clone());
        let tls_watcher = probe.tls_watcher();
        if let Some(tls) = &probe.tls {
            state.set_tls_libraries(tls.clone());
        }
        let kernel = Self {
            probe,
            tables,
            wasm_cgroups,
            event_counts,
            folds,
            drop_flows,
            write_gate,
            tls_watcher,
            wasm_cgroup_count,
        };
        Ok((kernel, Streams { ring, losses }))
    }

    /// Stops the write gate and the TLS library watcher, and detaches every program.
    pub fn detach(self) {
        if let Some(gate) = self.write_gate {
            gate.stop();
        }
        if let Some(watcher) = self.tls_watcher {
            watcher.stop();
        }
        drop(self.probe);
    }
}

/// A map the agent runs without, with what is lost said once.
fn optional<T>(map: Result<T, loader::LoaderError>, lost: &str) -> Option<T> {
    map.map_err(|e| warn!("{e}; {lost}")).ok()
}

fn loader_config(cli: &Cli) -> LoaderConfig {
    LoaderConfig {
        ringbuf_bytes: cli.ringbuf_bytes,
        signal_mask: cli.signals,
        capture_bytes: cli.capture_bytes,
        wasm_runtimes: cli.wasm_runtimes.0.clone(),
        http_trace_context: cli.http_trace_context,
        tls_scope: cli.tls_processes.0.clone(),
        avoid_hooks: cli.avoid_hooks.clone(),
        hook_pins: cli.hooks.clone(),
        verbose_verifier: cli.verifier_log == VerifierLog::Verbose,
        fold_first: cli.fold_first,
        fold_window: cli.fold_window,
    }
}

/// `--check-kernel`: the same loader configuration, the hook table printed.
pub fn check_kernel(cli: &Cli) -> std::process::ExitCode {
    loader::check_kernel(&loader_config(cli))
}
