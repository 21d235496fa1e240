//! Command line and environment. Every flag has an environment variable.

use std::time::Duration;

use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Readable live stream, one line per event.
    Terminal,
    /// JSON Lines on stdout (the contract in the README).
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Color {
    /// Colour when stdout is a terminal and NO_COLOR is unset.
    Auto,
    Always,
    Never,
}

/// Node-level eBPF probe: TCP resets (sent and received, IPv4 and IPv6) and core-dumping
/// signals with their outcome, each with the socket/task, namespace and cgroup it belongs to.
#[derive(Debug, Clone, Parser)]
#[command(name = "probe", version)]
pub struct Cli {
    /// Where events go.
    #[arg(long, value_enum, env = "PROBE_OUTPUT", default_value_t = Output::Terminal)]
    pub output: Output,

    /// Colour of the terminal output.
    #[arg(long, value_enum, env = "PROBE_COLOR", default_value_t = Color::Auto)]
    pub color: Color,

    /// Node name put on every event (default: the kernel's hostname).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,

    /// Size of the kernel ring buffer in bytes (a power of two, at least 4096).
    #[arg(long, env = "PROBE_RINGBUF_BYTES", default_value_t = 4 << 20,
          value_parser = parse_ringbuf_bytes)]
    pub ringbuf_bytes: u32,

    /// Capacity of the queue between the ring-buffer reader and the sinks, in events.
    #[arg(long, env = "PROBE_QUEUE_SIZE", default_value_t = 65536,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub queue_size: u32,

    /// How often lost events are reported as `loss` records (e.g. 5s, 500ms).
    #[arg(long, env = "PROBE_LOSS_INTERVAL", default_value = "5s",
          value_parser = parse_positive_duration)]
    pub loss_interval: Duration,

    /// How long shutdown may take to drain the pipeline after SIGTERM/SIGINT.
    #[arg(long, env = "PROBE_SHUTDOWN_TIMEOUT", default_value = "5s",
          value_parser = parse_positive_duration)]
    pub shutdown_timeout: Duration,

    /// Signals to report, comma-separated names or numbers (default: the core-dumping ones).
    #[arg(long, env = "PROBE_SIGNALS", default_value = crate::signals::CORE_SIGNALS,
          value_parser = crate::signals::parse_signal_mask)]
    pub signals: u64,

    /// How long a core-dumping signal waits for its target's exit (to learn whether a core
    /// was written) before it is reported with `core_dumped: null`.
    #[arg(long, env = "PROBE_CORE_WAIT", default_value = "10s",
          value_parser = parse_positive_duration)]
    pub core_wait: Duration,

    /// Log filter for the agent's own logs on stderr (tracing EnvFilter syntax).
    #[arg(long, env = "PROBE_LOG", default_value = "info")]
    pub log_level: String,
}

fn parse_ringbuf_bytes(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|e| format!("{e}"))?;
    crate::loader::check_ringbuf_bytes(n).map_err(|e| e.to_string())?;
    Ok(n)
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 5s, 500ms)"))?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let cli = Cli::try_parse_from(["probe"]).unwrap();
        assert_eq!(cli.output, Output::Terminal);
        assert_eq!(cli.ringbuf_bytes, 4 << 20);
        assert_eq!(cli.loss_interval, Duration::from_secs(5));
        assert_eq!(cli.signals.count_ones(), 10);
        let cli = Cli::try_parse_from(["probe", "--signals", "SIGSEGV,6"]).unwrap();
        assert_eq!(cli.signals, (1 << 11) | (1 << 6));
    }

    #[test]
    fn rejects_bad_values_naming_the_flag() {
        for args in [
            &["probe", "--output", "xml"][..],
            &["probe", "--queue-size", "0"],
            &["probe", "--loss-interval", "0s"],
            &["probe", "--loss-interval", "soon"],
            &["probe", "--ringbuf-bytes=-1"],
            &["probe", "--ringbuf-bytes", "5000"],
            &["probe", "--ringbuf-bytes", "2048"],
            &["probe", "--signals", "SIGSEGV,SIGBOGUS"],
            &["probe", "--core-wait", "0s"],
        ] {
            let err = Cli::try_parse_from(args).unwrap_err().to_string();
            let flag = args[1].split('=').next().unwrap();
            assert!(err.contains(flag), "{args:?}: {err}");
        }
    }
}
