//! The pipeline's consumer: the event stages (enrich), the Kubernetes hold-back, the kernel's
//! exact counts into metrics, the OTLP budget, loss reports, into the outputs' sink.

use std::{net::SocketAddr, sync::Arc};

use aya::maps::{MapData, PerCpuArray};

use super::{kernel::Kernel, outputs::Outputs, sources::Sources};
use crate::{
    config::{Cli, Output},
    enrich::{self, Enricher, k8s::attrs::K8sEnricher},
    export::Sink,
    pipeline::{Counters, LossTracker, Stages, StagesConfig, spans},
    status::AgentState,
};

/// Core signals held at once while waiting for their target's exit.
const CORE_JOIN_CAPACITY: usize = 4096;
/// Expired conntrack flows held at once while waiting for a follow-up.
const CONNTRACK_FLOWS: usize = 16384;

/// What the consumer takes from the other components.
pub struct Parts<'a> {
    pub kernel: &'a mut Kernel,
    pub losses: PerCpuArray<MapData, u64>,
    pub counters: Arc<Counters>,
    pub sources: &'a Sources,
    pub outputs: &'a Outputs,
    pub sink: Box<dyn Sink>,
    pub enricher: Enricher,
    /// The status endpoints' address (their traffic makes no records).
    pub listening: Option<SocketAddr>,
}

pub fn stages(cli: &Cli, state: &Arc<AgentState>, p: Parts<'_>) -> Stages {
    let mut losses = LossTracker::new(Box::new(p.losses), p.counters);
    if let Some(output) = &p.outputs.stdout {
        losses.watch_output(output.clone());
    }
    let budget = cli.output.contains(&Output::Otlp).then_some(spans::Budget {
        spans_per_s: cli.otlp_max_spans,
        logs_per_s: cli.otlp_max_logs,
    });
    let event_stages = enrich::event_stages(enrich::StageConfig {
        own_endpoint: p.listening,
        own_skipped: state.metrics.own_traffic_skipped.clone(),
        http_requests: state.metrics.http_requests.clone(),
        trace_ties_ambiguous: state.metrics.trace_ties_ambiguous.clone(),
        http2: enrich::http2::Http2Counters {
            header_blocks: state.metrics.http2_header_blocks.clone(),
            tables_lost: state.metrics.http2_tables_lost.clone(),
            untraced: state.metrics.http2_connections_untraced.clone(),
        },
        wasm_runtimes: cli.wasm_runtimes.names(),
        wasm_line_idle: cli.wasm_line_idle,
        wasm_line_max: cli.wasm_line_max_bytes as usize,
        core_wait: cli.core_wait,
        core_join_capacity: CORE_JOIN_CAPACITY,
        flows: CONNTRACK_FLOWS,
        drop_flows: p.kernel.drop_flows.take(),
        folds: p.kernel.folds.take(),
        tables: p.kernel.tables.clone(),
        // Without a watched namespace there are no expiries to join.
        conntrack_flows: (!p.sources.conntrack.is_empty())
            .then_some((cli.conntrack_window, CONNTRACK_FLOWS)),
        k8s: Some(p.sources.k8s_cache.clone()),
        node: p.enricher.node().into(),
    });
    Stages::new(StagesConfig {
        spans: spans::SpanChooser::new(budget),
        enricher: p.enricher,
        sink: p.sink,
        losses,
        drain_for: cli.shutdown_timeout / 2,
        loss_interval: cli.loss_interval,
        stages: event_stages,
        k8s: K8sEnricher::new(
            p.sources.k8s_cache.clone(),
            enrich::k8s::cgroup::cgroup2_root(),
        ),
        wasm_cgroups: p.kernel.wasm_cgroups.take(),
        wasm_cgroup_count: p.kernel.wasm_cgroup_count.clone(),
        counts: p.kernel.event_counts.take(),
        metrics_every: cli.otlp_metrics_interval,
        state: state.clone(),
    })
}
