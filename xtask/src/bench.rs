//! `cargo xtask bench [--quick]`: costs measured as ratios against a baseline in the same run
//! (never absolute timings in tests). Scenarios so far:
//! - write path of processes that are not selected for capture: `dd bs=1` to /dev/null
//!   (one 1-byte write(2) to fd 1 per byte: the worst case for the write hooks' fast path),
//!   throughput with and without the probe (no runtime on the node: write hooks detached),
//!   with a runtime up (hooks attached) and with capture off, alternating rounds, median and
//!   spread;
//! - in-kernel cost of every attached program (kernel.bpf_stats_enabled): ns per run.
//!
//! Prints a table and writes results.json into its directory (target/bench here; a VM's run
//! directory with `--kernel`, see bench_vm.rs).

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    bench_net::{self, Observed},
    setup::{apt_install, is_root},
};

/// Bytes per second of `dd bs=1` into /dev/null.
fn write_loop(bytes: u64) -> Result<f64> {
    let start = Instant::now();
    let status = Command::new("dd")
        .args([
            "if=/dev/zero",
            "of=/dev/null",
            "bs=1",
            &format!("count={bytes}"),
        ])
        .stderr(Stdio::null())
        .status()
        .context("running dd")?;
    if !status.success() {
        bail!("dd failed: {status}");
    }
    Ok(bytes as f64 / start.elapsed().as_secs_f64())
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn spread(v: &[f64]) -> f64 {
    let max = v.iter().copied().fold(f64::MIN, f64::max);
    let min = v.iter().copied().fold(f64::MAX, f64::min);
    max - min
}

/// (program name, run count, total run time ns) of the probe's programs, from bpftool.
fn program_stats() -> Result<Vec<(String, u64, u64)>> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .context("running bpftool")?;
    let progs: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).context("parsing bpftool output")?;
    Ok(progs
        .iter()
        .filter_map(|p| {
            Some((
                p["name"].as_str()?.to_owned(),
                p["run_cnt"].as_u64().unwrap_or(0),
                p["run_time_ns"].as_u64().unwrap_or(0),
            ))
        })
        .collect())
}

/// The hooks the agent picks on this kernel for write capture (`probe --check-kernel`'s
/// `wasm_write` and `wasm_writev` rows).
fn write_hooks(bin: &Path) -> String {
    let out = Command::new(bin).arg("--check-kernel").output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    // Fixed-width columns: capability, hook, note (what failed before the hook chosen).
    let header = text.lines().next().unwrap_or_default();
    let (hook_at, note_at) = (header.find("hook"), header.find("note"));
    let rows: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("wasm_write"))
        .filter_map(|l| {
            let hook = l.get(hook_at?..note_at?.min(l.len()))?.trim();
            Some(format!("{}: {hook}", l.split_whitespace().next()?))
        })
        .collect();
    if rows.is_empty() {
        "(unknown: probe --check-kernel printed no wasm_write row)".to_owned()
    } else {
        rows.join("; ")
    }
}

/// A process selected for capture that writes nothing (a copy of sleep named `wasmtime`): while
/// it runs the agent's write hooks are attached, as on a node with a Wasm runtime.
struct Runtime(std::process::Child);

impl Runtime {
    fn start(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let exe = dir.join("wasmtime");
        std::fs::copy("/bin/sleep", &exe).context("copying sleep as a runtime")?;
        let child = Command::new(&exe)
            .arg("3600")
            .spawn()
            .context("starting the runtime")?;
        // The gate attaches within milliseconds of the exec.
        std::thread::sleep(Duration::from_millis(300));
        Ok(Self(child))
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the benchmarks run besides the agent (a VM guest shares the host's, without network).
pub fn install_tools() -> Result<()> {
    apt_install(&["bpftool", "nginx-light", "wrk", "nghttp2-client"])
        .or_else(|_| apt_install(&["bpftool", "nginx", "wrk", "nghttp2-client"]))
}

/// Steady rates with JSON and with JSON plus OTLP (HTTP/protobuf to the test receiver), every
/// reset a record (`--fold-first 0`: a node whose events are all of different keys, the
/// record path's worst case); each rate's figures printed as it ends.
pub fn steady_rates(bin: &Path, receiver: &Path, quick: bool) -> Result<Vec<bench_net::Steady>> {
    let rates: [u32; 3] = [1_000, 10_000, 100_000];
    let (secs, rounds) = if quick { (5, 1) } else { (10, 3) };
    let mut steady = Vec::new();
    for rate in rates {
        let s = bench_net::otlp_steady(
            bin,
            receiver,
            rate,
            secs,
            rounds,
            &["--fold-first", "0", "--otlp-max-spans", "0"],
            &["--fold-first", "0"],
        )?;
        print_steady(&s);
        steady.push(s);
    }
    Ok(steady)
}

/// One steady rate's figures.
fn print_steady(s: &bench_net::Steady) {
    println!(
        "\n== steady {:.0} events/s (reached {:.0}), every reset a record: agent CPU per million events",
        s.events_per_s, s.achieved_per_s
    );
    println!(
        "{:<28} {:>14.3}",
        "idle agent CPU ms / s", s.idle_cpu_ms_per_s
    );
    println!(
        "{:<28} {:>14.3}   (nothing subtracted)",
        "JSON+OTLP: agent CPU ms / s", s.busy_cpu_ms_per_s_otlp
    );
    println!(
        "{:<28} {:>14.3}   (idle subtracted; medians of {} rounds; target <= 1)",
        "JSON: CPU s / M events", s.cpu_s_per_million_json, s.rounds
    );
    println!(
        "{:<28} {:>14.3}   (target <= 1)",
        "JSON+OTLP: CPU s / M events", s.cpu_s_per_million_otlp
    );
    println!(
        "{:<28} {:>14.3}   (the OTLP output's default budget, 200 spans/s; target <= 1)",
        "JSON+OTLP budgeted: CPU s/M", s.cpu_s_per_million_budgeted
    );
    println!(
        "{:<28} {:>14.3}   (OTLP's share: the difference; target <= 2)",
        "OTLP: CPU s / M spans", s.cpu_s_per_million_spans
    );
    println!(
        "{:<28} {:>14.2}   (spans received {})",
        "OTLP requests / s", s.requests_per_s, s.spans_received
    );
}

/// The benchmarks load BPF programs.
pub fn require_root() -> Result<()> {
    if !is_root() {
        bail!("the benchmarks load BPF programs: run them as root");
    }
    Ok(())
}

pub fn bench(bin: &Path, receiver: &Path, quick: bool, dir: &Path) -> Result<()> {
    require_root()?;
    install_tools()?;
    let rounds = if quick { 3 } else { 7 };
    let bytes: u64 = if quick { 1_000_000 } else { 3_000_000 };
    let stats_sysctl = "/proc/sys/kernel/bpf_stats_enabled";
    let old_stats = std::fs::read_to_string(stats_sysctl).unwrap_or_else(|_| "0".into());

    let mut baseline = Vec::new();
    let mut probed = Vec::new();
    let mut no_capture = Vec::new();
    let mut with_runtime = Vec::new();
    let warm_dir = dir.join("runtime");
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let write_hooks = write_hooks(bin);
    println!(
        "\n== kernel {}: write capture through {write_hooks}",
        release.trim()
    );
    let kernel;
    write_loop(bytes / 10)?; // warm-up
    for _ in 0..rounds {
        baseline.push(write_loop(bytes)?);
        let agent = Observed::start(bin, &[])?;
        probed.push(write_loop(bytes)?);
        drop(agent);
        let agent = Observed::start(bin, &["--capture-bytes", "0"])?;
        no_capture.push(write_loop(bytes)?);
        drop(agent);
        let agent = Observed::start(bin, &[])?;
        let runtime = Runtime::start(&warm_dir)?;
        with_runtime.push(write_loop(bytes)?);
        drop(runtime);
        drop(agent);
        std::thread::sleep(Duration::from_millis(200));
    }
    // In-kernel cost: its own round, since the statistics slow every program down; with a
    // runtime on the node, so the write hooks are attached.
    {
        let _agent = Observed::start(bin, &[])?;
        let _runtime = Runtime::start(&warm_dir)?;
        std::fs::write(stats_sysctl, "1").context("enabling kernel.bpf_stats_enabled")?;
        write_loop(bytes)?;
        kernel = program_stats()?;
        std::fs::write(stats_sysctl, old_stats.trim()).ok();
    }
    let (base, with) = (median(baseline.clone()), median(probed.clone()));
    let ratio = with / base;
    let without_capture = median(no_capture.clone());
    let runtime_on = median(with_runtime.clone());

    println!(
        "\n== write path of a process that is not selected (dd bs=1 > /dev/null, {bytes} writes, {rounds} rounds)"
    );
    println!("{:<28} {:>14} {:>14}", "", "median B/s", "spread B/s");
    println!(
        "{:<28} {:>14.0} {:>14.0}",
        "without probe",
        base,
        spread(&baseline)
    );
    println!(
        "{:<28} {:>14.0} {:>14.0}",
        "with probe",
        with,
        spread(&probed)
    );
    println!(
        "{:<28} {:>14.4}   (target >= 0.97; no runtime: write hooks detached)",
        "throughput ratio", ratio
    );
    println!(
        "{:<28} {:>14.0} {:>14.0}",
        "with probe, a runtime up",
        runtime_on,
        spread(&with_runtime)
    );
    println!(
        "{:<28} {:>14.4}   (write hooks attached; dd itself is not selected)",
        "ratio, a runtime up",
        runtime_on / base
    );
    println!(
        "{:<28} {:>14.0} {:>14.0}",
        "with probe, capture off",
        without_capture,
        spread(&no_capture)
    );
    println!(
        "{:<28} {:>14.4}   (syscall hooks not attached)",
        "ratio, capture off",
        without_capture / base
    );

    let ours = [
        "tcp_send_reset",
        "tcp_receive_reset",
        "softirq_entry",
        "softirq_exit",
        "signal_generate",
        "sched_process_exi",
        "sched_process_for",
        "sched_process_exe",
        "sys_enter_write",
        "sys_enter_writev",
        "sys_exit_write",
        "sys_exit_writev",
        "ksys_write_fexit",
        "ksys_write_kprobe",
        "ksys_write_kretprobe",
        "do_writev_fexit",
        "do_writev_kprobe",
        "do_writev_kretprobe",
        "kfree_skb",
        "inet_sock_set_s",
        "tcp_sendmsg_loc",
    ];
    println!(
        "\n== in-kernel cost per program during one more with-probe write loop (kernel.bpf_stats_enabled)"
    );
    println!("{:<20} {:>14} {:>12}", "program", "runs", "ns/run");
    let mut kernel_json = Vec::new();
    for (name, runs, ns) in kernel.iter().filter(|(n, ..)| {
        ours.iter()
            .any(|o| n.starts_with(o) || o.starts_with(n.as_str()))
    }) {
        let per = if *runs > 0 {
            *ns as f64 / *runs as f64
        } else {
            0.0
        };
        println!("{name:<20} {runs:>14} {per:>12.1}");
        kernel_json.push(serde_json::json!({"program": name, "runs": runs, "ns_per_run": per}));
    }

    std::fs::create_dir_all(dir)?;

    let nginx = bench_net::Nginx::start(&dir.join("nginx"))?;
    let http = loopback_http(bin, quick, bench_net::Scheme::Http)?;
    let https = loopback_http(bin, quick, bench_net::Scheme::Https)?;
    let h2c = loopback_http(bin, quick, bench_net::Scheme::H2c)?;
    drop(nginx);

    // Reset storm.
    let storm = bench_net::reset_storm(
        bin,
        receiver,
        Duration::from_secs(if quick { 5 } else { 15 }),
    )?;
    let unaccounted =
        storm.generated as i64 - storm.delivered as i64 - storm.folded as i64 - storm.lost as i64;
    println!(
        "\n== reset storm (refused loopback connects from 2 threads, {:.1} s)",
        storm.seconds
    );
    println!(
        "{:<28} {:>14.0}",
        "resets generated / s",
        storm.generated as f64 / storm.seconds
    );
    println!("{:<28} {:>14}", "generated", storm.generated);
    println!(
        "{:<28} {:>14} ({:.4})",
        "in full (fraction)",
        storm.delivered,
        storm.delivered as f64 / storm.generated.max(1) as f64
    );
    println!(
        "{:<28} {:>14}   ({} summary records)",
        "in summaries (folded)", storm.folded, storm.summaries
    );
    println!(
        "{:<28} {:>14}   ({})",
        "probe_tcp_resets_total",
        storm.metric_resets,
        if storm.metric_resets == storm.generated {
            "exact".to_owned()
        } else {
            format!(
                "off by {}",
                storm.metric_resets as i64 - storm.generated as i64
            )
        }
    );
    let by: Vec<String> = storm
        .lost_by
        .iter()
        .map(|(s, n)| format!("{s} {n}"))
        .collect();
    println!(
        "{:<28} {:>14}   ({})",
        "lost, counted",
        storm.lost,
        if by.is_empty() {
            "none".to_owned()
        } else {
            by.join(", ")
        }
    );
    println!("{:<28} {:>14}   (target 0)", "unaccounted", unaccounted);
    println!(
        "{:<28} {:>14.3}   (target <= 0.5)",
        "agent CPU s / M generated", storm.cpu_s_per_million
    );
    println!(
        "{:<28} {:>14.3}",
        "agent CPU s / M delivered", storm.cpu_s_per_million_delivered
    );
    println!(
        "{:<28} {:>14.1}   (target < 64)",
        "agent peak RSS (MiB)", storm.peak_rss_mib
    );
    print_storm_otlp(&storm);

    // Latency from the kernel event to the JSON line.
    // A steady flow (a connect every 2 ms, every reset a record: the reader gathers up to
    // --read-delay, 200 ms), and lone events (300 ms apart: read within 10 ms).
    let (gap, every) = (Duration::from_millis(2), ["--fold-first", "0"]);
    let (p50, p99) = bench_net::json_latency(bin, if quick { 300 } else { 1000 }, gap, &every)?;
    println!("\n== latency, kernel event -> JSON line read by a consumer");
    println!("{:<28} {:>14.3}", "steady flow p50 (ms)", p50);
    println!(
        "{:<28} {:>14.3}   (target <= 250: --read-delay + 50)",
        "steady flow p99 (ms)", p99
    );
    let gap = Duration::from_millis(300);
    let (lone50, lone99) = bench_net::json_latency(bin, if quick { 10 } else { 30 }, gap, &[])?;
    println!("{:<28} {:>14.3}", "lone event p50 (ms)", lone50);
    println!(
        "{:<28} {:>14.3}   (target < 50)",
        "lone event p99 (ms)", lone99
    );
    let (otlp50, otlp99) = bench_net::otlp_latency(bin, receiver, if quick { 300 } else { 1000 })?;
    println!("\n== latency, kernel event -> span decoded by an OTLP receiver (gRPC)");
    println!("{:<28} {:>14.3}", "p50 (ms)", otlp50);
    println!("{:<28} {:>14.3}", "p99 (ms)", otlp99);
    let steady = steady_rates(bin, receiver, quick)?;
    // Kubernetes caches at two cluster sizes (the fake beside the receiver).
    let kube_scale = receiver.with_file_name("kube_scale");
    let (updates, rate) = (if quick { 100 } else { 200 }, 20);
    let small = crate::bench_k8s::scale(bin, &kube_scale, 2_000, updates, rate)?;
    let large = crate::bench_k8s::scale(bin, &kube_scale, 20_000, updates, rate)?;
    println!(
        "\n== Kubernetes caches: Services + 3x EndpointSlices, {updates} slice updates at {rate}/s"
    );
    println!(
        "{:<28} {:>14} {:>14}",
        "objects",
        small.services + small.slices,
        large.services + large.slices
    );
    for (label, a, b) in [
        ("sync (s)", small.sync_s, large.sync_s),
        (
            "RSS synced (MiB)",
            small.rss_synced_mib,
            large.rss_synced_mib,
        ),
        ("peak RSS (MiB)", small.peak_rss_mib, large.peak_rss_mib),
        (
            "bytes per cached object",
            small.bytes_per_object,
            large.bytes_per_object,
        ),
        (
            "CPU ms per update",
            small.cpu_ms_per_update,
            large.cpu_ms_per_update,
        ),
    ] {
        println!("{label:<28} {a:>14.2} {b:>14.2}");
    }
    println!(
        "{:<28} {:>14.2}   (target: about 1, no full rebuild per event; RSS within 256 MiB)",
        "CPU per update, large/small",
        large.cpu_ms_per_update / small.cpu_ms_per_update.max(1e-6)
    );
    let k8s_json = |s: &crate::bench_k8s::Scale| {
        serde_json::json!({ "services": s.services, "slices": s.slices, "sync_s": s.sync_s,
            "rss_base_mib": s.rss_base_mib, "rss_synced_mib": s.rss_synced_mib,
            "peak_rss_mib": s.peak_rss_mib, "bytes_per_object": s.bytes_per_object,
            "cpu_ms_per_update": s.cpu_ms_per_update })
    };
    let doc = serde_json::json!({
        "machine": { "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
                     "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim() },
        "write_path": { "writes": bytes, "rounds": rounds,
                        "baseline_bytes_per_s": baseline, "probe_bytes_per_s": probed,
                        "median_ratio": ratio,
                        "capture_off_bytes_per_s": no_capture,
                        "capture_off_median_ratio": without_capture / base,
                        "runtime_up_bytes_per_s": with_runtime,
                        "runtime_up_median_ratio": runtime_on / base },
        "write_hooks": write_hooks,
        "kernel_programs": kernel_json,
        "http": http,
        "https": https,
        "h2c": h2c,
        "reset_storm": { "seconds": storm.seconds, "generated": storm.generated,
                         "delivered": storm.delivered, "folded": storm.folded,
                         "summaries": storm.summaries,
                         "probe_tcp_resets_total": storm.metric_resets, "lost": storm.lost,
                         "lost_by_source": storm.lost_by,
                         "unaccounted": unaccounted,
                         "agent_cpu_s_per_million_events": storm.cpu_s_per_million,
                         "agent_cpu_s_per_million_delivered": storm.cpu_s_per_million_delivered,
                         "agent_peak_rss_mib": storm.peak_rss_mib,
                         "otlp": {
                             "spans": storm.otlp.spans, "log_records": storm.otlp.logs,
                             "resets_in_full": storm.otlp.full,
                             "resets_folded": storm.otlp.folded,
                             "spans_per_s": storm.otlp.spans as f64 / storm.otlp.seconds(),
                             "span_bytes_per_s": storm.otlp.span_bytes as f64 / storm.otlp.seconds(),
                             "log_records_per_s": storm.otlp.logs as f64 / storm.otlp.seconds(),
                             "log_bytes_per_s": storm.otlp.log_bytes as f64 / storm.otlp.seconds() } },
        "json_latency_ms": { "p50": p50, "p99": p99 },
        "json_lone_latency_ms": { "p50": lone50, "p99": lone99 },
        "otlp_latency_ms": { "p50": otlp50, "p99": otlp99 },
        "kubernetes": [k8s_json(&small), k8s_json(&large)],
        "steady": steady.iter().map(|s| serde_json::json!({
            "events_per_s": s.events_per_s,
            "achieved_per_s": s.achieved_per_s,
            "rounds": s.rounds,
            "idle_cpu_ms_per_s": s.idle_cpu_ms_per_s,
            "busy_cpu_ms_per_s_otlp": s.busy_cpu_ms_per_s_otlp,
            "otlp_share_cpu_s_per_million_spans": s.cpu_s_per_million_spans,
            "json_cpu_s_per_million": s.cpu_s_per_million_json,
            "otlp_cpu_s_per_million": s.cpu_s_per_million_otlp,
            "otlp_budgeted_cpu_s_per_million": s.cpu_s_per_million_budgeted,
            "spans_received": s.spans_received,
            "requests_per_s": s.requests_per_s })).collect::<Vec<_>>(),
    });
    let path = dir.join("results.json");
    std::fs::write(&path, serde_json::to_string_pretty(&doc)?)?;
    println!("\nresults: {}", path.display());
    Ok(())
}

/// The storm as the OTLP receiver saw it: every reset in full or in a summary's count, at a
/// rate within the node's budget (`--otlp-max-spans`/`--otlp-max-logs`, 200/s by default,
/// summaries above it: a few per second).
/// Loopback HTTP throughput (nginx, wrk) without the agent and with it in several settings,
/// in alternating rounds; printed, and returned for the JSON report. Over TLS (`Https`), the
/// trace tie reads requests at OpenSSL's `SSL_write`/`SSL_read` (uprobes: a trap per call in
/// wrk and nginx), and "no trace tie" leaves those out too.
fn loopback_http(bin: &Path, quick: bool, scheme: bench_net::Scheme) -> Result<serde_json::Value> {
    // Loopback HTTP: nginx + wrk, alternating rounds; plain requests, then requests with a
    // traceparent (read on both ends: the client's send and nginx's receive).
    let (http_rounds, http_secs) = if quick { (3, 3) } else { (5, 5) };
    let mut runs: [Vec<f64>; 6] = Default::default();
    let settings: [(Option<&[&str]>, bool); 6] = [
        (None, false),
        (Some(&[]), false),
        // Without the syscall hooks of Wasm capture (the traced-syscall path).
        (Some(&["--capture-bytes", "0"]), false),
        // Without the request hooks (send and receive) of the trace tie.
        (Some(&["--http-trace-context", "false"]), false),
        (None, true),
        (Some(&[]), true),
    ];
    for _ in 0..http_rounds {
        for ((args, traced), out) in settings.iter().zip(runs.iter_mut()) {
            let agent = args.map(|a| Observed::start(bin, a)).transpose()?;
            out.push(bench_net::http_rps(http_secs, *traced, scheme)?);
            drop(agent);
        }
    }
    let [
        http_base,
        http_probe,
        http_nocap,
        http_notie,
        traced_base,
        traced_probe,
    ] = runs;
    let rps_ratio =
        |with: &[f64], without: &[f64]| median(with.to_vec()) / median(without.to_vec());
    let http_ratio = rps_ratio(&http_probe, &http_base);
    let http_nocap_ratio = rps_ratio(&http_nocap, &http_base);
    let http_notie_ratio = rps_ratio(&http_notie, &http_base);
    let traced_ratio = rps_ratio(&traced_probe, &traced_base);
    println!(
        "\n== loopback {} (nginx, {}, {http_secs} s, {http_rounds} rounds)",
        scheme.name(),
        scheme.tool()
    );
    println!(
        "{:<28} {:>14.0} {:>14.0}",
        "without probe (req/s)",
        median(http_base.clone()),
        spread(&http_base)
    );
    println!(
        "{:<28} {:>14.0} {:>14.0}",
        "with probe (req/s)",
        median(http_probe.clone()),
        spread(&http_probe)
    );
    println!(
        "{:<28} {:>14.4}   (target >= 0.97; the receive hook reads each request)",
        "requests/s ratio", http_ratio
    );
    println!(
        "{:<28} {:>14.4}",
        "ratio, --capture-bytes 0", http_nocap_ratio
    );
    println!(
        "{:<28} {:>14.4}   (no request hooks)",
        "ratio, no trace tie", http_notie_ratio
    );
    println!(
        "{:<28} {:>14.4}   (every request carries a traceparent)",
        "ratio, traced requests", traced_ratio
    );

    Ok(
        serde_json::json!({ "rounds": http_rounds, "seconds": http_secs, "baseline_rps": http_base,
                  "probe_rps": http_probe, "median_ratio": http_ratio,
                  "capture_off_rps": http_nocap, "capture_off_median_ratio": http_nocap_ratio,
                  "trace_tie_off_rps": http_notie, "trace_tie_off_median_ratio": http_notie_ratio,
                  "traced_baseline_rps": traced_base, "traced_probe_rps": traced_probe,
                  "traced_median_ratio": traced_ratio }),
    )
}

fn print_storm_otlp(storm: &bench_net::Storm) {
    let o = &storm.otlp;
    let secs = o.seconds();
    let folded: u64 = o.folded.values().sum();
    println!("-- at the OTLP receiver (default budget: 200 spans/s, 200 log records/s)");
    println!(
        "{:<28} {:>14}   (in full {}, folded {:?})",
        "resets accounted",
        o.full + folded,
        o.full,
        o.folded
    );
    println!(
        "{:<28} {:>14}   ({})",
        "of generated",
        storm.generated,
        if o.full + folded == storm.generated {
            "exact".to_owned()
        } else {
            format!(
                "off by {}",
                (o.full + folded) as i64 - storm.generated as i64
            )
        }
    );
    println!(
        "{:<28} {:>14.0}   ({:.1} s of exports)",
        "spans / s",
        o.spans as f64 / secs,
        secs
    );
    println!(
        "{:<28} {:>14.0}",
        "span bytes / s",
        o.span_bytes as f64 / secs
    );
    println!("{:<28} {:>14.0}", "log records / s", o.logs as f64 / secs);
    println!(
        "{:<28} {:>14.0}",
        "log bytes / s",
        o.log_bytes as f64 / secs
    );
    if o.spans > 0 {
        println!(
            "{:<28} {:>14.0}",
            "bytes / span (in requests)",
            o.span_bytes as f64 / o.spans as f64
        );
    }
}
