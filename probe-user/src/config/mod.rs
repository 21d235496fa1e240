//! Configuration: command line, environment, and an optional TOML file (a ConfigMap), in that
//! order of precedence, over the defaults. Every flag has an environment variable and a file
//! key of the same name (`output = "json"`, `queue-size = 1024`). Bad input exits with status
//! 2 and a message naming the flag or key.

use std::{ffi::OsString, net::SocketAddr, path::PathBuf, time::Duration};

use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum, parser::ValueSource};
use serde_json::json;

mod file;
#[cfg(test)]
mod flags_doc;
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
    /// `terminal` (live readable stream) or `json` (JSON Lines) on stdout, and/or `otlp`: e.g.
    /// `json,otlp`; see Outputs (docs/outputs.md) for a stdout that is not read or goes away.
    #[arg(
        value_name = "LIST",
        long,
        value_enum,
        env = "PROBE_OUTPUT",
        value_delimiter = ',',
        default_value = "terminal"
    )]
    pub output: Vec<Output>,

    /// OTLP collector endpoint, an `http://` or `https://` URL; for HTTP the signal paths
    /// `/v1/traces`, `/v1/logs` and `/v1/metrics` are appended; its userinfo and query are never
    /// shown. Default when unset: `http://localhost:4317` (grpc), `:4318` (http/protobuf).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_parser = Secretive(parse_endpoint), value_name = "URL")]
    pub otlp_endpoint: Option<Endpoint>,

    /// OTLP transport.
    #[arg(
        value_name = "grpc|http/protobuf",
        long,
        value_enum,
        env = "OTEL_EXPORTER_OTLP_PROTOCOL",
        default_value = "grpc"
    )]
    pub otlp_protocol: crate::export::otlp::Protocol,

    /// Headers of every export, `KEY=VALUE`, comma-separated (e.g. API keys); values are never
    /// shown.
    #[arg(value_name = "K=V,...", long, env = "OTEL_EXPORTER_OTLP_HEADERS", value_delimiter = ',',
          value_parser = Secretive(parse_header))]
    pub otlp_headers: Vec<Header>,

    /// Timeout of one export: milliseconds (as `OTEL_EXPORTER_OTLP_TIMEOUT` has it) or a duration
    /// like `10s` (100ms-5m).
    #[arg(value_name = "MS|D", long, env = "OTEL_EXPORTER_OTLP_TIMEOUT", allow_hyphen_values = true,
          default_value = "10000", value_parser = parse_otlp_timeout)]
    pub otlp_timeout: Duration,

    /// Spans (and, separately, log records) waiting for the collector at most (1-1048576); more are
    /// dropped and counted.
    #[arg(value_name = "N", long, env = "PROBE_OTLP_QUEUE_SIZE", allow_hyphen_values = true, default_value_t = 8192,
          value_parser = clap::value_parser!(u32).range(1..=QUEUE_MAX as i64))]
    pub otlp_queue_size: u32,

    /// Encoded bytes waiting for the collector at most, per signal (1 MiB-1 GiB); more are dropped
    /// and counted.
    #[arg(value_name = "N", long, env = "PROBE_OTLP_QUEUE_BYTES", allow_hyphen_values = true, default_value_t = 32 << 20,
          value_parser = clap::value_parser!(u32).range((1 << 20)..=(1 << 30)))]
    pub otlp_queue_bytes: u32,

    /// The node's OTLP budget: spans sent per second at most (a burst of one second's worth; 0 = no
    /// limit, 0-1000000). Records over it are still written in full to the other outputs and
    /// counted in one `summary` span per kind and second (`folded_by: otlp_budget`): folded, never
    /// dropped (`probe_otlp_over_budget_records_total`).
    #[arg(value_name = "N", long, env = "PROBE_OTLP_MAX_SPANS", allow_hyphen_values = true, default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub otlp_max_spans: u32,

    /// The node's OTLP budget of log records (Wasm output lines) per second, as `--otlp-max-spans`
    /// (0 = no limit, 0-1000000).
    #[arg(value_name = "N", long, env = "PROBE_OTLP_MAX_LOGS", allow_hyphen_values = true, default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub otlp_max_logs: u32,

    /// Encoded bytes of one export request at most (and at most 512 records; 4 KiB-16 MiB).
    #[arg(value_name = "N", long, env = "PROBE_OTLP_BATCH_BYTES", allow_hyphen_values = true, default_value_t = 1 << 20,
          value_parser = clap::value_parser!(u32).range(4096..=(16 << 20)))]
    pub otlp_batch_bytes: u32,

    /// How long the first waiting record waits for a batch to fill before it is sent (0-1m): a
    /// steady flow makes few large requests.
    #[arg(value_name = "D", long, env = "PROBE_OTLP_BATCH_DELAY", allow_hyphen_values = true, default_value = "1s",
          value_parser = duration_between(ms(0), secs(60)))]
    pub otlp_batch_delay: Duration,

    /// How often the event metrics (the families of `/metrics`) are exported as OTLP cumulative
    /// sums with exemplars, and once at shutdown (1s-1h; docs/metrics.md).
    #[arg(value_name = "D", long, env = "PROBE_OTLP_METRICS_INTERVAL", allow_hyphen_values = true, default_value = "30s",
          value_parser = duration_between(secs(1), secs(3600)))]
    pub otlp_metrics_interval: Duration,

    /// `service.name` of the OTLP resource.
    #[arg(
        long,
        env = "OTEL_SERVICE_NAME",
        default_value = "node-probe",
        value_name = "NAME"
    )]
    pub service_name: String,

    /// More OTLP resource attributes, `KEY=VALUE`, comma-separated.
    #[arg(value_name = "K=V,...", long, env = "OTEL_RESOURCE_ATTRIBUTES", value_delimiter = ',',
          value_parser = parse_key_value)]
    pub resource_attributes: Vec<(String, String)>,

    /// Colour of the terminal stream (auto: stdout is a tty and `NO_COLOR` unset).
    #[arg(long, value_enum, env = "PROBE_COLOR", default_value_t = Color::Auto, value_name = "auto|always|never")]
    pub color: Color,

    /// The `node` key of every record. Default when unset: the kernel's hostname.
    #[arg(long, env = "NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,

    /// Kernel ring buffer size in bytes (a power of two from 4096 to 256 MiB).
    #[arg(value_name = "N", long, env = "PROBE_RINGBUF_BYTES", allow_hyphen_values = true, default_value_t = 4 << 20,
          value_parser = parse_ringbuf_bytes)]
    pub ringbuf_bytes: u32,

    /// Events queued between the ring-buffer reader and the sinks at most (1-1048576).
    #[arg(value_name = "N", long, env = "PROBE_QUEUE_SIZE", allow_hyphen_values = true, default_value_t = 65536,
          value_parser = clap::value_parser!(u32).range(1..=QUEUE_MAX as i64))]
    pub queue_size: u32,

    /// How long a kernel event may wait in the ring buffer at most (10ms-1s): while events keep
    /// coming the reader gathers them this long (fewer wake-ups, less CPU per event); a lone event
    /// is read within 10 ms.
    #[arg(value_name = "D", long, env = "PROBE_READ_DELAY", allow_hyphen_values = true, default_value = "200ms",
          value_parser = duration_between(ms(10), secs(1)))]
    pub read_delay: Duration,

    /// How often losses are reported as `loss` records (100ms-1h).
    #[arg(value_name = "D", long, env = "PROBE_LOSS_INTERVAL", allow_hyphen_values = true, default_value = "5s",
          value_parser = duration_between(ms(100), secs(3600)))]
    pub loss_interval: Duration,

    /// How long draining may take after SIGTERM/SIGINT (100ms-5m).
    #[arg(value_name = "D", long, env = "PROBE_SHUTDOWN_TIMEOUT", allow_hyphen_values = true, default_value = "5s",
          value_parser = duration_between(ms(100), secs(300)))]
    pub shutdown_timeout: Duration,

    /// Signals to report: names or numbers, comma-separated
    /// (`SIGQUIT,SIGILL,SIGTRAP,SIGABRT,SIGBUS,SIGFPE,SIGSEGV,SIGXCPU,SIGXFSZ,SIGSYS`).
    #[arg(value_name = "LIST", long, env = "PROBE_SIGNALS", default_value = crate::model::signals::CORE_SIGNALS,
          value_parser = crate::model::signals::parse_signal_mask)]
    pub signals: u64,

    /// How long a core-dumping signal waits for its target's exit (to learn whether a core was
    /// written) before it is reported with `core_dumped: null` (100ms-10m).
    #[arg(value_name = "D", long, env = "PROBE_CORE_WAIT", allow_hyphen_values = true, default_value = "10s",
          value_parser = duration_between(ms(100), secs(600)))]
    pub core_wait: Duration,

    /// Bytes per captured chunk of a Wasm runtime's write to stdout/stderr (1-4096); a write is
    /// copied in up to 16 chunks, beyond that the record is `truncated`; `0` disables capture.
    #[arg(value_name = "N", long, env = "PROBE_CAPTURE_BYTES", default_value_t = 4096, allow_hyphen_values = true,
          value_parser = clap::value_parser!(u32).range(0..=4096))]
    pub capture_bytes: u32,

    /// Executables whose stdout/stderr is captured: names, or prefixes ending in `*`.
    #[arg(value_name = "LIST", long, env = "PROBE_WASM_RUNTIMES", default_value = crate::runtimes::DEFAULT_RUNTIMES,
          value_parser = parse_runtime_list)]
    pub wasm_runtimes: Runtimes,

    /// The most bytes of one `wasm_output` record (64-1048576): a longer line, or output that never
    /// ends a line, goes out in `partial` records of this size.
    #[arg(value_name = "N", long, env = "PROBE_WASM_LINE_MAX_BYTES", default_value_t = 16384, allow_hyphen_values = true,
          value_parser = clap::value_parser!(u32).range(64..=1_048_576))]
    pub wasm_line_max_bytes: u32,

    /// A line without its newline goes out (`partial`) after this long without more output from its
    /// stream (10ms-1m).
    #[arg(value_name = "D", long, env = "PROBE_WASM_LINE_IDLE", allow_hyphen_values = true, default_value = "500ms",
          value_parser = duration_between(ms(10), secs(60)))]
    pub wasm_line_idle: Duration,

    /// Watch conntrack expiries and settings in the agent's own network namespace (the host's, with
    /// `hostNetwork`).
    #[arg(long, env = "PROBE_CONNTRACK", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub conntrack: bool,

    /// More namespaces to watch, by path (`/run/netns/NAME`, `/proc/PID/ns/net`); repeatable or
    /// comma-separated.
    #[arg(
        long,
        env = "PROBE_CONNTRACK_NETNS",
        value_delimiter = ',',
        value_name = "PATHS"
    )]
    pub conntrack_netns: Vec<PathBuf>,

    /// How often each watched namespace's conntrack sysctls are re-read (100ms-1h; a change emits
    /// `conntrack_settings`).
    #[arg(value_name = "D", long, env = "PROBE_CONNTRACK_SETTINGS_INTERVAL", allow_hyphen_values = true,
          default_value = "10s", value_parser = duration_between(ms(100), secs(3600)))]
    pub conntrack_settings_interval: Duration,

    /// How long after an expiry a reset or drop on the same flow joins it into a finding (1s-24h).
    #[arg(value_name = "D", long, env = "PROBE_CONNTRACK_WINDOW", allow_hyphen_values = true, default_value = "60s",
          value_parser = duration_between(secs(1), secs(86400)))]
    pub conntrack_window: Duration,

    /// Turn on `net.netfilter.nf_conntrack_timestamp` where it is off (expiries then carry
    /// `established_for_s`); `false` never changes a node setting.
    #[arg(value_name = "BOOL", long, env = "PROBE_CONNTRACK_TIMESTAMPS", default_value_t = true,
          action = clap::ArgAction::Set)]
    pub conntrack_timestamps: bool,

    /// Also watch the network namespaces of this node's pods (not on the host network) while they
    /// exist, found every 5 s through their containers' processes; needs Kubernetes enrichment.
    #[arg(value_name = "BOOL", long, env = "PROBE_CONNTRACK_PODS", default_value_t = true,
          action = clap::ArgAction::Set)]
    pub conntrack_pods: bool,

    /// Kubernetes enrichment: `auto` uses `KUBECONFIG`, `~/.kube/config` or the in-cluster service
    /// account when there is one and runs on without (one log line) when there is none.
    #[arg(long, value_enum, env = "PROBE_KUBERNETES", default_value_t = KubeMode::Auto, value_name = "auto|off")]
    pub kubernetes: KubeMode,

    /// `k8s.cluster.name` of every record. Default when unset: the node's
    /// `alpha.eksctl.io/cluster-name` or `kubernetes.azure.com/cluster` label, else absent.
    #[arg(long, env = "CLUSTER_NAME", value_name = "NAME")]
    pub cluster_name: Option<String>,

    /// RuntimeClasses of Wasm pods: every process in their containers' cgroups is captured (also
    /// pods annotated `module.wasm.image/variant`).
    #[arg(
        value_name = "LIST",
        long,
        env = "PROBE_WASM_RUNTIME_CLASSES",
        value_delimiter = ',',
        default_value = "wasmedge,wasmtime,spin,wasmer,crun-wasm,runwasi"
    )]
    pub wasm_runtime_classes: Vec<String>,

    /// Pod labels copied onto events (`k8s.pod.labels`).
    #[arg(
        value_name = "LIST",
        long,
        env = "PROBE_K8S_POD_LABELS",
        value_delimiter = ',',
        default_value = "app,app.kubernetes.io/name,app.kubernetes.io/instance,app.kubernetes.io/version,app.kubernetes.io/component"
    )]
    pub k8s_pod_labels: Vec<String>,

    /// Read the `traceparent` of plaintext HTTP/1.x requests on the TCP send and receive paths so
    /// events of that connection (and of a server's thread while it serves the request) join the
    /// request's trace; `false` does not attach the hooks.
    #[arg(value_name = "BOOL", long, env = "PROBE_HTTP_TRACE_CONTEXT", default_value_t = true,
          action = clap::ArgAction::Set)]
    pub http_trace_context: bool,

    /// Processes whose OpenSSL calls are read for the `traceparent` of HTTPS requests (uprobes
    /// on their libssl: a trap per `SSL_write`/`SSL_read`): executable names, or prefixes
    /// ending in `*`, comma-separated; `*` alone: every process of the node. A listed process
    /// is covered from the scan after it maps libssl (within ~2 s of its start).
    #[arg(value_name = "LIST", long, env = "PROBE_TLS_PROCESSES", default_value = "*",
          value_parser = parse_tls_processes)]
    pub tls_processes: TlsProcesses,

    /// Kinds of hook not to use, comma-separated: `fentry`, `fexit`, `kprobe`, `kretprobe`,
    /// `raw-tp`, `tracepoint`, `preempt-count`; each capability takes its next candidate (for a
    /// kernel whose trampolines or kprobes misbehave; `--check-kernel` shows the result).
    #[arg(
        long,
        env = "PROBE_AVOID_HOOKS",
        value_enum,
        value_delimiter = ',',
        value_name = "KINDS"
    )]
    pub avoid_hooks: Vec<crate::loader::hooks::HookKind>,

    /// Pin capabilities to a kind of hook (e.g. `reset_sent_unowned=kprobe`,
    /// `softirq_context=raw-tp`): the capability tries only its candidates of that kind and has no
    /// hook when they do not attach (no fallback); the capabilities and their candidates are in
    /// kernels.md (docs/kernels.md) and `--check-kernel` shows the result. An unknown capability, a
    /// kind it has no candidate of, or a capability pinned twice is a usage error (exit 2).
    #[arg(long, env = "PROBE_HOOKS", value_delimiter = ',', value_name = "CAPABILITY=KIND",
          value_parser = values::hook_pin)]
    pub hooks: Vec<crate::loader::hooks::HookPin>,

    /// Verifier log kept for a rejected program, logged at debug level (`--log-level probe=debug`):
    /// `stats` (its reason and statistics) or `verbose` (also each instruction it walked: large,
    /// for porting a program to a new kernel; a kernel whose log keeps its start can lose the
    /// reason at the end).
    #[arg(long, value_enum, env = "PROBE_VERIFIER_LOG", default_value_t = values::VerifierLog::Stats, value_name = "LEVEL")]
    pub verifier_log: values::VerifierLog,

    /// The agent's own logs on stderr (tracing `EnvFilter` syntax, checked at start: exit 2 when it
    /// does not parse); kube's per-request error lines are off unless the filter names
    /// `kube_client` (the agent logs the API server's state itself).
    #[arg(long, env = "PROBE_LOG", default_value = "info", value_parser = parse_log_filter, value_name = "FILTER")]
    pub log_level: String,

    /// Format of the agent's own logs (never carries captured payloads).
    #[arg(long, value_enum, env = "PROBE_LOG_FORMAT", default_value_t = LogFormat::Text, value_name = "text|json")]
    pub log_format: LogFormat,

    /// Health, status and metrics endpoints (`[::]:9464`: every address, IPv4 and IPv6, as the
    /// DaemonSet has it); `/health/status` answers loopback clients only. Probes and scrapes of
    /// this endpoint make no records.
    #[arg(value_name = "ADDR|none", long, env = "PROBE_HTTP_ADDR", default_value = "127.0.0.1:9464",
          value_parser = parse_http_addr)]
    pub http_addr: HttpAddr,

    /// Connections to the endpoints at once (4-4096); at the cap the one idle the longest is
    /// closed, so a new health probe or scrape is always served.
    #[arg(value_name = "N", long, env = "PROBE_HTTP_MAX_CONNECTIONS", default_value_t = 128, allow_hyphen_values = true,
          value_parser = clap::value_parser!(u32).range(4..=4096))]
    pub http_max_connections: u32,

    /// An endpoint connection that moves no byte for this long is closed; a request head must
    /// arrive within it (at most 10 s).
    #[arg(value_name = "D", long, env = "PROBE_HTTP_IDLE_TIMEOUT", allow_hyphen_values = true, default_value = "60s",
          value_parser = duration_between(ms(100), secs(3600)))]
    pub http_idle_timeout: Duration,

    /// Storm folding: resets of one key (direction, reason, cgroup, network namespace, service
    /// port) sent in full per CPU and window (0-100000); the rest of the window is counted in the
    /// kernel and written as one `summary` record with the exact count; `0` sends every reset (a
    /// storm may then fill the ring buffer: counted as lost).
    #[arg(value_name = "N", long, env = "PROBE_FOLD_FIRST", default_value_t = 10, allow_hyphen_values = true,
          value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub fold_first: u32,

    /// The folding window (100ms-1h).
    #[arg(value_name = "D", long, env = "PROBE_FOLD_WINDOW", allow_hyphen_values = true, default_value = "1s",
          value_parser = duration_between(ms(100), secs(3600)))]
    pub fold_window: Duration,

    /// Series with pod labels the event metrics hold at most (100-1000000); a new pod's events
    /// beyond it count in the family's overflow series (`pod="_overflow"`) and
    /// `probe_metric_series_overflow_total{metric}`.
    #[arg(value_name = "N", long, env = "PROBE_METRICS_MAX_SERIES", default_value_t = 10_000, allow_hyphen_values = true,
          value_parser = clap::value_parser!(u32).range(100..=1_000_000))]
    pub metrics_max_series: u32,

    /// An event series without an event for this long leaves `/metrics` (1m-30d): a deleted pod
    /// stops costing a series.
    #[arg(value_name = "D", long, env = "PROBE_METRICS_SERIES_IDLE", allow_hyphen_values = true, default_value = "1h",
          value_parser = duration_between(secs(60), secs(30 * 86_400)))]
    pub metrics_series_idle: Duration,

    /// TOML file whose keys are these flags' names: a regular file of at most 1 MiB (a device, FIFO
    /// or directory is refused before it is opened).
    #[arg(long, env = "PROBE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Print the effective configuration as JSON and exit.
    #[arg(long, env = "PROBE_PRINT_CONFIG", conflicts_with_all = ["print_requirements", "check_kernel"])]
    pub print_config: bool,

    /// Print what the agent needs from its host (paths, capabilities, API resources) and exit.
    #[arg(
        long,
        env = "PROBE_PRINT_REQUIREMENTS",
        conflicts_with = "check_kernel"
    )]
    pub print_requirements: bool,

    /// Load and attach every program, print which hook serves each capability on this kernel (or
    /// what is lost and why), detach, exit 0 when every capability has a hook, 1 otherwise.
    #[arg(long, env = "PROBE_CHECK_KERNEL")]
    pub check_kernel: bool,
}

/// `--wasm-runtimes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runtimes(pub Vec<crate::runtimes::RuntimePattern>);

impl Runtimes {
    /// As written: `name` or `prefix*`.
    pub fn names(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }
}

/// `--tls-processes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsProcesses(pub crate::loader::libssl::Scope);

impl TlsProcesses {
    /// As the flag is written.
    pub fn names(&self) -> String {
        use crate::loader::libssl::Scope;
        match &self.0 {
            Scope::All => "*".to_owned(),
            Scope::Processes(p) => p
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
        }
    }
}

fn parse_tls_processes(s: &str) -> Result<TlsProcesses, values::ValueError> {
    use crate::loader::libssl::Scope;
    if s.trim() == "*" {
        return Ok(TlsProcesses(Scope::All));
    }
    let patterns = crate::runtimes::parse_runtimes(s)?;
    if patterns.is_empty() {
        return Err(values::ValueError::Empty("an executable name, or *"));
    }
    Ok(TlsProcesses(Scope::Processes(patterns)))
}

fn parse_runtime_list(s: &str) -> Result<Runtimes, values::ValueError> {
    Ok(Runtimes(crate::runtimes::parse_runtimes(s)?))
}

/// `--http-addr`: a socket address, or disabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpAddr(pub Option<SocketAddr>);

fn parse_http_addr(s: &str) -> Result<HttpAddr, values::ValueError> {
    if s == "none" {
        return Ok(HttpAddr(None));
    }
    Ok(HttpAddr(Some(s.parse()?)))
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
        effective["tls-processes"] = json!(self.tls_processes.names());
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
        effective["resource-attributes"] = json!(
            self.resource_attributes
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
        );
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
