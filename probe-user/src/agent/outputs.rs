//! The outputs (`--output`): stdout (JSON Lines or the terminal stream) on its own thread
//! behind a bounded queue, and OTLP with its export task; one sink over them.

use std::sync::Arc;

use tokio::task::JoinHandle;

use super::AgentError;
use crate::{
    config::{Cli, Output},
    export::{self, Sink, otlp, queued},
    status::AgentState,
};

/// Records waiting for the stdout output's thread at most, and their bytes at most (Wasm lines
/// are up to --wasm-line-max-bytes each).
const OUTPUT_QUEUE: usize = 8192;
const OUTPUT_QUEUE_BYTES: usize = 32 << 20;

/// What stays with the agent once the sink went to the pipeline.
pub struct Outputs {
    /// The stdout output's queue and thread: a reader that stops reading costs the queue
    /// (counted losses), never the pipeline, the endpoints or signal handling.
    pub stdout: Option<Arc<queued::Output>>,
    /// The OTLP export task (it sends what is left once the pipeline ends).
    pub otlp: Option<JoinHandle<()>>,
}

/// The outputs' names, for the status document.
pub fn names(cli: &Cli) -> Vec<String> {
    cli.output
        .iter()
        .map(|o| format!("{o:?}").to_lowercase())
        .collect()
}

impl Outputs {
    pub fn start(
        cli: &Cli,
        state: &Arc<AgentState>,
        node: &str,
    ) -> Result<(Box<dyn Sink>, Self), AgentError> {
        let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
        let mut outputs = Self {
            stdout: None,
            otlp: None,
        };
        let stdout = export::stdout_sink(
            cli.output.contains(&Output::Json),
            cli.output.contains(&Output::Terminal),
            cli.color.enabled(),
        );
        if let Some((name, inner)) = stdout {
            let (sink, output, _detached) =
                queued::spawn_bounded(name, inner, OUTPUT_QUEUE, OUTPUT_QUEUE_BYTES)
                    .map_err(AgentError::StdoutThread)?;
            sinks.push(Box::new(sink));
            outputs.stdout = Some(output);
        }
        if cli.output.contains(&Output::Otlp) {
            let (sink, task) = otlp::OtlpSink::start(&otlp_config(cli, node), state.clone())?;
            sinks.push(Box::new(sink));
            outputs.otlp = Some(task);
        }
        let sink: Box<dyn Sink> = if sinks.len() == 1 {
            sinks.remove(0)
        } else {
            Box::new(export::Fanout(sinks))
        };
        Ok((sink, outputs))
    }
}

fn otlp_config(cli: &Cli, node: &str) -> otlp::OtlpConfig {
    otlp::OtlpConfig {
        endpoint: cli.otlp_endpoint.as_ref().map(|e| e.expose().to_owned()),
        shown: cli.otlp_endpoint.as_ref().map_or_else(
            || otlp::default_endpoint(cli.otlp_protocol).to_owned(),
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
        resource: otlp::resource(
            &cli.service_name,
            node,
            cli.cluster_name.as_deref(),
            &cli.resource_attributes,
        ),
    }
}
