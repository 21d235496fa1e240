//! Root end-to-end tests on one or more kernels: the test executables of `probe-tests` are
//! built once, then run one file at a time on the host and inside VMs of the kernel matrix
//! (`vm.rs`), against the same agent binary. Prints cargo's usual test output per kernel, then
//! one summary table (test file x kernel).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    pins,
    tables::{FileResult, parse},
    vm,
};

/// One built test executable (a file of `tests/`).
pub struct TestExe {
    pub name: String,
    pub path: PathBuf,
}

/// Builds the root test executables (without running them) and lists them.
pub fn build(mut cargo: Command, only: Option<&str>) -> Result<Vec<TestExe>> {
    cargo.args([
        "test",
        "--package",
        "probe-tests",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ]);
    if let Some(file) = only {
        cargo.args(["--test", file]);
    }
    let out = cargo
        .stderr(Stdio::inherit())
        .output()
        .context("building the root tests")?;
    if !out.status.success() {
        bail!("building the root tests failed: {}", out.status);
    }
    let mut exes = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let is_test = msg["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "test"));
        if let (true, Some(exe), Some(name)) = (
            is_test && msg["reason"] == "compiler-artifact",
            msg["executable"].as_str(),
            msg["target"]["name"].as_str(),
        ) {
            exes.push(TestExe {
                name: name.to_owned(),
                path: exe.into(),
            });
        }
    }
    exes.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(exes)
}

/// Environment of the test executables (absolute paths: the guest shares this root).
pub struct Env {
    pub vars: Vec<(String, String)>,
    pub filter: Option<String>,
}

/// Runs every executable here, one at a time, printing their output as cargo would.
pub fn run_host(exes: &[TestExe], env: &Env) -> Result<BTreeMap<String, FileResult>> {
    let bin = probe_bin(env);
    let mut results = BTreeMap::new();
    for exe in exes {
        for run in pins::runs(&exe.name) {
            let text = match run.hooks.map(|h| (h, pins::attachable(Path::new(&bin), h))) {
                Some((hooks, Err(rows))) => {
                    let text = format!(
                        "\n!!!!! {} --hooks {hooks} !!!!!\n{rows}",
                        pins::NOT_ATTACHABLE
                    );
                    println!("     Running {}\n{text}", run.label);
                    text
                }
                _ => {
                    println!("     Running {} ({})", run.label, exe.path.display());
                    run_exe(exe, env, run.hooks)?
                }
            };
            results.insert(run.label, parse(&text));
        }
    }
    Ok(results)
}

/// One executable, its output echoed as it comes (stderr carries the loud unsupported lines)
/// and returned.
fn run_exe(exe: &TestExe, env: &Env, hooks: Option<&str>) -> Result<String> {
    let mut cmd = Command::new(&exe.path);
    cmd.args(["--test-threads=1"])
        .args(env.filter.iter())
        .envs(env.vars.iter().map(|(k, v)| (k, v)))
        .envs(hooks.map(|h| ("PROBE_HOOKS", h)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("running {}", exe.path.display()))?;
    let stderr = child.stderr.take().context("stderr")?;
    let echo = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{line}");
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    let mut text = String::new();
    for line in BufReader::new(child.stdout.take().context("stdout")?)
        .lines()
        .map_while(Result::ok)
    {
        println!("{line}");
        text.push_str(&line);
        text.push('\n');
    }
    child.wait()?;
    text.push_str(&echo.join().unwrap_or_default());
    Ok(text)
}

pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The start of every guest script: what the host has and a bare VM lacks (tracefs, bpffs,
/// loopback, /run/netns, writable temporary and cache directories: the shared root is
/// read-only), then a heartbeat into `out_dir` that tells the host the guest is alive.
pub fn guest_setup(out_dir: &Path) -> String {
    let mut s = String::from(
        "set -u\n\
         mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing\n\
         mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf\n\
         ip link set lo up\n\
         mkdir -p /run/netns\n\
         export TMPDIR=/tmp\n\
         export XDG_CACHE_HOME=/tmp/xdg-cache\n\
         uname -r\n",
    );
    let _ = writeln!(
        s,
        "(while :; do printf . >> {}; sleep 10; done) &",
        shell_quote(&out_dir.join(vm::HEARTBEAT).display().to_string())
    );
    s
}

/// How long one test file may run inside a VM: a guard against a hung file, not a measure.
/// The slowest, `otlp_export` (13 tests, each with its own agent and collector), took 270 s on
/// 6.12 and 416 s on 5.10 under TCG in one fresh-clone run: 420 s left it no margin.
const FILE_TIMEOUT_S: u32 = 720;
/// The file naming the test file a guest is running (what a hung guest was doing).
const CURRENT: &str = "current";

/// One line when a guest starts the next test file: the kernel, file n of N, its name, the
/// time since the boot, and the files passed and failed so far (read from the logs the guest
/// left). `shown`: the file of the last line printed.
fn progress(
    release: &str,
    labels: &[String],
    out_dir: &Path,
    elapsed: Duration,
    shown: &mut String,
) {
    let current = fs::read_to_string(out_dir.join(CURRENT)).unwrap_or_default();
    let current = current.trim();
    if current.is_empty() || current == shown {
        return;
    }
    current.clone_into(shown);
    let Some(n) = labels.iter().position(|l| l == current) else {
        return;
    };
    let (mut passed, mut failed, mut not_attachable) = (0, 0, 0);
    for label in &labels[..n] {
        let log = fs::read_to_string(out_dir.join(format!("{label}.log"))).unwrap_or_default();
        let r = parse(&log);
        if r.not_attachable {
            not_attachable += 1;
        } else if r.broken || r.failed > 0 {
            failed += 1;
        } else {
            passed += 1;
        }
    }
    let secs = elapsed.as_secs();
    eprintln!(
        "xtask: vm {release}: file {}/{} {current} · {}m{:02}s · so far {passed} passed, \
         {failed} failed, {not_attachable} not attachable",
        n + 1,
        labels.len(),
        secs / 60,
        secs % 60
    );
}

/// The script a guest runs: prepares what the host has and a bare VM lacks (tracefs, bpffs,
/// loopback, a writable cache directory: the shared root is read-only), starts a heartbeat,
/// runs `probe --check-kernel`, then each executable with its output in a log file of
/// `out_dir`.
fn guest_script(exes: &[TestExe], env: &Env, out_dir: &Path) -> String {
    let q = |p: &Path| shell_quote(&p.display().to_string());
    let mut s = guest_setup(out_dir);
    for (k, v) in &env.vars {
        let _ = writeln!(s, "export {k}={}", shell_quote(v));
    }
    let _ = writeln!(
        s,
        "\"$PROBE_BIN\" --check-kernel > {} 2>&1",
        q(&out_dir.join(CHECK_KERNEL))
    );
    let filter = env.filter.as_deref().map(shell_quote).unwrap_or_default();
    let pinned: Vec<&str> = exes
        .iter()
        .flat_map(|e| pins::runs(&e.name))
        .filter_map(|r| r.hooks)
        .collect();
    let layers = pins::layers(pinned.iter().copied());
    let table = |i: usize| q(&out_dir.join(format!("check-kernel-pins-{i}.txt")));
    for (i, layer) in layers.iter().enumerate() {
        let _ = writeln!(s, "{}", pins::guest_check(layer, &table(i)));
    }
    for exe in exes {
        for run in pins::runs(&exe.name) {
            let log = q(&out_dir.join(format!("{}.log", run.label)));
            let command = format!(
                "timeout -k 10 {FILE_TIMEOUT_S} {path} --test-threads=1 {filter} > {log} 2>&1 < /dev/null\n\
                 rc=$?; [ $rc = 124 ] && echo 'xtask: timed out after {FILE_TIMEOUT_S} s' >> {log}",
                path = q(&exe.path),
            );
            let _ = writeln!(
                s,
                "echo {name} > {current}\n{command}",
                name = shell_quote(&run.label),
                current = q(&out_dir.join(CURRENT)),
                command = match run.hooks {
                    Some(hooks) => {
                        let i = layers
                            .iter()
                            .position(|l| hooks.split(',').all(|p| l.contains(&p)))
                            .unwrap_or_default();
                        pins::guest_run(hooks, &table(i), &log, &command)
                    }
                    None => command,
                },
            );
        }
    }
    let _ = writeln!(s, "dmesg > {}", q(&out_dir.join("dmesg.txt")));
    let _ = writeln!(s, "touch {}", q(&out_dir.join(vm::DONE_MARKER)));
    s
}

/// Hard links (copies across file systems) of the executables and the agent under `dir`: a
/// guest reads its binaries over 9p for many minutes, and a rebuild on the host meanwhile
/// must not change them under it.
pub fn snapshot(exes: &[TestExe], env: &Env, dir: &Path) -> Result<(Vec<TestExe>, Env)> {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir)?;
    let keep = |from: &Path| -> Result<PathBuf> {
        let to = dir.join(from.file_name().context("a file name")?);
        if fs::hard_link(from, &to).is_err() {
            fs::copy(from, &to).with_context(|| format!("copying {}", from.display()))?;
        }
        Ok(to)
    };
    let exes = exes
        .iter()
        .map(|e| {
            Ok(TestExe {
                name: e.name.clone(),
                path: keep(&e.path)?,
            })
        })
        .collect::<Result<_>>()?;
    let vars = env
        .vars
        .iter()
        .map(|(k, v)| {
            Ok(match k.as_str() {
                "PROBE_BIN" => (k.clone(), keep(Path::new(v))?.display().to_string()),
                _ => (k.clone(), v.clone()),
            })
        })
        .collect::<Result<_>>()?;
    Ok((
        exes,
        Env {
            vars,
            filter: env.filter.clone(),
        },
    ))
}

/// Where a run leaves `probe --check-kernel`'s table.
const CHECK_KERNEL: &str = "check-kernel.txt";

/// `probe --check-kernel` here (the VM runs it in its script).
pub fn check_kernel_host(env: &Env) -> String {
    Command::new(probe_bin(env))
        .arg("--check-kernel")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// The agent the tests run (`PROBE_BIN`).
fn probe_bin(env: &Env) -> String {
    env.vars
        .iter()
        .find(|(k, _)| k == "PROBE_BIN")
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// Boots `kernel` and runs the executables inside; results per file from their logs. A guest
/// that hung or died leaves the files it did not finish BROKEN, with the console's last lines
/// and every kernel complaint printed.
pub fn run_vm(
    kernel: &vm::Kernel,
    exes: &[TestExe],
    env: &Env,
    vm_dir: &Path,
) -> Result<(BTreeMap<String, FileResult>, String)> {
    let out_dir = vm_dir.join("runs").join(&kernel.release);
    let _ = fs::remove_dir_all(&out_dir);
    fs::create_dir_all(&out_dir)?;
    let script = out_dir.join("run.sh");
    fs::write(&script, guest_script(exes, env, &out_dir))?;
    let labels: Vec<String> = exes
        .iter()
        .flat_map(|exe| pins::runs(&exe.name))
        .map(|run| run.label)
        .collect();
    let mut shown = String::new();
    let ended = vm::boot(kernel, vm_dir, &script, &out_dir, &mut |elapsed| {
        progress(&kernel.release, &labels, &out_dir, elapsed, &mut shown)
    })?;
    // VMs run side by side: each one's report is written at once, after it is off.
    let mut report = String::new();
    let check = fs::read_to_string(out_dir.join(CHECK_KERNEL)).unwrap_or_default();
    let _ = writeln!(
        report,
        "probe --check-kernel on {}:\n{check}",
        kernel.release
    );
    let mut results = BTreeMap::new();
    for run in exes.iter().flat_map(|exe| pins::runs(&exe.name)) {
        let log =
            fs::read_to_string(out_dir.join(format!("{}.log", run.label))).unwrap_or_default();
        let _ = writeln!(
            report,
            "     Running {} (kernel {}, in a VM)\n{log}",
            run.label, kernel.release
        );
        results.insert(run.label, parse(&log));
    }
    let console = fs::read_to_string(out_dir.join(vm::CONSOLE)).unwrap_or_default();
    let trouble = vm::kernel_trouble(&console);
    if !trouble.is_empty() {
        let _ = writeln!(
            report,
            "xtask: vm: the kernel {} complained ({}):\n{}",
            kernel.release,
            out_dir.join(vm::CONSOLE).display(),
            trouble.join("\n")
        );
    }
    if ended != vm::Ended::Done {
        let current = fs::read_to_string(out_dir.join(CURRENT)).unwrap_or_default();
        let tail: Vec<&str> = console.lines().rev().take(30).collect();
        let _ = writeln!(
            report,
            "xtask: vm: the VM with {} did not finish its script ({ended:?}) while running {}; \
             last console lines:\n{}",
            kernel.release,
            current.trim(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    // One write under stdout's lock: the reports of VMs ending together do not interleave.
    let mut out = std::io::stdout().lock();
    let _ = std::io::Write::write_all(&mut out, report.as_bytes());
    let _ = std::io::Write::flush(&mut out);
    Ok((results, check))
}
