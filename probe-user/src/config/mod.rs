//! Configuration: command line, environment, and an optional TOML file (a ConfigMap), in that
//! order of precedence, over the defaults. Every flag has an environment variable and a file
//! key of the same name (`output = "json"`, `queue-size = 1024`). Bad input exits with status
//! 2 and a message naming the flag or key.

use std::{ffi::OsString, net::SocketAddr, path::PathBuf, time::Duration};

use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum, parser::ValueSource};
use serde_json::json;

mod file;
pub mod values;

use values::{
    Endpoint, Header, REDACTED, Secretive, duration_between, parse_endpoint, parse_header,
    parse_key_value, parse_log_filter, parse_otlp_timeout, parse_ringbuf_bytes,
};

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}
/// The most events a queue may hold (each is about 1 KiB in memory).
const QUEUE_MAX: u32 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Readable live stream, one line per event.
    Terminal,
    /// JSON Lines on stdout (the contract in docs/json.md).
    Json,
    /// OTLP spans and log records to a collector (`--otlp-*`); combines with the others.
    Otlp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KubeMode {
    Auto,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Color {
    /// Colour when stdout is a terminal and NO_COLOR is unset.
    Auto,
    Always,
    Never,
}

/// Node-level eBPF probe for Kubernetes: TCP resets (sent and received, IPv4 and IPv6), packet
/// drops by reason, conntrack expiries and settings, core-dumping signals with whether a core
/// was written, and the stdout/stderr of Wasm runtimes; each event tied to its process, pod,
/// network namespace and HTTP trace, with findings that name the cause; as a live stream, JSON
/// Lines or OTLP spans and logs.
#[derive(Debug, Clone, Parser)]
#[command(name = "probe", version)]
pub struct Cli {
    /// Where events go, comma-separated: terminal or json (stdout), and/or otlp.
    #[arg(
        long,
        value_enum,
        env = "PROBE_OUTPUT",
        value_delimiter = ',',
        default_value = "terminal"
    )]
    pub output: Vec<Output>,

    /// OTLP collector endpoint, an http:// or https:// URL (default http://localhost:4317 for
    /// grpc, :4318 for http/protobuf; the signal paths /v1/traces and /v1/logs are added for
    /// HTTP). Its userinfo and query are never shown.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_parser = Secretive(parse_endpoint))]
    pub otlp_endpoint: Option<Endpoint>,

    /// OTLP transport.
    #[arg(
        long,
        value_enum,
        env = "OTEL_EXPORTER_OTLP_PROTOCOL",
        default_value = "grpc"
    )]
    pub otlp_protocol: crate::export::otlp::Protocol,

    /// Headers sent with every export, KEY=VALUE, comma-separated (e.g. an API key). Values
    /// are never shown.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_HEADERS", value_delimiter = ',',
          value_parser = Secretive(parse_header))]
    pub otlp_headers: Vec<Header>,

    /// Timeout of one export: milliseconds (as OTEL_EXPORTER_OTLP_TIMEOUT has it) or a
    /// duration such as 10s; 100ms to 5m.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TIMEOUT", allow_hyphen_values = true,
          default_value = "10000", value_parser = parse_otlp_timeout)]
    pub otlp_timeout: Duration,

    /// Spans (and, separately, log records) waiting for the collector at most; more are
    /// dropped and counted. 1 to 1048576.
    #[arg(long, env = "PROBE_OTLP_QUEUE_SIZE", allow_hyphen_values = true, default_value_t = 8192,
          value_parser = clap::value_parser!(u32).range(1..=QUEUE_MAX as i64))]
    pub otlp_queue_size: u32,

    /// Encoded bytes of the records waiting for the collector at most, per signal (spans, log
    /// records); more are dropped and counted. 1 MiB to 1 GiB.
    #[arg(long, env = "PROBE_OTLP_QUEUE_BYTES", allow_hyphen_values = true, default_value_t = 32 << 20,
          value_parser = clap::value_parser!(u32).range((1 << 20)..=(1 << 30)))]
    pub otlp_queue_bytes: u32,

    /// The node's OTLP budget: spans sent per second at most (a burst of one second's worth).
    /// Records over it are still written in full to the other outputs and counted in one
    /// `summary` span per kind and second (folded_by=otlp_budget): folded, never dropped.
    /// 0: no limit; 0 to 1000000.
    #[arg(long, env = "PROBE_OTLP_MAX_SPANS", allow_hyphen_values = true, default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub otlp_max_spans: u32,

    /// The node's OTLP budget of log records per second (Wasm output lines), as
    /// --otlp-max-spans; 0: no limit; 0 to 1000000.
    #[arg(long, env = "PROBE_OTLP_MAX_LOGS", allow_hyphen_values = true, default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub otlp_max_logs: u32,

    /// Encoded bytes of one export request at most (also at most 512 records); a collector that
    /// answers 413 gets the batch in halves. 4 KiB to 16 MiB.
    #[arg(long, env = "PROBE_OTLP_BATCH_BYTES", allow_hyphen_values = true, default_value_t = 1 << 20,
          value_parser = clap::value_parser!(u32).range(4096..=(16 << 20)))]
    pub otlp_batch_bytes: u32,

    /// How long the first waiting record waits for a batch to fill before it is sent (a
    /// steady flow makes few large requests); 0 to 1m.
    #[arg(long, env = "PROBE_OTLP_BATCH_DELAY", allow_hyphen_values = true, default_value = "1s",
          value_parser = duration_between(ms(0), secs(60)))]
    pub otlp_batch_delay: Duration,

    /// How often the event metrics (`probe_tcp_resets_total`...: the families of /metrics)
    /// are exported as OTLP cumulative sums, with their exemplars; and once at shutdown.
    /// 1s to 1h.
    #[arg(long, env = "PROBE_OTLP_METRICS_INTERVAL", allow_hyphen_values = true, default_value = "30s",
          value_parser = duration_between(secs(1), secs(3600)))]
    pub otlp_metrics_interval: Duration,

    /// service.name of the OTLP resource.
    #[arg(long, env = "OTEL_SERVICE_NAME", default_value = "node-probe")]
    pub service_name: String,

    /// More resource attributes, KEY=VALUE, comma-separated.
    #[arg(long, env = "OTEL_RESOURCE_ATTRIBUTES", value_delimiter = ',',
          value_parser = parse_key_value)]
    pub resource_attributes: Vec<(String, String)>,

    /// Colour of the terminal output.
    #[arg(long, value_enum, env = "PROBE_COLOR", default_value_t = Color::Auto)]
    pub color: Color,

    /// Node name put on every event (default: the kernel's hostname).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,

    /// Size of the kernel ring buffer in bytes (a power of two from 4096 to 256 MiB).
    #[arg(long, env = "PROBE_RINGBUF_BYTES", allow_hyphen_values = true, default_value_t = 4 << 20,
          value_parser = parse_ringbuf_bytes)]
    pub ringbuf_bytes: u32,

    /// Capacity of the queue between the ring-buffer reader and the sinks, in events (1 to
    /// 1048576).
    #[arg(long, env = "PROBE_QUEUE_SIZE", allow_hyphen_values = true, default_value_t = 65536,
          value_parser = clap::value_parser!(u32).range(1..=QUEUE_MAX as i64))]
    pub queue_size: u32,

    /// How long a kernel event may wait in the ring buffer before the agent reads it, at most:
    /// while events keep coming the agent reads them in batches up to this far apart (fewer
    /// wake-ups, less CPU per event); a lone event is read within 10ms. 10ms to 1s.
    #[arg(long, env = "PROBE_READ_DELAY", allow_hyphen_values = true, default_value = "200ms",
          value_parser = duration_between(ms(10), secs(1)))]
    pub read_delay: Duration,

    /// How often lost events are reported as `loss` records (e.g. 5s, 500ms); 100ms to 1h.
    #[arg(long, env = "PROBE_LOSS_INTERVAL", allow_hyphen_values = true, default_value = "5s",
          value_parser = duration_between(ms(100), secs(3600)))]
    pub loss_interval: Duration,

    /// How long shutdown may take to drain the pipeline after SIGTERM/SIGINT; 100ms to 5m.
    #[arg(long, env = "PROBE_SHUTDOWN_TIMEOUT", allow_hyphen_values = true, default_value = "5s",
          value_parser = duration_between(ms(100), secs(300)))]
    pub shutdown_timeout: Duration,

    /// Signals to report, comma-separated names or numbers (default: the core-dumping ones).
    #[arg(long, env = "PROBE_SIGNALS", default_value = crate::model::signals::CORE_SIGNALS,
          value_parser = crate::model::signals::parse_signal_mask)]
    pub signals: u64,

    /// How long a core-dumping signal waits for its target's exit (to learn whether a core
    /// was written) before it is reported with `core_dumped: null`; 100ms to 10m.
    #[arg(long, env = "PROBE_CORE_WAIT", allow_hyphen_values = true, default_value = "10s",
          value_parser = duration_between(ms(100), secs(600)))]
    pub core_wait: Duration,

    /// Bytes per captured chunk of a Wasm runtime's write to stdout/stderr (1-4096; 0
    /// disables capture). A write is copied in up to 16 chunks; beyond that it is truncated.
    #[arg(long, env = "PROBE_CAPTURE_BYTES", default_value_t = 4096, allow_hyphen_values = true,
          value_parser = clap::value_parser!(u32).range(0..=4096))]
    pub capture_bytes: u32,

    /// Executables whose stdout/stderr is captured: names, or prefixes ending in *.
    #[arg(long, env = "PROBE_WASM_RUNTIMES", default_value = crate::runtimes::DEFAULT_RUNTIMES,
          value_parser = parse_runtime_list)]
    pub wasm_runtimes: Runtimes,

    /// The most bytes of one Wasm output record: a longer line (or output without newlines)
    /// goes out in records of this size marked `partial` (as CRI logs split at 16 KiB);
    /// 64 to 1048576.
    #[arg(long, env = "PROBE_WASM_LINE_MAX_BYTES", default_value_t = 16384, allow_hyphen_values = true,
          value_parser = clap::value_parser!(u32).range(64..=1_048_576))]
    pub wasm_line_max_bytes: u32,

    /// A Wasm output line without its newline goes out (marked `partial`) after this long
    /// without more output from that stream; 10ms to 1m.
    #[arg(long, env = "PROBE_WASM_LINE_IDLE", allow_hyphen_values = true, default_value = "500ms",
          value_parser = duration_between(ms(10), secs(60)))]
    pub wasm_line_idle: Duration,

    /// Watch conntrack expiries and settings in the agent's own network namespace (the host's
    /// in a hostNetwork DaemonSet).
    #[arg(long, env = "PROBE_CONNTRACK", default_value_t = true, action = clap::ArgAction::Set)]
    pub conntrack: bool,

    /// More network namespaces to watch, by path (/run/netns/NAME, /proc/PID/ns/net);
    /// repeatable or comma-separated.
    #[arg(long, env = "PROBE_CONNTRACK_NETNS", value_delimiter = ',')]
    pub conntrack_netns: Vec<PathBuf>,

    /// How often the conntrack sysctls of each watched namespace are re-read; 100ms to 1h.
    #[arg(long, env = "PROBE_CONNTRACK_SETTINGS_INTERVAL", allow_hyphen_values = true,
          default_value = "10s", value_parser = duration_between(ms(100), secs(3600)))]
    pub conntrack_settings_interval: Duration,

    /// How long after a conntrack expiry a reset or drop on the same flow joins it into a
    /// finding; 1s to 24h.
    #[arg(long, env = "PROBE_CONNTRACK_WINDOW", allow_hyphen_values = true, default_value = "60s",
          value_parser = duration_between(secs(1), secs(86400)))]
    pub conntrack_window: Duration,

    /// Turn on net.netfilter.nf_conntrack_timestamp in watched namespaces where it is off, so
    /// expiries carry established_for_s (false: never change a node setting).
    #[arg(long, env = "PROBE_CONNTRACK_TIMESTAMPS", default_value_t = true,
          action = clap::ArgAction::Set)]
    pub conntrack_timestamps: bool,

    /// Also watch the network namespaces of this node's pods (not on the host network) while
    /// they exist; needs Kubernetes enrichment.
    #[arg(long, env = "PROBE_CONNTRACK_PODS", default_value_t = true,
          action = clap::ArgAction::Set)]
    pub conntrack_pods: bool,

    /// Kubernetes enrichment: `auto` uses KUBECONFIG, ~/.kube/config or the in-cluster service
    /// account when there is one (and runs on without when there is none); `off` never connects.
    #[arg(long, value_enum, env = "PROBE_KUBERNETES", default_value_t = KubeMode::Auto)]
    pub kubernetes: KubeMode,

    /// `k8s.cluster.name` of every event (default: from well-known node labels, else none).
    #[arg(long, env = "CLUSTER_NAME")]
    pub cluster_name: Option<String>,

    /// RuntimeClasses of Wasm pods: their containers' stdout/stderr is captured whatever the
    /// executable (pods with crun's `module.wasm.image/variant` annotation too).
    #[arg(
        long,
        env = "PROBE_WASM_RUNTIME_CLASSES",
        value_delimiter = ',',
        default_value = "wasmedge,wasmtime,spin,wasmer,crun-wasm,runwasi"
    )]
    pub wasm_runtime_classes: Vec<String>,

    /// Pod labels copied onto events as `k8s.pod.labels`.
    #[arg(
        long,
        env = "PROBE_K8S_POD_LABELS",
        value_delimiter = ',',
        default_value = "app,app.kubernetes.io/name,app.kubernetes.io/instance,app.kubernetes.io/version,app.kubernetes.io/component"
    )]
    pub k8s_pod_labels: Vec<String>,

    /// Read the W3C traceparent of plaintext HTTP/1.x requests on the TCP send path, so kernel
    /// events of that connection join the request's trace (false: the hook is not attached).
    #[arg(long, env = "PROBE_HTTP_TRACE_CONTEXT", default_value_t = true,
          action = clap::ArgAction::Set)]
    pub http_trace_context: bool,

    /// Kinds of hook not to use, comma-separated (a kernel whose fentry or kprobes misbehave):
    /// each capability takes its next candidate (see `--check-kernel`).
    #[arg(long, env = "PROBE_AVOID_HOOKS", value_enum, value_delimiter = ',')]
    pub avoid_hooks: Vec<crate::loader::hooks::HookKind>,

    /// Pin capabilities to a kind of hook, comma-separated CAPABILITY=KIND (e.g.
    /// reset_sent_unowned=kprobe): the capability tries only its candidates of that kind and
    /// has no hook when they do not attach (see `--check-kernel` for the capabilities and
    /// their candidates).
    #[arg(long, env = "PROBE_HOOKS", value_delimiter = ',', value_name = "CAPABILITY=KIND",
          value_parser = values::hook_pin)]
    pub hooks: Vec<crate::loader::hooks::HookPin>,

    /// Verifier log of a rejected program, logged at debug level (`--log-level probe=debug`).
    #[arg(long, value_enum, env = "PROBE_VERIFIER_LOG", default_value_t = values::VerifierLog::Stats)]
    pub verifier_log: values::VerifierLog,

    /// Log filter for the agent's own logs on stderr (tracing EnvFilter syntax: info,
    /// probe=debug,kube=warn).
    #[arg(long, env = "PROBE_LOG", default_value = "info", value_parser = parse_log_filter)]
    pub log_level: String,

    /// Format of the agent's own logs on stderr.
    #[arg(long, value_enum, env = "PROBE_LOG_FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Address of the health, status and metrics endpoints, or "none".
    #[arg(long, env = "PROBE_HTTP_ADDR", default_value = "127.0.0.1:9464",
          value_parser = parse_http_addr)]
    pub http_addr: HttpAddr,

    /// Connections to the endpoints open at once at most; at the cap the connection idle the
    /// longest is closed to serve a new one (a health probe is always answered); 4 to 4096.
    #[arg(long, env = "PROBE_HTTP_MAX_CONNECTIONS", default_value_t = 128, allow_hyphen_values = true,
          value_parser = clap::value_parser!(u32).range(4..=4096))]
    pub http_max_connections: u32,

    /// An endpoint connection that moves no byte for this long is closed; a request head must
    /// arrive within it too (at most 10s); 100ms to 1h.
    #[arg(long, env = "PROBE_HTTP_IDLE_TIMEOUT", allow_hyphen_values = true, default_value = "60s",
          value_parser = duration_between(ms(100), secs(3600)))]
    pub http_idle_timeout: Duration,

    /// Storm folding: resets of one key (direction, reason, pod or network namespace, service
    /// port) sent in full per CPU and window; the rest of the window is counted in the kernel
    /// and written as one `summary` record with the exact count. 0 turns folding off (every
    /// reset is a record: a storm may fill the ring buffer, counted as lost); 0 to 100000.
    #[arg(long, env = "PROBE_FOLD_FIRST", default_value_t = 10, allow_hyphen_values = true,
          value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub fold_first: u32,

    /// The folding window; 100ms to 1h.
    #[arg(long, env = "PROBE_FOLD_WINDOW", allow_hyphen_values = true, default_value = "1s",
          value_parser = duration_between(ms(100), secs(3600)))]
    pub fold_window: Duration,

    /// Series with pod labels the event metrics (`probe_tcp_resets_total`...) hold at most;
    /// events of a new pod beyond it count in each family's overflow series
    /// (`pod="_overflow"`); 100 to 1000000.
    #[arg(long, env = "PROBE_METRICS_MAX_SERIES", default_value_t = 10_000, allow_hyphen_values = true,
          value_parser = clap::value_parser!(u32).range(100..=1_000_000))]
    pub metrics_max_series: u32,

    /// An event series without an event for this long is removed from /metrics (a pod that
    /// is gone stops costing a series); 1m to 30d.
    #[arg(long, env = "PROBE_METRICS_SERIES_IDLE", allow_hyphen_values = true, default_value = "1h",
          value_parser = duration_between(secs(60), secs(30 * 86_400)))]
    pub metrics_series_idle: Duration,

    /// TOML file with any of these flags as keys (e.g. mounted from a ConfigMap).
    #[arg(long, env = "PROBE_CONFIG")]
    pub config: Option<PathBuf>,

    /// Print the effective configuration as JSON and exit.
    #[arg(long, env = "PROBE_PRINT_CONFIG", conflicts_with_all = ["print_requirements", "check_kernel"])]
    pub print_config: bool,

    /// Print what the agent needs from its host (paths, API resources) as JSON and exit.
    #[arg(
        long,
        env = "PROBE_PRINT_REQUIREMENTS",
        conflicts_with = "check_kernel"
    )]
    pub print_requirements: bool,

    /// Load and attach every program, print which hook serves each capability on this kernel
    /// (or why none does), detach and exit: 0 when every capability has a hook, 1 otherwise.
    #[arg(long, env = "PROBE_CHECK_KERNEL")]
    pub check_kernel: bool,
}

/// `--wasm-runtimes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runtimes(pub Vec<crate::runtimes::RuntimePattern>);

impl Runtimes {
    /// As written: `name` or `prefix*`.
    pub fn names(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|p| format!("{}{}", p.name, if p.prefix { "*" } else { "" }))
            .collect()
    }
}

fn parse_runtime_list(s: &str) -> Result<Runtimes, String> {
    crate::runtimes::parse_runtimes(s).map(Runtimes)
}

/// `--http-addr`: a socket address, or disabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpAddr(pub Option<SocketAddr>);

fn parse_http_addr(s: &str) -> Result<HttpAddr, String> {
    if s == "none" {
        return Ok(HttpAddr(None));
    }
    s.parse()
        .map(|a| HttpAddr(Some(a)))
        .map_err(|e| format!("{e} (expected HOST:PORT such as 0.0.0.0:9464, or none)"))
}

/// Adds to a value error where the value came from when it was not the command line: the
/// environment variable, or the config file's key (clap names only the flag).
fn attribute(mut e: clap::Error, args: &[OsString], file: Option<&std::path::Path>) -> clap::Error {
    use clap::error::{ContextKind, ContextValue};
    let Some(ContextValue::String(invalid)) = e.get(ContextKind::InvalidArg) else {
        return e;
    };
    let Some(long) = invalid
        .strip_prefix("--")
        .and_then(|s| s.split([' ', '=']).next())
        .map(str::to_owned)
    else {
        return e;
    };
    let on_command_line = args.iter().skip(1).any(|a| {
        let a = a.to_string_lossy();
        a == format!("--{long}") || a.starts_with(&format!("--{long}="))
    });
    if on_command_line {
        return e;
    }
    let command = Cli::command();
    let env = command
        .get_arguments()
        .find(|a| a.get_long() == Some(long.as_str()))
        .and_then(|a| a.get_env())
        .filter(|var| std::env::var_os(var).is_some())
        .map(|var| var.to_string_lossy().into_owned());
    let from = match (env, file) {
        (Some(var), _) => format!("the value came from the environment variable {var}"),
        (None, Some(path)) => format!("the value came from key {long:?} of {}", path.display()),
        (None, None) => return e,
    };
    e.insert(
        ContextKind::Suggested,
        ContextValue::StyledStrs(vec![from.into()]),
    );
    e
}

/// An error in the configuration: the message names the flag or key; exit status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl Cli {
    /// Parses the command line and environment, then fills what is still at its default from
    /// the `--config` file. Every error exits with status 2 and names where the bad value came
    /// from: the flag, the environment variable, or the file and its key.
    pub fn load(args: Vec<OsString>) -> Result<Self, clap::Error> {
        let matches = Self::command()
            .try_get_matches_from(&args)
            .map_err(|e| attribute(e, &args, None))?;
        let cli = Self::from_arg_matches(&matches).map_err(|e| attribute(e, &args, None))?;
        let Some(path) = cli.config.clone() else {
            return cli.checked();
        };
        let file = file::read_config_file(&path)
            .map_err(|e| Self::command().error(clap::error::ErrorKind::Io, e.to_string()))?;
        let mut extra = Vec::new();
        let command = Self::command();
        for (key, value) in &file {
            let arg = command
                .get_arguments()
                .find(|a| a.get_long() == Some(key.as_str()) && key != "config")
                .ok_or_else(|| {
                    Self::command().error(
                        clap::error::ErrorKind::UnknownArgument,
                        format!("{}: unknown key {:?}", path.display(), file::shown(key)),
                    )
                })?;
            if matches.value_source(arg.get_id().as_str()) == Some(ValueSource::DefaultValue) {
                extra.push(OsString::from(format!("--{key}={value}")));
            }
        }
        let mut all = args.clone();
        all.extend(extra);
        Self::try_parse_from(all)
            .map_err(|e| attribute(e, &args, Some(&path)))?
            .checked()
    }

    /// What no single flag's parser can see: conflicting values of different flags.
    fn checked(self) -> Result<Self, clap::Error> {
        if let Some(twice) = self.hooks.iter().enumerate().find(|(i, p)| {
            self.hooks[..*i]
                .iter()
                .any(|q| q.capability == p.capability)
        }) {
            return Err(Self::command().error(
                clap::error::ErrorKind::ArgumentConflict,
                format!("--hooks: {} is pinned twice", twice.1.capability),
            ));
        }
        if self.output.contains(&Output::Json) && self.output.contains(&Output::Terminal) {
            return Err(Self::command().error(
                clap::error::ErrorKind::ArgumentConflict,
                "--output: terminal and json both write to stdout; choose one (otlp combines \
                 with either)",
            ));
        }
        Ok(self)
    }

    /// The effective configuration, as `--print-config` and /health/status show it.
    pub fn effective(&self) -> serde_json::Value {
        let signals: Vec<String> = (1..64)
            .filter(|n| self.signals & (1u64 << n) != 0)
            .map(crate::model::signals::signal_name)
            .collect();
        let mut effective = json!({
            "output": self.output.iter().map(|o| format!("{o:?}").to_lowercase()).collect::<Vec<_>>().join(","),
            "otlp-endpoint": self.otlp_endpoint.as_ref().map(Endpoint::redacted),
            "otlp-headers": self.otlp_headers.iter().map(|h| format!("{}={REDACTED}", h.key)).collect::<Vec<_>>(),
            "otlp-protocol": match self.otlp_protocol {
                crate::export::otlp::Protocol::Grpc => "grpc",
                crate::export::otlp::Protocol::HttpProtobuf => "http/protobuf",
            },
            "otlp-timeout": humantime::format_duration(self.otlp_timeout).to_string(),
            "otlp-queue-size": self.otlp_queue_size,
            "otlp-queue-bytes": self.otlp_queue_bytes,
            "otlp-batch-bytes": self.otlp_batch_bytes,
            "otlp-batch-delay": humantime::format_duration(self.otlp_batch_delay).to_string(),
            "service-name": self.service_name,
            "color": format!("{:?}", self.color).to_lowercase(),
            "node-name": self.node_name,
            "ringbuf-bytes": self.ringbuf_bytes,
            "queue-size": self.queue_size,
            "loss-interval": humantime::format_duration(self.loss_interval).to_string(),
            "shutdown-timeout": humantime::format_duration(self.shutdown_timeout).to_string(),
            "signals": signals,
            "core-wait": humantime::format_duration(self.core_wait).to_string(),
            "capture-bytes": self.capture_bytes,
            "wasm-runtimes": self.wasm_runtimes.names(),
            "wasm-line-max-bytes": self.wasm_line_max_bytes,
            "wasm-line-idle": humantime::format_duration(self.wasm_line_idle).to_string(),
            "conntrack": self.conntrack,
            "conntrack-netns": self.conntrack_netns,
            "conntrack-settings-interval": humantime::format_duration(self.conntrack_settings_interval).to_string(),
            "conntrack-window": humantime::format_duration(self.conntrack_window).to_string(),
            "conntrack-timestamps": self.conntrack_timestamps,
            "conntrack-pods": self.conntrack_pods,
            "kubernetes": format!("{:?}", self.kubernetes).to_lowercase(),
            "cluster-name": self.cluster_name,
            "k8s-pod-labels": self.k8s_pod_labels,
            "http-trace-context": self.http_trace_context,
            "avoid-hooks": self.avoid_hooks.iter().map(|k| k.name()).collect::<Vec<_>>(),
            "verifier-log": format!("{:?}", self.verifier_log).to_lowercase(),
            "wasm-runtime-classes": self.wasm_runtime_classes,
            "log-level": self.log_level,
            "log-format": format!("{:?}", self.log_format).to_lowercase(),
            "http-addr": self.http_addr.0.map_or_else(|| "none".to_owned(), |a| a.to_string()),
            "http-max-connections": self.http_max_connections,
            "http-idle-timeout": humantime::format_duration(self.http_idle_timeout).to_string(),
            "config": self.config,
        });
        // Beyond what one `json!` expands within the recursion limit.
        effective["fold-first"] = json!(self.fold_first);
        effective["read-delay"] = json!(humantime::format_duration(self.read_delay).to_string());
        effective["otlp-metrics-interval"] =
            json!(humantime::format_duration(self.otlp_metrics_interval).to_string());
        effective["otlp-max-spans"] = json!(self.otlp_max_spans);
        effective["otlp-max-logs"] = json!(self.otlp_max_logs);
        effective["fold-window"] = json!(humantime::format_duration(self.fold_window).to_string());
        effective["metrics-max-series"] = json!(self.metrics_max_series);
        effective["metrics-series-idle"] =
            json!(humantime::format_duration(self.metrics_series_idle).to_string());
        effective["hooks"] = json!(
            self.hooks
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        );
        effective
    }
}

#[cfg(test)]
mod tests;
