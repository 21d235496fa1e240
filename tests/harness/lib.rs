//! Harness for the root end-to-end tests: starts the real `probe` binary (PROBE_BIN, set by
//! `cargo xtask test`) with `--output json`, collects its records, stops it with SIGTERM.

use std::{
    io::{BufRead, BufReader, Write as _},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

pub use serde_json::Value;

/// True when running as root. Otherwise prints a loud line that bypasses the test harness's
/// output capture and returns false: the caller returns without asserting anything.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let _ = writeln!(
        std::io::stderr(),
        "\n!!!!! {test}: skipped: needs root (run `sudo cargo xtask test`) !!!!!\n"
    );
    false
}

fn probe_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("PROBE_BIN") {
        return bin.into();
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    ["release", "debug"]
        .iter()
        .map(|p| root.join("target").join(p).join("probe"))
        .find(|p| p.exists())
        .expect("no probe binary: run the e2e tests with `cargo xtask test`")
}

/// A running agent.
pub struct Probe {
    child: Child,
    records: mpsc::Receiver<Value>,
    /// The thread parsing stdout: joined (EOF) before the records are collected at exit.
    stdout: Option<thread::JoinHandle<()>>,
    stderr: Option<thread::JoinHandle<String>>,
    seen: Vec<Value>,
    http: Option<std::net::SocketAddr>,
}

impl Probe {
    /// Starts the agent with `--output json` plus `args` and waits until it is attached. The
    /// HTTP endpoints listen on a free loopback port unless `args` say otherwise. The trace
    /// tie's hooks (HTTP/1.x, HTTP/2, TLS) are off (`--http-trace-context false`) unless
    /// `args` name the flag: their verification is most of an agent's start on the matrix's
    /// kernels under qemu TCG (about 9 of 15 s on 6.1), and only the files testing the tie need
    /// them; a test asking for one of their capabilities without the flag fails ([`Probe::hook`]).
    pub fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    /// `start` with extra environment variables (e.g. KUBECONFIG).
    pub fn start_with_env(args: &[&str], envs: &[(&str, &std::ffi::OsStr)]) -> Self {
        let mut cmd = Command::new(probe_bin());
        cmd.env_remove("KUBECONFIG");
        cmd.envs(envs.iter().copied());
        if !args.contains(&"--kubernetes") && !envs.iter().any(|(k, _)| *k == "KUBECONFIG") {
            // No cluster for tests that do not bring their fake.
            cmd.args(["--kubernetes", "off"]);
        }
        cmd.args(["--output", "json"]);
        if !args.contains(&"--log-level") {
            cmd.args(["--log-level", "info"]);
        }
        if !args.contains(&"--http-addr") {
            cmd.args(["--http-addr", "127.0.0.1:0"]);
        }
        if !args.contains(&"--http-trace-context") {
            cmd.args(["--http-trace-context", "false"]);
        }
        // Tests leave the host's sysctls alone (the agent's default turns timestamps on).
        if !args.contains(&"--conntrack-timestamps") {
            cmd.args(["--conntrack-timestamps", "false"]);
        }
        let mut child = cmd
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning the probe");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, records) = mpsc::channel();
        let stdout = thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let value: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
                    panic!("probe printed a line that is not JSON ({e}): {line}")
                });
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        let stderr = child.stderr.take().expect("stderr");
        let (ready_tx, ready_rx) = mpsc::channel();
        let stderr = thread::spawn(move || {
            let mut log = String::new();
            let mut http = None;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("http: listening on ").nth(1) {
                    http = rest.split_whitespace().next().and_then(|a| a.parse().ok());
                }
                if line.contains("ready:") {
                    let _ = ready_tx.send(http);
                }
                log.push_str(&line);
                log.push('\n');
            }
            log
        });
        let mut probe = Self {
            child,
            records,
            stdout: Some(stdout),
            stderr: Some(stderr),
            seen: Vec::new(),
            http: None,
        };
        // Generous: verifying every program takes tens of seconds on old kernels under qemu TCG.
        match ready_rx.recv_timeout(Duration::from_secs(240)) {
            Ok(http) => probe.http = http,
            Err(_) => {
                let _ = probe.child.kill();
                let _ = probe.child.wait();
                let log = probe.log();
                panic!("the probe did not become ready; its log:\n{log}");
            }
        }
        probe
    }

    /// Where the agent's HTTP endpoints listen.
    pub fn http_addr(&self) -> std::net::SocketAddr {
        self.http
            .expect("the probe logged no 'http: listening on' line")
    }

    /// The hook serving `capability` on this kernel as the agent reports it in
    /// /health/status (None when no hook works here).
    pub fn hook(&self, capability: &str) -> Option<String> {
        let status: Value = serde_json::from_str(&http_get(self.http_addr(), "/health/status").2)
            .expect("/health/status is JSON");
        let c = status["capabilities"]
            .as_array()
            .expect("capabilities in /health/status")
            .iter()
            .find(|c| c["capability"] == capability)
            .unwrap_or_else(|| panic!("no capability {capability} in /health/status"))
            .clone();
        let error = c["error"].as_str().unwrap_or("no hook");
        assert!(
            !error.contains("disabled by --http-trace-context"),
            "{capability} is off in this test's agent ({error}): a test of the trace tie starts \
             it with `--http-trace-context true`"
        );
        match c["hook"].as_str() {
            Some(hook) => Some(hook.to_owned()),
            None => {
                let _ = writeln!(
                    std::io::stderr(),
                    "\n!!!!! {capability}: unsupported on this kernel: {error} !!!!!\n"
                );
                None
            }
        }
    }

    /// `expected` where this kernel can tell it (the capability has a hook), null where it
    /// cannot (printed loudly): what a test asserts for a field such as a reset's reason.
    pub fn expect_if(&self, capability: &str, expected: Value) -> Value {
        if self.hook(capability).is_some() {
            expected
        } else {
            Value::Null
        }
    }

    /// The agent's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and returns at once.
    pub fn terminate(&self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
    }

    /// Waits for the agent to exit by itself (after `terminate`); returns its exit status, how
    /// long it took, and every record it printed.
    pub fn wait_exit(
        mut self,
        limit: Duration,
    ) -> (std::process::ExitStatus, Duration, Vec<Value>) {
        let (status, took, all, log) = self.exited(limit);
        if !status.success() {
            let _ = writeln!(std::io::stderr(), "probe log:\n{log}");
        }
        (status, took, all)
    }

    /// Waits (up to `limit`) for the exit; returns the status, how long it took, every record
    /// and the whole log.
    fn exited(
        &mut self,
        limit: Duration,
    ) -> (std::process::ExitStatus, Duration, Vec<Value>, String) {
        let (status, took) = wait_child_exit(&mut self.child, limit);
        if let Some(reader) = self.stdout.take() {
            reader.join().expect("the stdout reader panicked");
        }
        let log = self.log();
        let mut all = std::mem::take(&mut self.seen);
        all.extend(self.records.try_iter());
        (status, took, all, log)
    }

    /// Waits (up to 10 s) for a record satisfying `until`, then stops the agent and returns
    /// every record. Panics naming `what` when the record does not come.
    pub fn stop_when(mut self, what: &str, until: impl Fn(&Value) -> bool) -> Vec<Value> {
        if self.wait_for(Duration::from_secs(10), until).is_none() {
            panic!("{what} was not reported");
        }
        self.stop()
    }

    /// Waits (up to `timeout`) until some record satisfies `pred`; returns it.
    pub fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        if let Some(v) = self.seen.iter().find(|v| pred(v)) {
            return Some(v.clone());
        }
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Ok(v) = self.records.recv_timeout(left) else {
                break;
            };
            self.seen.push(v.clone());
            if pred(&v) {
                return Some(v);
            }
        }
        None
    }

    /// The reset `direction` ("sent" or "received") whose local port is `port` (10 s at most;
    /// panics with `what` otherwise).
    pub fn reset_at(&mut self, direction: &str, port: u16, what: &str) -> Value {
        self.wait_for(Duration::from_secs(10), |r| {
            r["kind"] == "tcp_reset" && r["direction"] == direction && r["sport"] == port
        })
        .unwrap_or_else(|| panic!("{what}"))
    }

    /// Every record received so far (by `wait_for`).
    pub fn seen(&self) -> &[Value] {
        &self.seen
    }

    /// SIGTERM, wait for a clean exit (the agent drains its pipeline first), and return every
    /// record it printed.
    pub fn stop(self) -> Vec<Value> {
        self.terminate();
        let (status, _, records) = self.wait_exit(Duration::from_secs(30));
        assert!(status.success(), "the probe exited with {status}");
        records
    }

    /// SIGTERM, wait (up to 30 s) for the exit; returns the exit status, every record and the
    /// whole log (stderr).
    pub fn stop_with_log(mut self) -> (std::process::ExitStatus, Vec<Value>, String) {
        self.terminate();
        let (status, _, all, log) = self.exited(Duration::from_secs(30));
        (status, all, log)
    }

    /// The agent's log so far (stderr); waits for stderr to close.
    fn log(&mut self) -> String {
        self.stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default()
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A minimal HTTP/1.1 GET (no client library: the agent's server is under test, not a
/// client's). Returns the status code, the headers (lower-cased names) and the body.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, Vec<(String, String)>, String) {
    http_get_with(addr, path, "")
}

/// `http_get` with more request header lines (each ending in `\r\n`), e.g. an `Accept`.
pub fn http_get_with(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &str,
) -> (u16, Vec<(String, String)>, String) {
    use std::io::Read as _;
    let mut stream = std::net::TcpStream::connect(addr).expect("connecting to the agent");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{headers}\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    stream
        .read_to_string(&mut raw)
        .expect("reading the response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

/// The sum of the samples of `name` on the agent's /metrics whose label set holds every one
/// of `labels` (`direction="sent"`).
pub fn metric_sum(addr: std::net::SocketAddr, name: &str, labels: &[&str]) -> u64 {
    let (status, _, body) = http_get(addr, "/metrics");
    assert_eq!(status, 200, "/metrics answered {status}");
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            // Without its OpenMetrics exemplar (` # {trace_id=...} 1`).
            let sample = l.split(" # ").next()?;
            let (series, value) = sample.rsplit_once(' ')?;
            let (family, label_set) = series.split_once('{').unwrap_or((series, ""));
            (family == name && labels.iter().all(|f| label_set.contains(f)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .map(|v| v as u64)
        .sum()
}

/// `metric_sum` once it equals `want`, or after 10 s (the agent reads the kernel's counts
/// once a second).
pub fn wait_metric(addr: std::net::SocketAddr, name: &str, labels: &[&str], want: u64) -> u64 {
    // Returns as soon as the sum is reached: the deadline is only for a TCG guest under load.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = metric_sum(addr, name, labels);
        if got == want || Instant::now() >= deadline {
            return got;
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// All of `child`'s stderr (piped), read on a thread until it closes.
pub fn stderr_of(child: &mut Child) -> thread::JoinHandle<String> {
    use std::io::Read as _;
    let mut stderr = child.stderr.take().expect("a piped stderr");
    thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    })
}

/// A command for the agent binary.
pub fn probe_command() -> Command {
    Command::new(probe_bin())
}

/// The effective configuration the agent derives from config file `path` (plus `envs`),
/// asserting that it accepts it.
pub fn print_config(path: &std::path::Path, envs: &[(&str, &str)]) -> Value {
    let out = probe_command()
        .arg("--config")
        .arg(path)
        .arg("--print-config")
        .envs(envs.iter().copied())
        .output()
        .expect("running the probe");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("--print-config prints JSON")
}

/// Waits (up to 240 s: old kernels under qemu verify slowly) until the agent spawned as
/// `child` answers `/health/ready` with 200 at `addr`; panics if it exits first.
pub fn wait_http_ready(child: &mut Child, addr: std::net::SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        if let Some(status) = child.try_wait().expect("waiting for the probe") {
            panic!("the agent exited before it was ready: {status}");
        }
        if std::net::TcpStream::connect(addr).is_ok() && http_get(addr, "/health/ready").0 == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "the agent was never ready");
        thread::sleep(Duration::from_millis(200));
    }
}

/// Runs the agent binary with `args` to completion (for flags that exit at once).
pub fn run_probe(args: &[&str]) -> std::process::Output {
    probe_command()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running the probe")
}

pub mod connect;
pub mod containerd;
pub mod cri;
mod host;
mod kube_fake;
mod net;
mod netns;
mod otlp;
mod pod_conntrack;
mod podman;
mod process;
pub mod prometheus;
pub mod redis_nat;
mod wasm;

pub use self::{
    host::*, kube_fake::*, net::*, netns::*, otlp::*, pod_conntrack::*, podman::*, process::*,
    wasm::*,
};
