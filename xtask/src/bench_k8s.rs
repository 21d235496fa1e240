//! The agent's Kubernetes caches at cluster scale (`cargo xtask bench`): the API server fake
//! (tests/bin/kube_scale.rs) serves N Services and 3N EndpointSlices; the agent's resident
//! memory once synced, against the same agent without Kubernetes, gives the bytes per cached
//! object; EndpointSlice updates at 20 per second give the CPU per update (the agent's idle CPU
//! over the same time subtracted). Two cluster sizes, so a cost that grows with the cluster
//! shows.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Child, ChildStdin, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

pub struct Scale {
    pub services: usize,
    pub slices: usize,
    pub sync_s: f64,
    pub rss_base_mib: f64,
    pub rss_synced_mib: f64,
    pub peak_rss_mib: f64,
    pub bytes_per_object: f64,
    pub cpu_ms_per_update: f64,
}

/// A kB field of `/proc/PID/status` (`VmRSS`, `VmHWM`), 0 when unreadable.
pub fn status_kib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0)
}

/// The body of a plain HTTP/1.1 GET (the agent's endpoints, the API server fake).
pub fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_owned()))
}

/// The agent with its endpoints on a free loopback port; its address once ready.
fn agent(bin: &Path, kubeconfig: Option<&Path>) -> Result<(Child, SocketAddr)> {
    let mut cmd = Command::new(bin);
    cmd.args([
        "--output",
        "json",
        "--http-addr",
        "127.0.0.1:0",
        "--conntrack",
        "false",
        "--node-name",
        "bench-node",
    ]);
    match kubeconfig {
        Some(k) => cmd.env("KUBECONFIG", k),
        None => cmd.args(["--kubernetes", "off"]),
    };
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the probe")?;
    let mut log = BufReader::new(child.stderr.take().context("stderr")?).lines();
    let mut addr = None;
    loop {
        match log.next() {
            Some(Ok(l)) => {
                if let Some(rest) = l.split("http: listening on ").nth(1) {
                    addr = rest.split_whitespace().next().and_then(|a| a.parse().ok());
                }
                if l.contains("ready:") {
                    break;
                }
            }
            _ => bail!("the probe exited before it was ready"),
        }
    }
    std::thread::spawn(move || log.for_each(drop));
    Ok((child, addr.context("no http address in the log")?))
}

fn stop(mut child: Child) {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
}

/// The fake with `services` Services and 3x as many EndpointSlices; its stdin (commands).
fn fake(
    kube_scale: &Path,
    services: usize,
    dir: &Path,
) -> Result<(Child, ChildStdin, BufReaderLines, std::path::PathBuf)> {
    let mut child = Command::new(kube_scale)
        .args([services.to_string(), (3 * services).to_string()])
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", kube_scale.display()))?;
    let stdin = child.stdin.take().context("stdin")?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let first: serde_json::Value =
        serde_json::from_str(&lines.next().context("no kubeconfig line")??)?;
    let kubeconfig = first["kubeconfig"].as_str().context("kubeconfig")?.into();
    Ok((child, stdin, lines, kubeconfig))
}

type BufReaderLines = std::io::Lines<BufReader<std::process::ChildStdout>>;

/// One cluster size: `services` Services, 3x as many EndpointSlices, `updates` slice updates
/// at `rate` per second.
pub fn scale(
    bin: &Path,
    kube_scale: &Path,
    services: usize,
    updates: usize,
    rate: u32,
) -> Result<Scale> {
    let (base, addr) = agent(bin, None)?;
    std::thread::sleep(Duration::from_secs(2));
    let rss_base = status_kib(base.id(), "VmRSS");
    let _ = http_get(addr, "/health/live");
    stop(base);

    let dir = std::env::temp_dir().join(format!("probe-bench-k8s-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (mut fake, mut commands, mut answers, kubeconfig) = fake(kube_scale, services, &dir)?;
    let started = Instant::now();
    let (probe, addr) = agent(bin, Some(&kubeconfig))?;
    let slices = 3 * services;
    loop {
        let doc: serde_json::Value =
            serde_json::from_str(&http_get(addr, "/health/status")?).unwrap_or_default();
        let k = &doc["kubernetes"];
        if k["services"] == services && k["endpoints"] == slices {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("the caches did not fill in 10 minutes: {k}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let sync_s = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(2));
    let rss_synced = status_kib(probe.id(), "VmRSS");
    // Idle CPU over as long as the updates take, then the updates.
    let span = Duration::from_secs_f64(updates as f64 / f64::from(rate));
    let idle0 = crate::bench_net::cpu_seconds(probe.id());
    std::thread::sleep(span);
    let idle = crate::bench_net::cpu_seconds(probe.id()) - idle0;
    let busy0 = crate::bench_net::cpu_seconds(probe.id());
    writeln!(commands, "update {updates} {rate}")?;
    answers.next().context("the fake ended")??;
    std::thread::sleep(Duration::from_millis(500));
    let busy = crate::bench_net::cpu_seconds(probe.id()) - busy0;
    let peak = status_kib(probe.id(), "VmHWM");
    stop(probe);
    drop(commands);
    let _ = fake.kill();
    let _ = fake.wait();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Scale {
        services,
        slices,
        sync_s,
        rss_base_mib: rss_base / 1024.0,
        rss_synced_mib: rss_synced / 1024.0,
        peak_rss_mib: peak / 1024.0,
        bytes_per_object: (rss_synced - rss_base).max(0.0) * 1024.0 / (services + slices) as f64,
        cpu_ms_per_update: (busy - idle).max(0.0) * 1000.0 / updates as f64,
    })
}
