//! `probe`: parses the configuration, then runs the agent (`agent::run`: the status endpoints,
//! the kernel side, the sources and outputs, and the pipeline between them).

mod agent;
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

use std::{io::IsTerminal, process::ExitCode};

use tracing::error;

use crate::config::{Cli, LogFormat};

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
        return agent::check_kernel(&cli);
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
    match runtime.block_on(agent::run(&cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
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
