//! `probe`: parses the configuration, then wires loader -> pipeline -> enrichment -> sinks,
//! and the status endpoints.

mod clock;
mod config;
mod conntrack;
mod counts;
mod decode;
mod enrich;
mod export;
#[cfg(test)]
mod layering;
mod loader;
mod model;
mod pipeline;
mod runtimes;
mod status;

use std::{io::IsTerminal, process::ExitCode, sync::Arc};

use anyhow::{Context as _, bail};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
};
use tracing::{error, info, warn};

use crate::{
    config::{Cli, KubeMode, LogFormat, Output},
    enrich::{
        Enricher,
        k8s::{K8sCache, K8sConfig, attrs::K8sEnricher},
    },
    export::Sink,
    loader::{LoaderConfig, Probe},
    pipeline::{Counters, LossTracker, Stages},
    status::AgentState,
};

/// Core signals held at once while waiting for their target's exit.
const CORE_JOIN_CAPACITY: usize = 4096;
/// Records waiting for the stdout output's thread at most, and their bytes at most (Wasm lines
/// are up to --wasm-line-max-bytes each).
const OUTPUT_QUEUE: usize = 8192;
const OUTPUT_QUEUE_BYTES: usize = 32 << 20;
/// Expired conntrack flows held at once while waiting for a follow-up.
const CONNTRACK_FLOWS: usize = 16384;

fn main() -> ExitCode {
    let cli = match Cli::load(std::env::args_os().collect()) {
        Ok(cli) => cli,
        // Usage errors exit with status 2 (and --help/--version with 0).
        Err(e) => e.exit(),
    };
    if cli.print_config || cli.print_requirements {
        let doc = if cli.print_config {
            cli.effective()
        } else {
            loader::requirements()
        };
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    init_logging(&cli);
    if cli.check_kernel {
        return loader::check_kernel(&loader_config(&cli));
    }
    // One thread: the reader hands batches to the consumer without cross-thread wake-ups
    // (which were a third of the agent's CPU under a reset storm).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!("starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn loader_config(cli: &Cli) -> LoaderConfig {
    LoaderConfig {
        ringbuf_bytes: cli.ringbuf_bytes,
        signal_mask: cli.signals,
        capture_bytes: cli.capture_bytes,
        wasm_runtimes: cli.wasm_runtimes.0.clone(),
        http_trace_context: cli.http_trace_context,
        avoid_hooks: cli.avoid_hooks.clone(),
        hook_pins: cli.hooks.clone(),
        verbose_verifier: cli.verifier_log == config::values::VerifierLog::Verbose,
        fold_first: cli.fold_first,
        fold_window: cli.fold_window,
    }
}

fn init_logging(cli: &Cli) {
    // Checked at parse time (exit 2 naming --log-level).
    let filter = config::values::env_filter(&cli.log_level);
    // A closed stderr (`probe 2>&1 >/dev/null | head -2`) loses log lines, nothing else: the
    // subscriber's fallback would eprintln! the write error, which panics on a closed stderr.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    match cli.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let sink_names = cli
        .output
        .iter()
        .map(|o| format!("{o:?}").to_lowercase())
        .collect();
    let state = Arc::new(AgentState::new(cli.effective(), sink_names));
    let (stop_tx, stop_rx) = watch::channel(false);

    // The endpoints come up first, so a failing load is visible in /health/status too.
    let (http, listening) = match cli.http_addr.0 {
        Some(addr) => {
            let limits = status::http::Limits {
                max: cli.http_max_connections as usize,
                idle: cli.http_idle_timeout,
                header: cli
                    .http_idle_timeout
                    .min(std::time::Duration::from_secs(10)),
            };
            let (local, done) = status::http::spawn(addr, limits, state.clone(), stop_rx.clone())?;
            info!(
                "http: listening on {local} (/health/live, /health/ready, /health/status, /metrics)"
            );
            (Some(done), Some(local))
        }
        None => (None, None),
    };

    let mut probe = Probe::load(&loader_config(&cli))?;
    state.set_programs(probe.program_reports());
    state.set_capabilities(probe.capability_reports());
    probe.log_capabilities();
    if probe.attached() == 0 {
        bail!("no kernel program could be attached (see the warnings above)");
    }
    let ring = probe.take_events()?;
    let kernel_losses = probe.take_losses()?;
    let tables = Arc::new(probe.tables.clone());
    let wasm_cgroups = match probe.take_wasm_cgroups() {
        Ok(map) => Some(Box::new(map) as Box<dyn pipeline::WasmCgroupMap>),
        Err(e) => {
            warn!("{e}; Wasm pods will not be captured by cgroup");
            None
        }
    };
    let event_counts = match probe.take_event_counts() {
        Ok(map) => Some(counts::EventCounter::new(
            Box::new(map),
            tables.clone(),
            state.metrics.event.clone(),
            counts::Limits {
                max_series: cli.metrics_max_series as usize,
                idle: cli.metrics_series_idle,
            },
        )),
        Err(e) => {
            warn!("{e}; the event metrics (probe_tcp_resets_total...) will be missing");
            None
        }
    };
    let folds = match probe.take_folds() {
        Ok(map) => Some(Box::new(map) as Box<dyn enrich::folds::FoldMap>),
        Err(e) => {
            warn!("{e}; folded resets will have no summary records");
            None
        }
    };
    let drop_flows = match probe.take_drop_flows() {
        Ok(map) => Some(Box::new(map) as Box<dyn enrich::drops::DropMap>),
        Err(e) => {
            warn!("{e}; packet drop counts after a flow's last record will be missing");
            None
        }
    };

    // The write hooks are attached only while a runtime or a Wasm pod is on the node.
    let wasm_cgroup_count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let write_gate = loader::gate::start(&mut probe, &state, wasm_cgroup_count.clone());

    let counters = Arc::new(Counters::default());
    let (tx, rx) = mpsc::channel(cli.queue_size as usize);
    let node = cli
        .node_name
        .clone()
        .unwrap_or_else(enrich::default_node_name);
    // One clock offset for the kernel's events and the conntrack source's records.
    let enricher = Enricher::new(node.clone());
    let k8s_cache = K8sCache::with_gauge(state.metrics.kubernetes_up.clone());
    state.set_kubernetes(k8s_cache.clone());
    let k8s_tasks = match cli.kubernetes {
        KubeMode::Off => {
            info!("kubernetes: enrichment off (--kubernetes off)");
            Vec::new()
        }
        KubeMode::Auto => {
            enrich::k8s::start(
                K8sConfig {
                    node: node.clone(),
                    cluster_name: cli.cluster_name.clone(),
                    labels: cli.k8s_pod_labels.clone(),
                    wasm_runtime_classes: cli.wasm_runtime_classes.clone(),
                },
                k8s_cache.clone(),
                stop_rx.clone(),
            )
            .await
        }
    };
    // Pods' namespaces are followed while enrichment runs (a cluster configuration was found).
    let follow_pods = cli.conntrack_pods && !k8s_tasks.is_empty();
    let conntrack_tasks = conntrack::start(
        &conntrack::ConntrackConfig {
            host: cli.conntrack,
            netns: cli.conntrack_netns.clone(),
            settings_interval: cli.conntrack_settings_interval,
            timestamps: cli.conntrack_timestamps,
        },
        tx.clone(),
        counters.clone(),
        enricher.clone(),
        state.clone(),
        stop_rx.clone(),
        follow_pods.then(|| k8s_cache.clone()),
    )
    .await;
    let reader = tokio::spawn(pipeline::read_events(
        ring,
        tx,
        tables.clone(),
        counters.clone(),
        cli.read_delay,
        stop_rx,
    ));
    // stdout on its own thread behind a bounded queue: a reader that stops reading costs the
    // queue (counted losses), never the pipeline, the endpoints or signal handling.
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    let mut stdout_output = None;
    let stdout = export::stdout_sink(
        cli.output.contains(&Output::Json),
        cli.output.contains(&Output::Terminal),
        cli.color.enabled(),
    );
    if let Some((name, inner)) = stdout {
        let (queued, output, _detached) =
            export::queued::spawn_bounded(name, inner, OUTPUT_QUEUE, OUTPUT_QUEUE_BYTES)
                .context("starting the stdout output thread")?;
        sinks.push(Box::new(queued));
        stdout_output = Some(output);
    }
    let mut otlp_task = None;
    if cli.output.contains(&Output::Otlp) {
        let config = export::otlp::OtlpConfig {
            endpoint: cli.otlp_endpoint.as_ref().map(|e| e.expose().to_owned()),
            shown: cli.otlp_endpoint.as_ref().map_or_else(
                || export::otlp::default_endpoint(cli.otlp_protocol).to_owned(),
                |e| e.redacted(),
            ),
            protocol: cli.otlp_protocol,
            headers: cli
                .otlp_headers
                .iter()
                .map(|h| (h.key.clone(), h.value().to_owned()))
                .collect(),
            timeout: cli.otlp_timeout,
            queue_size: cli.otlp_queue_size as usize,
            queue_bytes: cli.otlp_queue_bytes as usize,
            batch_bytes: cli.otlp_batch_bytes as usize,
            batch_delay: cli.otlp_batch_delay,
            // Half the shutdown budget: the reader and the consumer drain first.
            drain_for: cli.shutdown_timeout / 2,
            resource: export::otlp::resource(
                &cli.service_name,
                &node,
                cli.cluster_name.as_deref(),
                &cli.resource_attributes,
            ),
        };
        let (otlp, task) = export::otlp::OtlpSink::start(&config, state.clone())?;
        sinks.push(Box::new(otlp));
        otlp_task = Some(task);
    }
    let sink: Box<dyn Sink> = if sinks.len() == 1 {
        sinks.remove(0)
    } else {
        Box::new(export::Fanout(sinks))
    };
    let mut losses = LossTracker::new(Box::new(kernel_losses), counters);
    if let Some(output) = &stdout_output {
        losses.watch_output(output.clone());
    }
    let budget = cli
        .output
        .contains(&Output::Otlp)
        .then_some(pipeline::spans::Budget {
            spans_per_s: cli.otlp_max_spans,
            logs_per_s: cli.otlp_max_logs,
        });
    let stages = Stages {
        spans: pipeline::spans::SpanChooser::new(budget),
        enricher,
        sink,
        losses,
        drain_for: cli.shutdown_timeout / 2,
        loss_interval: cli.loss_interval,
        stages: enrich::event_stages(enrich::StageConfig {
            own_endpoint: listening,
            own_skipped: state.metrics.own_traffic_skipped.clone(),
            http_requests: state.metrics.http_requests.clone(),
            wasm_runtimes: cli.wasm_runtimes.names(),
            wasm_line_idle: cli.wasm_line_idle,
            wasm_line_max: cli.wasm_line_max_bytes as usize,
            core_wait: cli.core_wait,
            core_join_capacity: CORE_JOIN_CAPACITY,
            flows: CONNTRACK_FLOWS,
            drop_flows,
            folds,
            tables: tables.clone(),
            // Without a watched namespace there are no expiries to join.
            conntrack_flows: (!conntrack_tasks.is_empty())
                .then_some((cli.conntrack_window, CONNTRACK_FLOWS)),
        }),
        k8s: K8sEnricher::new(k8s_cache, enrich::k8s::cgroup::cgroup2_root()),
        held: std::collections::VecDeque::new(),
        wasm_cgroups,
        fed_wasm_cgroups: std::collections::HashSet::new(),
        wasm_cgroup_count,
        event_counters: Vec::new(),
        counts: event_counts,
        metrics_every: cli.otlp_metrics_interval,
        metrics_sent: Some(std::time::Instant::now()),
        state: state.clone(),
    };
    let consumer = tokio::spawn(pipeline::consume(rx, stages));
    state.set_ready(true);
    info!(
        node,
        "ready: {} of {} programs attached, streaming events",
        probe.attached(),
        probe.programs.len()
    );

    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    // An output that fails (EPIPE: `probe | head -1`) makes the agent unready; when it was the
    // only output, the agent stops like any member of a shell pipeline, with exit status 1.
    let mut only_output_gone = None;
    let mut output_failed = false;
    loop {
        let gone = async {
            match &stdout_output {
                Some(o) if !output_failed => o.gone.notified().await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM: detaching and draining"); break }
            _ = int.recv() => { info!("SIGINT: detaching and draining"); break }
            () = gone => {
                output_failed = true;
                let o = stdout_output.as_ref().expect("only polled with an output");
                state.set_output_failed(o.name, o.failure().unwrap_or_default());
                if otlp_task.is_none() {
                    only_output_gone = Some(o.clone());
                    break;
                }
            }
        }
    }
    state.set_ready(false);
    // Detach first so nothing new arrives, then drain what the ring buffer holds.
    if let Some(gate) = write_gate {
        gate.stop();
    }
    drop(probe);
    let _ = stop_tx.send(true);
    let deadline = tokio::time::Instant::now() + cli.shutdown_timeout;
    let drained = tokio::time::timeout_at(deadline, async {
        reader.await.context("reader task")??;
        for task in conntrack_tasks.into_iter().chain(k8s_tasks) {
            task.await.context("conntrack/kubernetes task")?;
        }
        consumer.await.context("consumer task")??;
        // The sink went with the consumer: the export task sends what is left, then ends.
        if let Some(task) = otlp_task {
            task.await.context("otlp export task")?;
        }
        if let Some(http) = http {
            http.await.context("http thread")??;
        }
        anyhow::Ok(())
    })
    .await;
    // The output thread writes out its queue; a reader that does not read cannot hold the exit.
    if let Some(o) = &stdout_output {
        if tokio::time::timeout_at(deadline, o.finished.notified())
            .await
            .is_err()
        {
            let n = o.lose_queued();
            warn!(
                "output {}: {n} events still queued at the shutdown deadline (its reader does \
                 not read) are lost",
                o.name
            );
        }
        // Said last, where it cannot be lost: what no loss record written to it carries.
        let unreported = o.unreported();
        if unreported > 0 {
            warn!(
                "output {}: {unreported} lost events are carried by no loss record it wrote \
                 (the last report did not get out before the shutdown deadline)",
                o.name
            );
        }
    }
    if let Some(o) = only_output_gone {
        bail!(
            "the only output ({}) failed ({}); {} records lost",
            o.name,
            o.failure().unwrap_or_default(),
            o.events_lost()
        );
    }
    match drained {
        Ok(result) => result,
        Err(_) => bail!("shutdown did not finish within {:?}", cli.shutdown_timeout),
    }
}
