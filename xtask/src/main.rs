//! Project tasks. `cargo xtask run` runs the probe, `cargo xtask test` runs every test; both
//! set the machine up first (`cargo xtask setup`).

mod bench;
mod bench_net;
mod setup;

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
    },
    /// Unit tests, then the root end-to-end tests against the real kernel.
    Test {
        /// A root test file stem (e.g. `tcp_send_reset`, runs only that file), or a filter on
        /// test names.
        filter: Option<String>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Setup => setup::setup().map(drop),
        Cmd::Run { args } => run(&args),
        Cmd::Test { filter } => test(filter.as_deref()),
        Cmd::Bench { quick } => {
            let route = setup::setup()?;
            let agent = build_agent(&route)?;
            run_checked(cargo(&route).args([
                "build",
                "--release",
                "--package",
                "probe-tests",
                "--bin",
                "otlp_receiver",
            ]))?;
            let receiver = target_dir().join("release").join("otlp_receiver");
            bench::bench(&agent, &receiver, quick)
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

fn test(filter: Option<&str>) -> Result<()> {
    let route = setup::setup()?;
    let wasmtime = setup::test_peers(&target_dir())?;
    let e2e_file = filter.filter(|f| root_dir().join("tests").join(format!("{f}.rs")).is_file());
    // Unit tests of the default members (no root needed).
    if e2e_file.is_none() {
        let mut unit = cargo(&route);
        unit.arg("test");
        if let Some(f) = filter {
            unit.arg(f);
        }
        run_checked(&mut unit)?;
    }

    // Root end-to-end tests drive the real agent; one at a time, since every probe sees every
    // reset on the node.
    let bin = build_agent(&route)?;
    if !is_root() {
        eprintln!("xtask: NOT ROOT: the end-to-end tests will report 'skipped: needs root'");
    }
    let mut e2e = cargo(&route);
    e2e.args(["test", "--package", "probe-tests"])
        .env("PROBE_BIN", &bin)
        .env("WASMTIME_BIN", &wasmtime);
    match (e2e_file, filter) {
        (Some(file), _) => e2e.args(["--test", file]),
        (None, Some(f)) => e2e.arg(f),
        (None, None) => &mut e2e,
    };
    e2e.args(["--", "--test-threads=1"]);
    run_checked(&mut e2e)
}
