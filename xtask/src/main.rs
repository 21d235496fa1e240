//! Project tasks. `cargo xtask run` runs the probe, `cargo xtask test` runs every test; both
//! set the machine up first (`cargo xtask setup`).

mod bench;
mod bench_k8s;
mod bench_net;
mod bench_vm;
mod conventions;
mod docs_paths;
mod e2e;
mod image;
mod pins;
mod setup;
mod tables;
mod vm;

use std::{
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

use crate::setup::{Route, is_root, run_checked};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and running the probe needs (idempotent).
    Setup,
    /// Build the agent (release) and run it as root; arguments go to `probe`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Benchmarks (root): costs as ratios against a baseline in the same run.
    Bench {
        /// Fewer rounds and shorter loops (under 2 minutes).
        #[arg(long)]
        quick: bool,
        /// Kernels to run them on: `host`, a Debian line (`5.10`, `6.1`, `6.12`: booted under
        /// qemu, the benchmarks run inside), or `all`; comma-separated or repeated.
        #[arg(long = "kernel", value_delimiter = ',', default_value = "host")]
        kernels: Vec<String>,
        /// Only the steady-rate scenarios (idle, 1,000, 10,000 and 100,000 events/s), on this
        /// machine's kernel.
        #[arg(long, conflicts_with = "kernels")]
        steady: bool,
    },
    /// Inside a VM of `bench --kernel`: the benchmarks on already built binaries.
    #[command(hide = true)]
    BenchGuest {
        #[arg(long)]
        quick: bool,
        #[arg(long)]
        agent: PathBuf,
        #[arg(long)]
        receiver: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Regenerate what docs/ holds from the code (the flag table of docs/flags.md, from the
    /// clap definitions); a unit test fails when the committed copy differs.
    Docs,
    /// Build the DaemonSet's image (buildah, `FROM scratch`, no registry): into the local
    /// containers storage as node-probe:VERSION and into target/image/node-probe-VERSION.tar.
    Image,
    /// Unit tests, then the root end-to-end tests against the real kernel.
    Test {
        /// A root test file stem (e.g. `tcp_send_reset`, runs only that file), or a filter on
        /// test names.
        filter: Option<String>,
        /// Kernels to run the root tests on: `host`, a Debian line (`5.10`, `6.1`, `6.12`:
        /// its newest generic kernel package, booted under qemu), or `all`; comma-separated
        /// or repeated.
        #[arg(long = "kernel", value_delimiter = ',', default_value = DEFAULT_KERNELS)]
        kernels: Vec<String>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Setup => setup::setup().map(drop),
        Cmd::Docs => docs(),
        Cmd::Run { args } => run(&args),
        Cmd::Image => {
            let route = setup::setup()?;
            let agent = build_agent(&route)?;
            let built = image::build(&root_dir(), &target_dir(), &agent, image::Storage::Machine)?;
            println!(
                "image {} ({:.1} MB) in the local containers storage (podman/buildah images)\n\
                 archive: {} (kind load image-archive, k3s ctr images import, docker load)",
                built.reference,
                built.bytes as f64 / 1e6,
                built.archive.display()
            );
            Ok(())
        }
        Cmd::Test { filter, kernels } => test(filter.as_deref(), &kernels),
        Cmd::BenchGuest {
            quick,
            agent,
            receiver,
            out,
        } => bench::bench(&agent, &receiver, quick, &out),
        Cmd::Bench {
            quick,
            kernels,
            steady,
        } => {
            let columns = kernel_columns(&kernels)?;
            let route = setup::setup()?;
            let agent = build_agent(&route)?;
            run_checked(cargo(&route).args([
                "build",
                "--release",
                "--package",
                "probe-tests",
                "--bin",
                "otlp_receiver",
                "--bin",
                "kube_scale",
            ]))?;
            let receiver = target_dir().join("release").join("otlp_receiver");
            if steady {
                bench::require_root()?;
                bench::steady_rates(&agent, &receiver, quick)?;
                return Ok(());
            }
            for column in columns {
                match column {
                    None => bench::bench(&agent, &receiver, quick, &target_dir().join("bench"))?,
                    Some(line) => bench_vm::bench_in_vm(
                        line,
                        &agent,
                        &receiver,
                        quick,
                        &target_dir().join("vm"),
                    )?,
                }
            }
            Ok(())
        }
    }
}

fn root_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root_dir().join("target"), PathBuf::from)
}

fn cargo(route: &Route) -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root_dir())
        .env("PROBE_EBPF_TOOLCHAIN", &route.toolchain);
    cmd
}

/// Builds `probe` in release mode and returns its path.
fn build_agent(route: &Route) -> Result<PathBuf> {
    run_checked(cargo(route).args([
        "build",
        "--release",
        "--package",
        "probe-user",
        "--bin",
        "probe",
    ]))?;
    Ok(target_dir().join("release").join("probe"))
}

fn run(args: &[String]) -> Result<()> {
    let route = setup::setup()?;
    let bin = build_agent(&route)?;
    let mut cmd = if is_root() {
        Command::new(&bin)
    } else if Command::new("sudo")
        .arg("-n")
        .arg("true")
        .status()
        .is_ok_and(|s| s.success())
    {
        let mut sudo = Command::new("sudo");
        sudo.arg("-E").arg(&bin);
        sudo
    } else {
        bail!("the probe loads BPF programs and needs root: run `sudo cargo xtask run`");
    };
    // exec: signals (Ctrl-C) go straight to the probe, which drains and exits.
    let err = cmd.args(args).exec();
    Err(err).with_context(|| format!("executing {}", bin.display()))
}

/// `cargo xtask docs`: the generating unit test, told to write.
fn docs() -> Result<()> {
    let mut test = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    test.current_dir(root_dir())
        .args([
            "test",
            "-p",
            "probe-user",
            "--bin",
            "probe",
            "config::flags_doc",
        ])
        .env("AYA_BUILD_SKIP", "1")
        .env("PROBE_UPDATE_DOCS", "1");
    run_checked(&mut test)?;
    println!("xtask: docs/flags.md written from the flag definitions");
    Ok(())
}

/// What `cargo xtask test` runs the root tests on when `--kernel` is not given: this kernel and
/// the matrix (docs/testing.md has the times); `--kernel host` for a quick run.
const DEFAULT_KERNELS: &str = "all";

type VmRun = (
    String,
    (
        std::collections::BTreeMap<String, tables::FileResult>,
        String,
    ),
);

/// The root tests in a VM per kernel, the VMs side by side: under qemu TCG a guest runs on one
/// host thread (`thread=single`), so on a 2-core machine three guests take about half the
/// time they take one after another. Results in the order of `kernels`.
fn run_vms(
    kernels: &[vm::Kernel],
    vm_dir: &Path,
    exes: &[e2e::TestExe],
    env: &e2e::Env,
) -> Result<Vec<VmRun>> {
    std::thread::scope(|scope| {
        let runs: Vec<_> = kernels
            .iter()
            .map(|kernel| scope.spawn(move || e2e::run_vm(kernel, exes, env, vm_dir)))
            .collect();
        runs.into_iter()
            .zip(kernels)
            .map(|(run, kernel)| {
                let r = run.join().map_err(|_| {
                    anyhow::anyhow!("the VM thread of {} panicked", kernel.release)
                })??;
                Ok((kernel.release.clone(), r))
            })
            .collect()
    })
}

/// `host`, `5.10`, `6.1`, `6.12` from `--kernel` values (`all` = every one).
fn kernel_columns(values: &[String]) -> Result<Vec<Option<&'static vm::Line>>> {
    let mut out: Vec<Option<&'static vm::Line>> = Vec::new();
    for v in values {
        let add: Vec<Option<&'static vm::Line>> = match v.as_str() {
            "all" => std::iter::once(None)
                .chain(vm::LINES.iter().map(Some))
                .collect(),
            "host" => vec![None],
            other => vec![Some(vm::line(other).with_context(|| {
                let known: Vec<&str> = vm::LINES.iter().map(|l| l.name).collect();
                format!("--kernel {other}: expected host, all or one of {known:?}")
            })?)],
        };
        for k in add {
            if !out.iter().any(|o| o.map(|l| l.name) == k.map(|l| l.name)) {
                out.push(k);
            }
        }
    }
    Ok(out)
}

/// What `cargo xtask test` runs: the guests' kernels and tools are fetched while this machine
/// builds; then the guests run while this machine runs the unit tests and its own root tests
/// (those mostly wait on their peers; the emulated guests, 5 to 30 times slower, keep the CPUs
/// busy and show the tests' deadlines are not tight).
fn test(filter: Option<&str>, kernels: &[String]) -> Result<()> {
    let columns = kernel_columns(kernels)?;
    let route = setup::setup()?;
    let wasmtime = setup::test_peers(&target_dir())?;
    let e2e_file = filter.filter(|f| root_dir().join("tests").join(format!("{f}.rs")).is_file());
    let root = is_root();
    let lines: Vec<&vm::Line> = columns.iter().flatten().copied().collect();
    if !root {
        eprintln!("xtask: NOT ROOT: the end-to-end tests will report 'skipped: needs root'");
        for line in &lines {
            eprintln!(
                "xtask: NOT ROOT: kernel {} skipped: booting Debian kernels needs root",
                line.name
            );
        }
    }
    let image = root && e2e_file.is_none_or(|f| f == "daemonset");
    if image {
        // Before the guests' tools are installed: one apt at a time.
        setup::apt_install(&["podman", "runc"]).context("installing podman and runc")?;
    }
    let vm_dir = &target_dir().join("vm");
    let boot = root && !lines.is_empty();
    let (results, hooks) = std::thread::scope(|scope| -> Result<_> {
        let prepared = boot.then(|| scope.spawn(|| vm::prepare(&lines, vm_dir)));
        let bin = build_agent(&route)?;
        let exes = e2e::build(cargo(&route), e2e_file)?;
        let only = filter.filter(|_| e2e_file.is_none());
        let env = e2e_env(&bin, &wasmtime, image, only)?;
        let guests = match prepared.map(|t| t.join()) {
            Some(Ok(kernels)) => {
                let kernels = kernels?;
                // Guests read their binaries for many minutes: a snapshot a rebuild cannot touch.
                let (vm_exes, vm_env) = e2e::snapshot(&exes, &env, &vm_dir.join("bin"))?;
                Some(scope.spawn(move || run_vms(&kernels, vm_dir, &vm_exes, &vm_env)))
            }
            Some(Err(_)) => bail!("preparing the VMs panicked"),
            None => None,
        };
        let unit = e2e_file.is_none().then(|| unit_tests(&route, filter));
        let mut results = Vec::new();
        let mut hooks = Vec::new();
        if columns.iter().any(Option::is_none) {
            let check = e2e::check_kernel_host(&env);
            println!("probe --check-kernel on this machine:\n{check}");
            hooks.push(("host".to_owned(), check));
            results.push(("host".to_owned(), e2e::run_host(&exes, &env)?));
        }
        let vm_results = match guests.map(|t| t.join()) {
            Some(Ok(runs)) => runs?,
            Some(Err(_)) => bail!("the thread running the VMs panicked"),
            None => Vec::new(),
        };
        unit.transpose()?;
        for (release, (r, check)) in vm_results {
            hooks.push((release.clone(), check));
            results.push((release, r));
        }
        Ok((results, hooks))
    })?;
    if root {
        println!("{}", tables::hook_summary(&hooks));
    }
    let (table, all_ok) = tables::summary(&results);
    println!("{table}");
    println!("{}", pins::candidate_summary(&results));
    if !all_ok {
        bail!("root end-to-end tests failed (see the table above)");
    }
    Ok(())
}

/// The unit tests of the default members (no root needed).
fn unit_tests(route: &Route, filter: Option<&str>) -> Result<()> {
    let mut unit = cargo(route);
    unit.arg("test");
    if let Some(f) = filter {
        unit.arg(f);
    }
    run_checked(&mut unit)
}

/// What the root tests get: the agent, wasmtime, PATH and (`image`) the image the daemonset
/// test runs with podman, built like `cargo xtask image` does in a private storage that is
/// removed again (only the archive stays, under target/).
fn e2e_env(bin: &Path, wasmtime: &Path, image: bool, filter: Option<&str>) -> Result<e2e::Env> {
    let mut vars = Vec::new();
    if image {
        let store = target_dir().join("image").join("test-storage");
        let built = image::build(
            &root_dir(),
            &target_dir(),
            bin,
            image::Storage::Private(store),
        )?;
        eprintln!(
            "xtask: image {} ({:.1} MB): {}",
            built.reference,
            built.bytes as f64 / 1e6,
            built.archive.display()
        );
        vars.push(("PROBE_IMAGE".to_owned(), built.reference));
        vars.push((
            "PROBE_IMAGE_ARCHIVE".to_owned(),
            built.archive.display().to_string(),
        ));
    }
    vars.extend([
        ("PROBE_BIN".into(), bin.display().to_string()),
        ("WASMTIME_BIN".into(), wasmtime.display().to_string()),
        (
            "PATH".into(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
        ),
    ]);
    Ok(e2e::Env {
        vars,
        filter: filter.map(str::to_owned),
    })
}
