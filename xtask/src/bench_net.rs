//! Network scenarios of `cargo xtask bench`: a reset storm (delivered vs lost vs generated,
//! agent CPU per million events, peak RSS), kernel-to-JSON latency, and loopback HTTP
//! throughput (nginx + wrk) with and without the probe.

use std::{
    io::{BufRead as _, BufReader},
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};

use crate::{bench::median, bench_k8s::status_kib};

/// The agent with its JSON output read line by line, each stamped on arrival (ns since the
/// Unix epoch).
pub struct Observed {
    child: Child,
    pub lines: mpsc::Receiver<(u64, String)>,
    /// The endpoints' address, when `extra` asked for them (`--http-addr`).
    pub http: Option<std::net::SocketAddr>,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl Observed {
    pub fn start(bin: &Path, extra: &[&str]) -> Result<Self> {
        let http_off: &[&str] = if extra.contains(&"--http-addr") {
            &[]
        } else {
            &["--http-addr", "none"]
        };
        let mut child = Command::new(bin)
            .args(["--output", "json", "--loss-interval", "1s"])
            .args(http_off)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the probe")?;
        let mut log = BufReader::new(child.stderr.take().context("stderr")?).lines();
        let mut http = None;
        loop {
            match log.next() {
                Some(Ok(l)) if l.contains("ready:") => break,
                Some(Ok(l)) if l.contains("http: listening on ") => {
                    http = l
                        .split("http: listening on ")
                        .nth(1)
                        .and_then(|r| r.split_whitespace().next())
                        .and_then(|a| a.parse().ok());
                }
                Some(Ok(_)) => {}
                _ => bail!("the probe exited before it was ready"),
            }
        }
        std::thread::spawn(move || log.for_each(drop));
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send((now_ns(), line)).is_err() {
                    break;
                }
            }
        });
        Ok(Self { child, lines, http })
    }

    /// The sum of the samples of metric `name` on /metrics.
    pub fn metric_sum(&self, name: &str) -> Result<u64> {
        let addr = self.http.context("the agent has no HTTP endpoint")?;
        let body = crate::bench_k8s::http_get(addr, "/metrics")?;
        Ok(body
            .lines()
            .filter_map(|l| {
                // Without its OpenMetrics exemplar (` # {trace_id=...} 1`).
                let sample = l.split(" # ").next()?;
                let (series, value) = sample.rsplit_once(' ')?;
                let family = series.split('{').next()?;
                (family == name).then(|| value.parse::<f64>().ok())?
            })
            .map(|v| v as u64)
            .sum())
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, wait, and every line it printed.
    pub fn stop(mut self) -> Vec<(u64, String)> {
        self.terminate();
        let (_, rx) = mpsc::channel();
        std::mem::replace(&mut self.lines, rx).iter().collect()
    }

    fn terminate(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill(2) on our own, not yet reaped, child.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let _ = self.child.wait();
        }
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// CPU time of `pid`, in seconds: the sum of its threads' run time from schedstat
/// (nanoseconds; utime + stime from /proc/PID/stat have 10 ms ticks, too coarse for a few
/// seconds of a quiet agent), else /proc/PID/stat.
pub fn cpu_seconds(pid: u32) -> f64 {
    let ns: Option<u64> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()
        .map(|tasks| {
            tasks
                .flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
                .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .sum()
        });
    if let Some(ns) = ns.filter(|&n| n > 0) {
        return ns as f64 / 1e9;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_comm = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // After the comm: state is field 3 of the file, utime 14, stime 15.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / hz
}

/// A loopback port with nothing listening, below the ephemeral range (so no client gets it).
fn closed_port() -> Result<u16> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")?;
    let low: u16 = range.split_whitespace().next().context("range")?.parse()?;
    (10_000..low)
        .rev()
        .find(|&p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        .context("no free port below the ephemeral range")
}

fn on_port(line: &str, port: u16) -> Option<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    (v["kind"] == "tcp_reset" && (v["sport"] == port || v["dport"] == port)).then_some(v)
}

/// What the OTLP receiver got during a storm.
#[derive(Debug, Default)]
pub struct StormOtlp {
    /// Reset spans on the storm's port (each a reset in full).
    pub full: u64,
    /// Resets inside summary spans, by what folded them (`kernel`, `otlp_budget`).
    pub folded: std::collections::BTreeMap<String, u64>,
    pub spans: u64,
    pub logs: u64,
    /// Bytes of the export requests' bodies, per signal.
    pub span_bytes: u64,
    pub log_bytes: u64,
    /// When the first and the last request arrived (ms since the epoch).
    pub first_ms: u64,
    pub last_ms: u64,
}

impl StormOtlp {
    fn add(&mut self, v: &serde_json::Value, port: u16) {
        let a = &v["attributes"];
        match v["signal"].as_str() {
            Some("span") => {
                self.spans += 1;
                // Refused connects are also connect failures, folded on their own keys.
                if a["probe.summary.kind"]
                    .as_str()
                    .is_some_and(|k| k != "tcp_reset")
                {
                    return;
                }
                if let Some(n) = a["probe.summary.count"].as_u64() {
                    let by = a["probe.summary.folded_by"]
                        .as_str()
                        .unwrap_or("?")
                        .to_owned();
                    *self.folded.entry(by).or_insert(0) += n;
                } else if v["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("tcp.reset."))
                    && (a["network.local.port"] == port || a["network.peer.port"] == port)
                {
                    self.full += 1;
                }
            }
            Some("log") => self.logs += 1,
            Some("request") => {
                let bytes = v["bytes"].as_u64().unwrap_or(0);
                match v["path"].as_str() {
                    Some("/v1/traces") => self.span_bytes += bytes,
                    Some("/v1/logs") => self.log_bytes += bytes,
                    _ => {}
                }
                let at = v["at_ms"].as_u64().unwrap_or(0);
                if self.first_ms == 0 {
                    self.first_ms = at;
                }
                self.last_ms = self.last_ms.max(at);
            }
            _ => {}
        }
    }

    /// Seconds from the first export request to the last, plus the one second the first
    /// batch waited (`--otlp-batch-delay`).
    pub fn seconds(&self) -> f64 {
        (self.last_ms.saturating_sub(self.first_ms) as f64 / 1e3) + 1.0
    }
}

pub struct Storm {
    pub otlp: StormOtlp,
    pub seconds: f64,
    pub generated: u64,
    /// Resets written in full.
    pub delivered: u64,
    /// Resets inside `summary` records (folded in the kernel), and those records.
    pub folded: u64,
    pub summaries: u64,
    /// The sum of `probe_tcp_resets_total` over its series.
    pub metric_resets: u64,
    pub lost: u64,
    /// The loss records' counts by source (`ringbuf`, `channel`, an output's name...).
    pub lost_by: std::collections::BTreeMap<String, u64>,
    /// Agent CPU per million resets generated (every one is in a record, a summary or a
    /// loss record's count).
    pub cpu_s_per_million: f64,
    /// The same per million delivered events.
    pub cpu_s_per_million_delivered: f64,
    pub peak_rss_mib: f64,
}

/// Refused connects from two threads as fast as they go for `duration`.
pub fn reset_storm(bin: &Path, receiver: &Path, duration: Duration) -> Result<Storm> {
    let port = closed_port()?;
    let (mut rx, out, addrs) = start_receiver(receiver)?;
    let endpoint = format!("http://{}", addrs["http"].as_str().context("http address")?);
    let otlp = Arc::new(std::sync::Mutex::new(StormOtlp::default()));
    let seen = otlp.clone();
    std::thread::spawn(move || {
        for line in out.map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                seen.lock().unwrap_or_else(|e| e.into_inner()).add(&v, port);
            }
        }
    });
    let agent = Observed::start(
        bin,
        &[
            "--http-addr",
            "127.0.0.1:0",
            "--output",
            "json,otlp",
            "--otlp-protocol",
            "http/protobuf",
            "--otlp-endpoint",
            &endpoint,
        ],
    )?;
    let cpu0 = cpu_seconds(agent.pid());
    let stop = Arc::new(AtomicBool::new(false));
    let connects = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (stop, connects) = (stop.clone(), connects.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if TcpStream::connect(("127.0.0.1", port)).is_err() {
                        connects.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    workers.into_iter().for_each(|w| drop(w.join()));
    let seconds = start.elapsed().as_secs_f64();
    let generated = 2 * connects.load(Ordering::Relaxed);
    // The metrics and the last summaries are read from the kernel once a second.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut metric_resets = agent.metric_sum("probe_tcp_resets_total")?;
    while metric_resets < generated && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        metric_resets = agent.metric_sum("probe_tcp_resets_total")?;
    }
    std::thread::sleep(Duration::from_secs(2));
    let cpu = cpu_seconds(agent.pid()) - cpu0;
    let rss = status_kib(agent.pid(), "VmHWM") / 1024.0;
    let lines = agent.stop();
    let delivered = lines
        .iter()
        .filter(|(_, l)| on_port(l, port).is_some())
        .count() as u64;
    let summaries: Vec<u64> = lines
        .iter()
        .filter_map(|(_, l)| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == "summary" && v["folded_kind"] == "tcp_reset" && v["port"] == port)
        .map(|v| v["count"].as_u64().unwrap_or(0))
        .collect();
    let mut lost_by = std::collections::BTreeMap::new();
    for v in lines
        .iter()
        .filter_map(|(_, l)| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == "loss")
    {
        let source = v["source"].as_str().unwrap_or("unknown").to_owned();
        *lost_by.entry(source).or_insert(0) += v["count"].as_u64().unwrap_or(0);
    }
    let lost = lost_by.values().sum();
    // The last export (batch delay 1 s) has arrived by now.
    std::thread::sleep(Duration::from_secs(2));
    let _ = rx.kill();
    let _ = rx.wait();
    let otlp = std::mem::take(&mut *otlp.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(Storm {
        otlp,
        seconds,
        generated,
        delivered,
        folded: summaries.iter().sum(),
        summaries: summaries.len() as u64,
        metric_resets,
        lost,
        lost_by,
        cpu_s_per_million: per_million(cpu, generated),
        cpu_s_per_million_delivered: per_million(cpu, delivered),
        peak_rss_mib: rss,
    })
}

fn per_million(cpu: f64, events: u64) -> f64 {
    if events > 0 {
        cpu / (events as f64 / 1e6)
    } else {
        0.0
    }
}

/// p50 and p99, in ms, from kernel event time to the moment its JSON line was read.
pub fn json_latency(bin: &Path, events: u32, gap: Duration, extra: &[&str]) -> Result<(f64, f64)> {
    let port = closed_port()?;
    let agent = Observed::start(bin, extra)?;
    for _ in 0..events {
        let _ = TcpStream::connect(("127.0.0.1", port));
        std::thread::sleep(gap);
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut latencies: Vec<f64> = agent
        .stop()
        .iter()
        .filter_map(|(at, l)| {
            let v = on_port(l, port)?;
            let t = v["time_unix_nano"].as_u64()?;
            Some(at.saturating_sub(t) as f64 / 1e6)
        })
        .collect();
    if latencies.is_empty() {
        bail!("no reset reached the JSON sink");
    }
    latencies.sort_by(f64::total_cmp);
    let pick = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    Ok((pick(0.5), pick(0.99)))
}

type Lines = std::io::Lines<BufReader<std::process::ChildStdout>>;

/// The test OTLP receiver: the process, its output after the first line, and that first
/// line (`{"grpc": ADDR, "http": ADDR}`).
fn start_receiver(receiver: &Path) -> Result<(Child, Lines, serde_json::Value)> {
    let mut rx = Command::new(receiver)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", receiver.display()))?;
    let mut out = BufReader::new(rx.stdout.take().context("receiver stdout")?).lines();
    let first = out.next().context("receiver address")??;
    Ok((rx, out, serde_json::from_str(&first)?))
}

/// p50 and p99, in ms, from kernel event time to the moment the test OTLP receiver
/// (tests/bin/otlp_receiver.rs) decoded its span, over gRPC.
pub fn otlp_latency(bin: &Path, receiver: &Path, events: u32) -> Result<(f64, f64)> {
    let (mut rx, out, addrs) = start_receiver(receiver)?;
    let grpc = addrs["grpc"].as_str().context("grpc address")?.to_owned();
    let (tx, spans) = mpsc::channel();
    std::thread::spawn(move || {
        for line in out.map_while(Result::ok) {
            if tx.send((now_ns(), line)).is_err() {
                break;
            }
        }
    });
    let port = closed_port()?;
    let endpoint = format!("http://{grpc}");
    let agent = Observed::start(
        bin,
        &["--output", "json,otlp", "--otlp-endpoint", &endpoint],
    )?;
    for _ in 0..events {
        let _ = TcpStream::connect(("127.0.0.1", port));
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(Duration::from_millis(1000));
    drop(agent);
    let _ = rx.kill();
    let _ = rx.wait();
    let mut latencies: Vec<f64> = spans
        .try_iter()
        .filter_map(|(at, l)| {
            let v: serde_json::Value = serde_json::from_str(&l).ok()?;
            let a = &v["attributes"];
            (v["name"] == "tcp.reset.sent"
                && (a["network.local.port"] == port || a["network.peer.port"] == port))
                .then_some(())?;
            let t = v["start_time_unix_nano"].as_u64()?;
            Some(at.saturating_sub(t) as f64 / 1e6)
        })
        .collect();
    if latencies.is_empty() {
        bail!("no reset span reached the OTLP receiver");
    }
    latencies.sort_by(f64::total_cmp);
    let pick = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    Ok((pick(0.5), pick(0.99)))
}

/// A `traceparent` header every request of a traced run carries.
const TRACEPARENT: &str = "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Plaintext HTTP or HTTP over TLS (wrk and nginx on the system's OpenSSL), or HTTP/2 in
/// clear text (h2load and nginx's `http2` listener: prior knowledge, as gRPC in a cluster).
#[derive(Debug, Clone, Copy)]
pub enum Scheme {
    Http,
    Https,
    H2c,
}

impl Scheme {
    pub fn name(self) -> &'static str {
        match self {
            Self::Http => "HTTP",
            Self::Https => "HTTPS (TLS, OpenSSL)",
            Self::H2c => "HTTP/2 cleartext (h2c)",
        }
    }

    /// The load generator, as the report names it.
    pub fn tool(self) -> &'static str {
        match self {
            Self::Http | Self::Https => "wrk -t2 -c32",
            Self::H2c => "h2load -t2 -c32 -m1",
        }
    }

    fn url(self) -> &'static str {
        match self {
            Self::Http => "http://127.0.0.1:18080/",
            Self::Https => "https://127.0.0.1:18443/",
            Self::H2c => "http://127.0.0.1:18082/",
        }
    }
}

/// Requests per second against a local nginx (wrk; h2load for h2c); `traced`: each request
/// carries a `traceparent` (every request is then read on both ends and reaches the agent twice;
/// over HTTP/2 every request's header block reaches the agent, traced or not).
pub fn http_rps(seconds: u32, traced: bool, scheme: Scheme) -> Result<f64> {
    let h2 = matches!(scheme, Scheme::H2c);
    let mut cmd = if h2 {
        let mut c = Command::new("h2load");
        c.args(["-t2", "-c32", "-m1", "-D", &seconds.to_string()]);
        c
    } else {
        let mut c = Command::new("wrk");
        c.args(["-t2", "-c32", &format!("-d{seconds}s")]);
        c
    };
    if traced {
        cmd.args(["-H", TRACEPARENT]);
    }
    let out = cmd
        .arg(scheme.url())
        .output()
        .context("running the load generator")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = if h2 {
        // "finished in 3.00s, 41234.56 req/s, 1.23MB/s"
        text.lines()
            .find_map(|l| l.strip_prefix("finished in "))
            .and_then(|l| l.split(", ").nth(1))
            .and_then(|v| v.strip_suffix(" req/s"))
            .and_then(|v| v.trim().parse().ok())
    } else {
        text.lines()
            .find_map(|l| l.strip_prefix("Requests/sec:"))
            .and_then(|v| v.trim().parse().ok())
    };
    rps.with_context(|| format!("no requests per second in the output: {text}"))
}

/// A loopback nginx answering 200 "ok" on 18080 (HTTP), 18443 (TLS, a self-signed
/// certificate made with the openssl CLI) and 18082 (HTTP/2 in clear text), stopped when
/// dropped.
pub struct Nginx(Child);

impl Nginx {
    pub fn start(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        crate::setup::run_checked(
            Command::new("openssl")
                .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
                .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
                .args([
                    "-subj",
                    "/CN=127.0.0.1",
                    "-keyout",
                    "key.pem",
                    "-out",
                    "cert.pem",
                ])
                .current_dir(dir)
                .stderr(Stdio::null()),
        )
        .context("making nginx's TLS certificate")?;
        let d = dir.display();
        let ok = "location / { return 200 \"ok\\n\"; }";
        // The h2c server takes any number of requests per connection: after
        // `keepalive_requests` (1,000 by default) nginx ends an HTTP/2 connection and h2load
        // does not reconnect, which made the run a fixed 32,000 requests.
        let conf = format!(
            "daemon off;\nworker_processes 1;\nerror_log {d}/error.log;\npid {d}/nginx.pid;\n\
             events {{ worker_connections 1024; }}\n\
             http {{ access_log off;\n  client_body_temp_path {d}/tmp;\n\
               server {{ listen 127.0.0.1:18080; {ok} }}\n\
               server {{ listen 127.0.0.1:18443 ssl; ssl_certificate {d}/cert.pem;\
             ssl_certificate_key {d}/key.pem; {ok} }}\n\
               server {{ listen 127.0.0.1:18082 http2; keepalive_requests 10000000; {ok} }} }}\n"
        );
        std::fs::write(dir.join("nginx.conf"), conf)?;
        let child = Command::new("nginx")
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx")?;
        for _ in 0..100 {
            if [18080, 18443, 18082]
                .iter()
                .all(|p| TcpStream::connect(("127.0.0.1", *p)).is_ok())
            {
                return Ok(Self(child));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("nginx did not listen on 127.0.0.1:18080, 18443 and 18082")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGQUIT) };
        let _ = self.0.wait();
    }
}

/// The agent at a steady event rate, with JSON only and with JSON and OTLP (HTTP/protobuf to
/// the test receiver): CPU per million events each way (the OTLP figure includes the JSON
/// output), and the export requests per second. Medians over rounds that alternate the two
/// (a VM's CPU time varies by tens of percent from one minute to the next).
pub struct Steady {
    pub events_per_s: f64,
    /// The rate the generator reached (median over the runs): below the target when the
    /// agent and the generator share too few cores.
    pub achieved_per_s: f64,
    pub rounds: usize,
    /// The idle agent's CPU per second (subtracted from the per-event figures).
    pub idle_cpu_ms_per_s: f64,
    /// The agent's whole CPU per second at this rate with JSON and OTLP (nothing subtracted).
    pub busy_cpu_ms_per_s_otlp: f64,
    pub cpu_s_per_million_json: f64,
    pub cpu_s_per_million_otlp: f64,
    /// The median of each round's difference between the two.
    pub cpu_s_per_million_spans: f64,
    /// JSON and OTLP with the OTLP output's default budget (`--otlp-max-spans` 200/s: the
    /// rest of each second in summaries), what a node runs.
    pub cpu_s_per_million_budgeted: f64,
    pub spans_received: u64,
    pub requests_per_s: f64,
}

/// Records one refused connect makes: the reset sent, the reset received and the connect
/// failure (every capability attaches on the host the bench runs on).
const EVENTS_PER_CONNECT: u32 = 3;

/// Refused connects paced to `events_per_s` events for `seconds`; the events made.
fn paced_resets(port: u16, events_per_s: u32, seconds: u32) -> u64 {
    let per_s = (events_per_s / EVENTS_PER_CONNECT).max(1);
    let connects = u64::from(per_s * seconds);
    let interval = Duration::from_secs(1) / per_s;
    let start = Instant::now();
    for i in 0..connects {
        if let Some(wait) = (start + interval * i as u32).checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let _ = TcpStream::connect(("127.0.0.1", port));
    }
    u64::from(EVENTS_PER_CONNECT) * connects
}

pub fn otlp_steady(
    bin: &Path,
    receiver: &Path,
    events_per_s: u32,
    seconds: u32,
    rounds: usize,
    extra: &[&str],
    budgeted: &[&str],
) -> Result<Steady> {
    let port = closed_port()?;
    let (mut rx, out, addrs) = start_receiver(receiver)?;
    let http = addrs["http"].as_str().context("http address")?.to_owned();
    let counts = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let seen = counts.clone();
    std::thread::spawn(move || {
        for line in out.map_while(Result::ok) {
            if line.contains("\"signal\":\"request\"") {
                seen.0.fetch_add(1, Ordering::Relaxed);
            } else if line.contains("\"signal\":\"span\"") {
                seen.1.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let endpoint = format!("http://{http}");
    let mut otlp = vec![
        "--output",
        "otlp",
        "--otlp-protocol",
        "http/protobuf",
        "--otlp-endpoint",
        &endpoint,
    ];
    let mut otlp_budgeted = otlp.clone();
    otlp.extend_from_slice(extra);
    otlp_budgeted.extend_from_slice(budgeted);
    let (mut idle, mut json, mut both, mut spans, mut busy, mut requests) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut within_budget = vec![];
    let mut achieved = vec![];
    for _ in 0..rounds {
        let run = steady_run(bin, extra, port, events_per_s, seconds, &counts.0)?;
        idle.push(run.idle_ms_per_s);
        json.push(run.per_million);
        achieved.push(run.achieved_per_s);
        let run_otlp = steady_run(bin, &otlp, port, events_per_s, seconds, &counts.0)?;
        achieved.push(run_otlp.achieved_per_s);
        requests.push(run_otlp.requests_per_s);
        idle.push(run_otlp.idle_ms_per_s);
        both.push(run_otlp.per_million);
        busy.push(run_otlp.busy_ms_per_s);
        spans.push(run_otlp.per_million - run.per_million);
        let run_budget = steady_run(bin, &otlp_budgeted, port, events_per_s, seconds, &counts.0)?;
        within_budget.push(run_budget.per_million);
    }
    let _ = rx.kill();
    let _ = rx.wait();
    Ok(Steady {
        events_per_s: f64::from(events_per_s),
        achieved_per_s: median(achieved),
        rounds,
        idle_cpu_ms_per_s: median(idle),
        busy_cpu_ms_per_s_otlp: median(busy),
        cpu_s_per_million_json: median(json),
        cpu_s_per_million_otlp: median(both),
        cpu_s_per_million_spans: median(spans),
        cpu_s_per_million_budgeted: median(within_budget),
        spans_received: counts.1.load(Ordering::Relaxed),
        requests_per_s: median(requests),
    })
}

/// One agent (`extra` flags) idle, then at `events_per_s` for `seconds`.
struct SteadyRun {
    idle_ms_per_s: f64,
    busy_ms_per_s: f64,
    /// CPU-s per million events, the idle CPU over as long subtracted.
    per_million: f64,
    /// Export requests the receiver counted (`requests`) per second of the loaded part.
    requests_per_s: f64,
    /// Events made per second of the loaded part.
    achieved_per_s: f64,
}

fn steady_run(
    bin: &Path,
    extra: &[&str],
    port: u16,
    events_per_s: u32,
    seconds: u32,
    requests: &AtomicU64,
) -> Result<SteadyRun> {
    let agent = Observed::start(bin, extra)?;
    // Over as long as the loaded part lasts (the last batch waits up to the OTLP batching
    // delay, 1 s).
    let span = Duration::from_secs(u64::from(seconds)) + Duration::from_millis(1500);
    let idle0 = cpu_seconds(agent.pid());
    std::thread::sleep(span);
    let idle = cpu_seconds(agent.pid()) - idle0;
    let cpu0 = cpu_seconds(agent.pid());
    let requests0 = requests.load(Ordering::Relaxed);
    let started = Instant::now();
    let made = paced_resets(port, events_per_s, seconds);
    let loaded = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(1500));
    let busy = cpu_seconds(agent.pid()) - cpu0;
    let sent = requests.load(Ordering::Relaxed) - requests0;
    Ok(SteadyRun {
        idle_ms_per_s: idle * 1000.0 / span.as_secs_f64(),
        busy_ms_per_s: busy * 1000.0 / span.as_secs_f64(),
        per_million: per_million((busy - idle).max(0.0), made),
        requests_per_s: sent as f64 / started.elapsed().as_secs_f64(),
        achieved_per_s: made as f64 / loaded,
    })
}
