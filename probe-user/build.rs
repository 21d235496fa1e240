//! Compiles the kernel programs (`probe-ebpf`, binary `probe`) for the BPF target with
//! aya-build and leaves the object in OUT_DIR for `include_bytes_aligned!`.
//!
//! Toolchain: `PROBE_EBPF_TOOLCHAIN` (set by `cargo xtask setup`/`run`/`test`) names what
//! `rustup run` gets: `/usr` for Debian's rustc-web with its prebuilt BPF core (the default when
//! present), or a rustup toolchain such as `nightly` (which then builds core with build-std).
//! `AYA_BUILD_SKIP=1` skips the kernel build so `cargo check`/clippy work without the BPF
//! toolchain; the agent then refuses to start with a message saying so.
use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=PROBE_EBPF_TOOLCHAIN");
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let object = out_dir.join("probe");
    if env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        // An empty object: the loader reports "built without kernel programs".
        fs::write(&object, b"").context("writing the empty placeholder object")?;
        return Ok(());
    }

    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "probe-ebpf")
        .ok_or_else(|| anyhow!("package probe-ebpf not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .context("probe-ebpf manifest has no parent directory")?
        .as_str()
        .to_owned();
    let common_dir = PathBuf::from(&root_dir).join("../probe-common");
    println!("cargo:rerun-if-changed={}", common_dir.display());

    let toolchain = env::var("PROBE_EBPF_TOOLCHAIN").unwrap_or_else(|_| {
        if PathBuf::from("/usr/lib/rustlib/bpfel-unknown-none/lib").is_dir() {
            "/usr".to_owned()
        } else {
            "nightly".to_owned()
        }
    });
    aya_build::build_ebpf(
        [Package {
            name: "probe-ebpf",
            root_dir: &root_dir,
            ..Default::default()
        }],
        Toolchain::Custom(&toolchain),
    )
    .with_context(|| {
        format!(
            "building the kernel programs with toolchain {toolchain:?} failed; run \
             `cargo xtask setup` to install the BPF toolchain, or set AYA_BUILD_SKIP=1 to \
             build the agent without them"
        )
    })
}
