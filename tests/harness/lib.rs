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
    /// HTTP endpoints listen on a free loopback port unless `args` say otherwise.
    pub fn start(args: &[&str]) -> Self {
        let mut cmd = Command::new(probe_bin());
        cmd.args(["--output", "json", "--log-level", "info"]);
        if !args.contains(&"--http-addr") {
            cmd.args(["--http-addr", "127.0.0.1:0"]);
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
        match ready_rx.recv_timeout(Duration::from_secs(60)) {
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
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("waiting for the probe") {
                break status;
            }
            assert!(
                start.elapsed() < limit,
                "the probe did not exit within {limit:?}"
            );
            thread::sleep(Duration::from_millis(10));
        };
        let took = start.elapsed();
        if let Some(reader) = self.stdout.take() {
            reader.join().expect("the stdout reader panicked");
        }
        let log = self.log();
        if !status.success() {
            let _ = writeln!(std::io::stderr(), "probe log:\n{log}");
        }
        let mut all = std::mem::take(&mut self.seen);
        all.extend(self.records.try_iter());
        (status, took, all)
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

    /// SIGTERM, wait for a clean exit (the agent drains its pipeline first), and return every
    /// record it printed.
    pub fn stop(self) -> Vec<Value> {
        self.terminate();
        let (status, _, records) = self.wait_exit(Duration::from_secs(30));
        assert!(status.success(), "the probe exited with {status}");
        records
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

/// Records of `kind:"tcp_reset"` whose local or remote port is `port`.
pub fn resets_on_port(records: &[Value], port: u16) -> Vec<Value> {
    records
        .iter()
        .filter(|r| r["kind"] == "tcp_reset" && (r["sport"] == port || r["dport"] == port))
        .cloned()
        .collect()
}

/// Resets on `port` in `direction` ("sent" or "received").
pub fn resets(records: &[Value], port: u16, direction: &str) -> Vec<Value> {
    resets_on_port(records, port)
        .into_iter()
        .filter(|r| r["direction"] == direction)
        .collect()
}

/// An established loopback connection whose client end closes with SO_LINGER {1, 0}.
pub struct LingerPair {
    pub client: std::net::TcpStream,
    pub accepted: std::net::TcpStream,
    pub client_port: u16,
    pub server_port: u16,
}

impl LingerPair {
    pub fn connect() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let server_port = listener.local_addr().expect("addr").port();
        let client = std::net::TcpStream::connect(("127.0.0.1", server_port)).expect("connect");
        let (accepted, _) = listener.accept().expect("accept");
        let client_port = client.local_addr().expect("addr").port();
        socket2::SockRef::from(&client)
            .set_linger(Some(Duration::ZERO))
            .expect("SO_LINGER");
        Self {
            client,
            accepted,
            client_port,
            server_port,
        }
    }

    /// Closes the client end (the reset goes out) and returns the still-open server end.
    pub fn reset(self) -> std::net::TcpStream {
        drop(self.client);
        self.accepted
    }
}

/// The network namespace inode of this process.
pub fn own_netns() -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self/ns/net").expect("netns").ino()
}

/// The cgroup v2 id (inode of the cgroup directory) of this process.
pub fn own_cgroup_id() -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let text = std::fs::read_to_string("/proc/self/cgroup").expect("/proc/self/cgroup");
    let path = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup v2 line");
    std::fs::metadata(format!("/sys/fs/cgroup{path}"))
        .expect("cgroup directory")
        .ino()
}

/// The calling thread's id and kernel task name.
pub fn current_thread() -> (u32, String) {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() } as u32;
    let comm = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).expect("comm");
    (tid, comm.trim_end().to_owned())
}

/// SO_COOKIE of a socket (generating it if the kernel had not yet).
pub fn socket_cookie(fd: std::os::fd::RawFd) -> u64 {
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid out-pointers of the right size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    assert_eq!(
        rc,
        0,
        "getsockopt(SO_COOKIE): {}",
        std::io::Error::last_os_error()
    );
    cookie
}

/// A port on `ip` with nothing listening, below the ephemeral range so that no client socket
/// can be given the same port (which would make a TCP self-connect instead of a refusal).
pub fn closed_port(ip: std::net::IpAddr) -> u16 {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .expect("ip_local_port_range");
    let low: u16 = range
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("ephemeral range");
    // Spread tests over the range below it; a port that binds is free at this moment.
    let seed = std::process::id() as u16 ^ current_thread().0 as u16;
    let span = low.saturating_sub(10_000).max(1);
    (0..span)
        .map(|i| 10_000 + (seed.wrapping_add(i.wrapping_mul(7919)) % span))
        .find(|&p| std::net::TcpListener::bind((ip, p)).is_ok())
        .expect("a free port below the ephemeral range")
}

/// Connects from a bound client socket to `ip:port` where nothing listens; returns the client
/// port. The connect must be refused.
pub fn refused_connect(ip: std::net::IpAddr, port: u16) -> u16 {
    use socket2::{Domain, Socket, Type};
    let domain = if ip.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::STREAM, None).expect("socket");
    s.bind(&std::net::SocketAddr::new(ip, 0).into())
        .expect("bind");
    let client_port = s
        .local_addr()
        .expect("addr")
        .as_socket()
        .expect("inet")
        .port();
    let err = s
        .connect(&std::net::SocketAddr::new(ip, port).into())
        .expect_err("connect to a closed port must fail");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    client_port
}

/// Runs the `crasher` helper binary of this package (bin/crasher.rs); tests pass its path,
/// `env!("CARGO_BIN_EXE_crasher")`, which cargo defines for test targets only.
pub fn crasher(bin: &str, mode: &str, rlimit_core: Option<&str>) -> std::process::Child {
    let mut cmd = Command::new(bin);
    cmd.arg(mode)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(limit) = rlimit_core {
        cmd.env("CRASHER_RLIMIT_CORE", limit);
    }
    let mut child = cmd.spawn().expect("spawning crasher");
    if mode == "sleep" {
        // Wait until its signal dispositions are in place.
        let mut line = String::new();
        let stdout = child.stdout.as_mut().expect("crasher stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("crasher ready line");
        assert_eq!(line, "ready\n");
    }
    child
}

/// `core_signal` records whose target pid is `pid`.
pub fn core_signals_of(records: &[Value], pid: u32) -> Vec<Value> {
    records
        .iter()
        .filter(|r| r["kind"] == "core_signal" && r["pid"] == pid)
        .cloned()
        .collect()
}

/// Sets kernel.core_pattern (and core_uses_pid=0) and restores both when dropped.
pub struct CorePattern {
    old_pattern: String,
    old_uses_pid: String,
}

impl CorePattern {
    const PATTERN: &str = "/proc/sys/kernel/core_pattern";
    const USES_PID: &str = "/proc/sys/kernel/core_uses_pid";

    pub fn set(pattern: &str) -> Self {
        let guard = Self {
            old_pattern: std::fs::read_to_string(Self::PATTERN).expect("core_pattern"),
            old_uses_pid: std::fs::read_to_string(Self::USES_PID).expect("core_uses_pid"),
        };
        std::fs::write(Self::PATTERN, pattern).expect("setting core_pattern");
        std::fs::write(Self::USES_PID, "0").expect("setting core_uses_pid");
        guard
    }
}

impl Drop for CorePattern {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATTERN, self.old_pattern.trim_end_matches('\n'));
        let _ = std::fs::write(Self::USES_PID, self.old_uses_pid.trim_end_matches('\n'));
    }
}

/// A minimal HTTP/1.1 GET (no client library: the agent's server is under test, not a
/// client's). Returns the status code, the headers (lower-cased names) and the body.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, Vec<(String, String)>, String) {
    use std::io::Read as _;
    let mut stream = std::net::TcpStream::connect(addr).expect("connecting to the agent");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
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

/// A command for the agent binary.
pub fn probe_command() -> Command {
    Command::new(probe_bin())
}

/// Runs the agent binary with `args` to completion (for flags that exit at once).
pub fn run_probe(args: &[&str]) -> std::process::Output {
    probe_command()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running the probe")
}

/// The wasmtime CLI installed by `cargo xtask test` (WASMTIME_BIN).
pub fn wasmtime_bin() -> PathBuf {
    std::env::var_os("WASMTIME_BIN")
        .map(PathBuf::from)
        .expect("WASMTIME_BIN is not set: run the e2e tests with `cargo xtask test`")
}

/// `wasm_output` records of process `pid`, in order.
pub fn wasm_lines(records: &[Value], pid: u32) -> Vec<Value> {
    records
        .iter()
        .filter(|r| r["kind"] == "wasm_output" && r["pid"] == pid)
        .cloned()
        .collect()
}

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("probe-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating a temporary directory");
        Self(dir)
    }

    /// A copy of `program` in this directory named `name` (an executable by another name).
    pub fn copy_as(&self, program: &str, name: &str) -> PathBuf {
        let to = self.0.join(name);
        std::fs::copy(program, &to).expect("copying the program");
        to
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A WASI command module (WAT) that writes each `(fd, bytes)` with one `fd_write` call.
pub fn wat_writer(writes: &[(u32, Vec<u8>)]) -> String {
    let mut data = String::new();
    let mut calls = String::new();
    let mut at = 1024u32;
    for (fd, bytes) in writes {
        let escaped: String = bytes.iter().map(|b| format!("\\{b:02x}")).collect();
        data.push_str(&format!("  (data (i32.const {at}) \"{escaped}\")\n"));
        calls.push_str(&format!(
            "    (i32.store (i32.const 0) (i32.const {at}))\n    (i32.store (i32.const 4) (i32.const {len}))\n    (drop (call $fd_write (i32.const {fd}) (i32.const 0) (i32.const 1) (i32.const 8)))\n",
            len = bytes.len()
        ));
        at += bytes.len() as u32 + 16;
    }
    let pages = at / 65536 + 1;
    format!(
        "(module\n  (import \"wasi_snapshot_preview1\" \"fd_write\" (func $fd_write (param i32 i32 i32 i32) (result i32)))\n  (memory (export \"memory\") {pages})\n{data}  (func (export \"_start\")\n{calls}  )\n)\n"
    )
}
