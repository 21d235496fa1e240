//! Waiting for the end (SIGTERM, SIGINT, or the loss of the only output) and the drain in
//! order within `--shutdown-timeout`: the reader and the sources, the consumer, the OTLP
//! export, the endpoints; then the stdout output's queue, whose reader cannot hold the exit.

use std::{sync::Arc, time::Duration};

use tokio::{
    signal::unix::{SignalKind, signal},
    task::JoinHandle,
};
use tracing::{info, warn};

use super::{AgentError, endpoints::Endpoints, outputs::Outputs, sources::Sources};
use crate::{export::queued::Output, pipeline::PipelineError, status::AgentState};

/// Until a signal, or until the stdout output fails when it is the only output (EPIPE:
/// `probe | head -1`); a failed output makes the agent unready. Returns the output that
/// failed when the agent stops for it.
pub async fn wait(
    state: &AgentState,
    outputs: &Outputs,
) -> Result<Option<Arc<Output>>, AgentError> {
    let mut term = signal(SignalKind::terminate()).map_err(|e| AgentError::Signal("SIGTERM", e))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| AgentError::Signal("SIGINT", e))?;
    let mut output_failed = false;
    loop {
        let gone = async {
            match &outputs.stdout {
                Some(o) if !output_failed => o.gone.notified().await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM: detaching and draining"); return Ok(None) }
            _ = int.recv() => { info!("SIGINT: detaching and draining"); return Ok(None) }
            () = gone => {
                output_failed = true;
                let o = outputs.stdout.as_ref().expect("only polled with an output");
                state.set_output_failed(o.name, o.failure().unwrap_or_default());
                if outputs.otlp.is_none() {
                    return Ok(Some(o.clone()));
                }
            }
        }
    }
}

/// Drains everything within `budget` (the programs are already detached and the sources
/// told to stop).
pub async fn drain(
    budget: Duration,
    sources: Sources,
    consumer: JoinHandle<Result<(), PipelineError>>,
    outputs: Outputs,
    endpoints: Endpoints,
    only_output_gone: Option<Arc<Output>>,
) -> Result<(), AgentError> {
    let deadline = tokio::time::Instant::now() + budget;
    let drained = tokio::time::timeout_at(deadline, async {
        joined(sources.reader, "reader task").await??;
        for task in sources.conntrack.into_iter().chain(sources.kubernetes) {
            joined(task, "conntrack/kubernetes task").await?;
        }
        joined(consumer, "consumer task").await??;
        // The sink went with the consumer: the export task sends what is left, then ends.
        if let Some(task) = outputs.otlp {
            joined(task, "otlp export task").await?;
        }
        if let Some(done) = endpoints.done {
            done.await.map_err(|_| AgentError::HttpGone)??;
        }
        Ok::<(), AgentError>(())
    })
    .await;
    if let Some(o) = &outputs.stdout {
        finish_stdout(o, deadline).await;
    }
    if let Some(o) = only_output_gone {
        return Err(AgentError::OnlyOutputGone {
            name: o.name,
            why: o.failure().unwrap_or_default().to_owned(),
            lost: o.events_lost(),
        });
    }
    drained.map_err(|_| AgentError::ShutdownTimeout(budget))?
}

async fn joined<T>(task: JoinHandle<T>, what: &'static str) -> Result<T, AgentError> {
    task.await.map_err(|e| AgentError::Task(what, e))
}

/// The output thread writes out its queue; a reader that does not read cannot hold the exit.
async fn finish_stdout(o: &Output, deadline: tokio::time::Instant) {
    if tokio::time::timeout_at(deadline, o.finished.notified())
        .await
        .is_err()
    {
        let n = o.lose_queued();
        warn!(
            "output {}: {n} events still queued at the shutdown deadline (its reader does not \
             read) are lost",
            o.name
        );
    }
    // Said last, where it cannot be lost: what no loss record written to it carries.
    let unreported = o.unreported();
    if unreported > 0 {
        warn!(
            "output {}: {unreported} lost events are carried by no loss record it wrote (the \
             last report did not get out before the shutdown deadline)",
            o.name
        );
    }
}
