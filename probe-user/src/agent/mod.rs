//! The agent's components in the order they start: the status endpoints first (a failing
//! load shows in /health/status), the kernel side (programs and their maps), the outputs,
//! the sources (ring-buffer reader, conntrack, Kubernetes) and the pipeline between them;
//! then, on SIGTERM/SIGINT or the loss of the only output, the same in reverse within the
//! shutdown budget. `main` parses the configuration and runs [`run`].

mod consumer;
mod endpoints;
mod kernel;
mod outputs;
mod shutdown;
mod sources;

pub use self::kernel::check_kernel;
use self::{endpoints::Endpoints, kernel::Kernel, outputs::Outputs, sources::Sources};

use std::{sync::Arc, time::Duration};

use thiserror::Error;
use tokio::sync::{mpsc, watch};
use tracing::info;

use crate::{
    config::Cli,
    enrich::{self, Enricher},
    export::otlp::OtlpError,
    loader::LoaderError,
    pipeline::{self, Counters, PipelineError},
    status::{AgentState, http::HttpError},
};

#[derive(Debug, Error)]
pub enum AgentError {
    #[error(transparent)]
    Endpoints(#[from] HttpError),
    #[error(transparent)]
    Load(#[from] LoaderError),
    #[error("no kernel program could be attached (see the warnings above)")]
    NothingAttached,
    #[error("starting the stdout output thread: {0}")]
    StdoutThread(#[source] std::io::Error),
    #[error(transparent)]
    Otlp(#[from] OtlpError),
    #[error("installing the {0} handler: {1}")]
    Signal(&'static str, #[source] std::io::Error),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("the {0} ended abnormally: {1}")]
    Task(&'static str, #[source] tokio::task::JoinError),
    #[error("the http thread ended before it reported")]
    HttpGone,
    #[error("the only output ({name}) failed ({why}); {lost} records lost")]
    OnlyOutputGone {
        name: &'static str,
        why: String,
        lost: u64,
    },
    #[error("shutdown did not finish within {0:?}")]
    ShutdownTimeout(Duration),
}

/// Runs the agent until a signal (or the loss of its only output), then drains it.
pub async fn run(cli: &Cli) -> Result<(), AgentError> {
    let state = Arc::new(AgentState::new(cli.effective(), outputs::names(cli)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let endpoints = Endpoints::start(cli, &state, stop_rx.clone())?;
    let (mut kernel, streams) = Kernel::load(cli, &state)?;
    let node = cli
        .node_name
        .clone()
        .unwrap_or_else(enrich::default_node_name);
    let counters = Arc::new(Counters::default());
    let enricher = Enricher::new(node.clone());
    let (tx, rx) = mpsc::channel(cli.queue_size as usize);
    let into = sources::Into {
        tx,
        counters: counters.clone(),
        enricher: enricher.clone(),
    };
    let sources = Sources::start(cli, &state, &node, &kernel, streams.ring, into, stop_rx).await;
    let (sink, outputs) = Outputs::start(cli, &state, &node)?;
    let parts = consumer::Parts {
        kernel: &mut kernel,
        losses: streams.losses,
        counters,
        sources: &sources,
        outputs: &outputs,
        sink,
        enricher,
        listening: endpoints.listening,
    };
    let consumer = tokio::spawn(pipeline::consume(rx, consumer::stages(cli, &state, parts)));
    state.set_ready(true);
    info!(
        node,
        "ready: {} of {} programs attached, streaming events",
        kernel.probe.attached(),
        kernel.probe.programs.len()
    );
    let only_output_gone = shutdown::wait(&state, &outputs).await?;
    state.set_ready(false);
    // Detach first so nothing new arrives, then drain what the ring buffer holds.
    kernel.detach();
    let _ = stop_tx.send(true);
    let budget = cli.shutdown_timeout;
    shutdown::drain(
        budget,
        sources,
        consumer,
        outputs,
        endpoints,
        only_output_gone,
    )
    .await
}
