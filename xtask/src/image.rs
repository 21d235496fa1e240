//! `cargo xtask image`: the DaemonSet's image, built with no registry. The context is
//! assembled from this machine (the release agent, stripped; exactly the shared libraries it
//! links, found with ldd; the CA bundle for OTLP over TLS), then buildah builds
//! `deploy/Containerfile` (`FROM scratch`) from it. The result is in the local containers
//! storage (for `podman push`/`buildah push`) and in a docker-archive under target/image/ (for
//! `kind load image-archive`, `k3s ctr images import`, `docker load`, `podman load`).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::setup::{apt_install, output, run_checked};

/// The image name the manifests use; the tag is the workspace version.
pub const NAME: &str = "node-probe";
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Where the image goes: the machine's containers storage (`cargo xtask image`), or a private
/// one that is removed once the archive is written (`cargo xtask test`).
pub enum Storage {
    Machine,
    Private(PathBuf),
}

pub struct Built {
    pub reference: String,
    pub archive: PathBuf,
    pub bytes: u64,
}

pub fn tag() -> String {
    format!("{NAME}:{}", env!("CARGO_PKG_VERSION"))
}

/// Builds the image from `agent` (a release build of probe) and writes its archive.
pub fn build(root: &Path, target: &Path, agent: &Path, storage: Storage) -> Result<Built> {
    apt_install(&["buildah", "ca-certificates"]).context("installing buildah")?;
    let dir = target.join("image");
    let context = dir.join("context");
    assemble(&context, agent)?;
    let reference = tag();
    let conf = dir.join("containers.conf");
    // This machine's default `nofile` ulimit is refused by the runtime (no RUN steps here,
    // but buildah reads it anyway).
    std::fs::write(&conf, "[containers]\ndefault_ulimits = []\n")?;
    let buildah = |args: &[&str]| {
        let mut cmd = Command::new("buildah");
        cmd.env("CONTAINERS_CONF", &conf);
        if let Storage::Private(store) = &storage {
            cmd.arg("--root")
                .arg(store.join("root"))
                .arg("--runroot")
                .arg(store.join("run"))
                .args(["--storage-driver", "vfs"]);
        }
        cmd.args(args);
        cmd
    };
    let revision = git(root, &["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into());
    // The clone's origin (a fork builds its own source label); none in a bare checkout.
    let source = git(root, &["config", "--get", "remote.origin.url"])
        .filter(|u| !u.contains('@'))
        .unwrap_or_else(|| "unknown".into());
    let created =
        output(Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])).unwrap_or_default();
    let containerfile = root.join("deploy").join("Containerfile");
    let mut build = buildah(&["build", "--layers=false", "--quiet", "--tag", &reference]);
    for (k, v) in [
        ("VERSION", env!("CARGO_PKG_VERSION")),
        ("REVISION", revision.as_str()),
        ("CREATED", created.as_str()),
        ("SOURCE", source.as_str()),
    ] {
        build.arg("--build-arg").arg(format!("{k}={v}"));
    }
    build.arg("--file").arg(&containerfile).arg(&context);
    run_checked(build.stdout(std::process::Stdio::null())).context("buildah build")?;
    let archive = dir.join(format!("{NAME}-{}.tar", env!("CARGO_PKG_VERSION")));
    let _ = std::fs::remove_file(&archive);
    let dest = format!("docker-archive:{}:{reference}", archive.display());
    run_checked(&mut buildah(&["push", "--quiet", &reference, &dest])).context("buildah push")?;
    if let Storage::Private(store) = &storage {
        // vfs makes no mounts: removing the directory removes the storage.
        std::fs::remove_dir_all(store).with_context(|| format!("removing {}", store.display()))?;
    }
    let bytes = std::fs::metadata(&archive)?.len();
    Ok(Built {
        reference,
        archive,
        bytes,
    })
}

/// The build context: `rootfs/` holds every file of the image.
fn assemble(context: &Path, agent: &Path) -> Result<()> {
    if context.exists() {
        std::fs::remove_dir_all(context)?;
    }
    let rootfs = context.join("rootfs");
    let bin = rootfs.join("usr/local/bin");
    std::fs::create_dir_all(&bin)?;
    run_checked(
        Command::new("strip")
            .arg("--strip-all")
            .arg("-o")
            .arg(bin.join("probe"))
            .arg(agent),
    )
    .context("stripping the agent (binutils)")?;
    for lib in shared_libraries(agent)? {
        copy_into(&rootfs, &lib)?;
    }
    copy_into(&rootfs, Path::new(CA_BUNDLE)).context("the CA bundle (ca-certificates)")?;
    Ok(())
}

/// Copies `path` (symlinks followed) to the same path under `rootfs`, readable by anyone.
fn copy_into(rootfs: &Path, path: &Path) -> Result<()> {
    let dest = rootfs.join(path.strip_prefix("/").unwrap_or(path));
    std::fs::create_dir_all(dest.parent().expect("an absolute path has a parent"))?;
    std::fs::copy(path, &dest).with_context(|| format!("copying {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// The shared objects `agent` loads (ldd), the dynamic loader included.
fn shared_libraries(agent: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(agent).output().context("ldd")?;
    if !out.status.success() {
        bail!(
            "ldd {}: {}",
            agent.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut libs = Vec::new();
    for line in text.lines() {
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)`, `/lib64/ld-linux... (0x...)`,
        // `linux-vdso.so.1 (0x...)` (in the kernel, nothing to copy).
        let path = line
            .split("=>")
            .last()
            .and_then(|s| s.split_whitespace().next())
            .filter(|p| p.starts_with('/'));
        if let Some(p) = path {
            libs.push(PathBuf::from(p));
        } else if line.contains("not found") {
            bail!("ldd {}: {line}", agent.display());
        }
    }
    if !libs
        .iter()
        .any(|l| l.to_string_lossy().contains("ld-linux"))
    {
        bail!("ldd {}: no dynamic loader in:\n{text}", agent.display());
    }
    Ok(libs)
}

fn git(root: &Path, args: &[&str]) -> Option<String> {
    output(Command::new("git").arg("-C").arg(root).args(args))
}
