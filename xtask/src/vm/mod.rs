//! The kernel matrix: Debian's own kernel packages, fetched from the Debian registry with a
//! private apt configuration (the machine's sources are read, never changed), cached under
//! `target/vm/`, booted under qemu with virtme-ng (this machine's root shared read-only), and
//! the root end-to-end test executables run inside against the same built binaries.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result, bail};

use crate::setup::{apt_install, run_checked};

mod boot;

pub use self::boot::{CONSOLE, DONE_MARKER, Ended, HEARTBEAT, boot, kernel_trouble, kvm_works};

/// A kernel line nodes run: the newest Debian generic (`-amd64`) package of that line is used.
pub struct Line {
    pub name: &'static str,
    /// Package name = prefix + ABI/upload number + suffix.
    prefix: &'static str,
    suffixes: &'static [&'static str],
}

pub const LINES: [Line; 3] = [
    Line {
        name: "5.10",
        prefix: "linux-image-5.10.0-",
        suffixes: &["-amd64"],
    },
    Line {
        name: "6.1",
        prefix: "linux-image-6.1.0-",
        suffixes: &["-amd64"],
    },
    Line {
        name: "6.12",
        prefix: "linux-image-6.12.",
        suffixes: &["+deb12-amd64", "+deb13-amd64"],
    },
];

/// Suites searched for kernel packages, by the archive that serves them.
const SUITES: [(&str, &str); 6] = [
    ("debian", "bullseye"),
    ("debian-security", "bullseye-security"),
    ("debian", "bookworm"),
    ("debian-security", "bookworm-security"),
    ("debian", "bookworm-backports"),
    ("debian", "trixie"),
];

const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// Package lists older than this are refreshed (Debian replaces kernel ABIs).
const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
const VIRTME_NG: &str = "virtme-ng==1.42";

pub fn line(name: &str) -> Option<&'static Line> {
    LINES.iter().find(|l| l.name == name)
}

/// What orders packages of one line: the ABI number or upload version, then the earlier
/// suffix of the line's list (bookworm's `+deb12` before trixie's usr-merged `+deb13`).
fn package_rank(line: &Line, package: &str) -> Option<(u32, usize)> {
    let rest = package.strip_prefix(line.prefix)?;
    let (preference, digits) = line
        .suffixes
        .iter()
        .enumerate()
        .find_map(|(i, s)| rest.strip_suffix(s).map(|d| (line.suffixes.len() - i, d)))?;
    Some((digits.parse().ok()?, preference))
}

/// A private apt configuration under `dir`: suites of the machine's own Debian mirrors.
struct Apt {
    dir: PathBuf,
}

impl Apt {
    fn new(dir: &Path) -> Result<Self> {
        for sub in ["lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        let base = debian_base_uri()?;
        let mut sources = String::new();
        for (archive, suite) in SUITES {
            sources.push_str(&format!(
                "deb [signed-by={KEYRING}] {base}/{archive} {suite} main\n"
            ));
        }
        let list = dir.join("sources.list");
        if fs::read_to_string(&list).ok().as_deref() != Some(sources.as_str()) {
            fs::write(&list, sources)?;
            let _ = fs::remove_file(dir.join("lists/updated"));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    fn cmd(&self, tool: &str) -> Command {
        let d = |p: &str| self.dir.join(p).display().to_string();
        let mut cmd = Command::new(tool);
        cmd.arg("-o")
            .arg(format!("Dir::Etc::sourcelist={}", d("sources.list")))
            .args(["-o", "Dir::Etc::sourceparts=/dev/null"])
            .arg("-o")
            .arg(format!("Dir::State::Lists={}", d("lists")))
            .arg("-o")
            .arg(format!("Dir::Cache={}", d("cache")))
            .args(["-o", "Debug::NoLocking=1", "-o", "APT::Sandbox::User=root"])
            .current_dir(self.dir.join("cache"));
        cmd
    }

    fn update_if_stale(&self) -> Result<()> {
        let stamp = self.dir.join("lists/updated");
        let fresh = fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age < LISTS_MAX_AGE);
        if fresh {
            return Ok(());
        }
        eprintln!("xtask: vm: updating the kernel package lists (private apt configuration)");
        run_checked(self.cmd("apt-get").args(["update", "-qq"]))?;
        fs::write(stamp, b"")?;
        Ok(())
    }

    fn newest(&self, line: &Line) -> Result<String> {
        let out = self
            .cmd("apt-cache")
            .args(["pkgnames", line.prefix])
            .stderr(Stdio::inherit())
            .output()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|p| package_rank(line, p.trim()).map(|r| (r, p.trim().to_owned())))
            .max()
            .map(|(_, p)| p)
            .with_context(|| format!("no Debian kernel package of line {} found", line.name))
    }
}

/// The Debian mirror base URI of this machine (deb822 `URIs:` or a `deb` line), without the
/// archive name: `<base>/debian`, `<base>/debian-security`.
fn debian_base_uri() -> Result<String> {
    let mut texts = Vec::new();
    for dir in ["/etc/apt/sources.list.d"] {
        if let Ok(entries) = fs::read_dir(dir) {
            for e in entries.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "sources" || x == "list") {
                    texts.push(fs::read_to_string(p).unwrap_or_default());
                }
            }
        }
    }
    texts.push(fs::read_to_string("/etc/apt/sources.list").unwrap_or_default());
    for text in &texts {
        for word in text.split_whitespace() {
            if let Some(base) = word.strip_suffix("/debian")
                && (base.starts_with("http://") || base.starts_with("https://"))
            {
                return Ok(base.to_owned());
            }
        }
    }
    bail!("no Debian mirror found in /etc/apt sources (need a URI ending in /debian)")
}

/// A kernel ready to boot: its image and release.
pub struct Kernel {
    pub line: &'static str,
    pub release: String,
    pub image: PathBuf,
}

/// Fetches (or reuses) the newest package of `line` and extracts it under `vm_dir` (image and
/// modules; nothing is installed on this machine).
pub fn fetch(line: &'static Line, vm_dir: &Path) -> Result<Kernel> {
    let apt = Apt::new(&vm_dir.join("apt"))?;
    apt.update_if_stale()?;
    let package = apt.newest(line)?;
    let extracted = vm_dir.join("kernels").join(&package);
    if !extracted.join("boot").is_dir() {
        eprintln!("xtask: vm: downloading {package}");
        let cache = vm_dir.join("apt/cache");
        for e in fs::read_dir(&cache)?.flatten() {
            if e.path().extension().is_some_and(|x| x == "deb") {
                fs::remove_file(e.path())?;
            }
        }
        run_checked(apt.cmd("apt-get").args(["download", "-qq", &package]))?;
        let deb = fs::read_dir(&cache)?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .context("apt-get download left no .deb")?;
        let partial = vm_dir.join("kernels").join(format!("{package}.partial"));
        let _ = fs::remove_dir_all(&partial);
        fs::create_dir_all(&partial)?;
        run_checked(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&partial))?;
        fs::remove_file(&deb)?;
        fs::rename(&partial, &extracted)?;
    }
    let image = fs::read_dir(extracted.join("boot"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .with_context(|| format!("{package} has no boot/vmlinuz-*"))?;
    let release = image
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .context("kernel image name")?
        .to_owned();
    // virtme-ng links the guest's /lib/modules/RELEASE to the package's own tree (found
    // beside the image); it needs its module index. Usr-merged packages keep it under usr/.
    let base = if extracted.join("lib/modules").is_dir() {
        extracted.clone()
    } else {
        extracted.join("usr")
    };
    if !base
        .join("lib/modules")
        .join(&release)
        .join("modules.dep")
        .is_file()
    {
        run_checked(Command::new("depmod").arg("-b").arg(&base).arg(&release))?;
    }
    Ok(Kernel {
        line: line.name,
        release,
        image,
    })
}

/// qemu, kmod, busybox (virtme-ng's guest init needs it) and virtme-ng itself.
/// What the guests need before they boot: the tools, each line's kernel (fetched or cached)
/// and whether KVM works (found once: it boots a guest).
pub fn prepare(lines: &[&'static Line], vm_dir: &Path) -> Result<Vec<Kernel>> {
    ensure_tools()?;
    let kernels = lines
        .iter()
        .map(|line| fetch(line, vm_dir))
        .collect::<Result<Vec<_>>>()?;
    if let Some(first) = kernels.first() {
        kvm_works(first, vm_dir);
    }
    Ok(kernels)
}

pub fn ensure_tools() -> Result<()> {
    apt_install(&["qemu-system-x86", "kmod", "busybox-static"])?;
    let have = Command::new("vng")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        eprintln!("xtask: vm: installing {VIRTME_NG} from PyPI");
        run_checked(Command::new("python3").args(["-m", "pip", "install", "--quiet", VIRTME_NG]))
            .context("installing virtme-ng")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_package_of_a_line_prefers_bookworm_on_a_tie() {
        let l = line("6.12").unwrap();
        let mut names = [
            "linux-image-6.12.117+deb13-amd64",
            "linux-image-6.12.117+deb12-amd64",
            "linux-image-6.12.101+deb12-amd64",
            "linux-image-6.12-amd64",
            "linux-image-6.12.117+deb12-cloud-amd64",
        ]
        .iter()
        .filter_map(|p| package_rank(l, p).map(|r| (r, *p)))
        .collect::<Vec<_>>();
        names.sort();
        assert_eq!(
            names.last().map(|(_, p)| *p),
            Some("linux-image-6.12.117+deb12-amd64")
        );
        assert_eq!(names.len(), 3);
        let l = line("5.10").unwrap();
        assert_eq!(
            package_rank(l, "linux-image-5.10.0-46-amd64"),
            Some((46, 1))
        );
        assert_eq!(package_rank(l, "linux-image-5.10.0-46-rt-amd64"), None);
    }
}
