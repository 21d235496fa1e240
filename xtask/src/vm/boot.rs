//! Booting a kernel of the matrix under qemu (virtme-ng) and watching the guest: KVM when it
//! works, single-threaded TCG otherwise; the console kept; a guest without heartbeat killed.

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result};

use super::Kernel;

/// Whether KVM works here (nested KVM often does not): one short boot, remembered.
pub fn kvm_works(kernel: &Kernel, vm_dir: &Path) -> bool {
    let stamp = vm_dir.join("kvm");
    if let Ok(s) = fs::read_to_string(&stamp) {
        return s.trim() == "yes";
    }
    let works = Path::new("/dev/kvm").exists()
        && Command::new("timeout")
            .args(["120", "vng", "--run"])
            .arg(&kernel.image)
            .args(["--memory", "1G", "--exec", "true"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    let _ = fs::write(&stamp, if works { "yes" } else { "no" });
    eprintln!(
        "xtask: vm: KVM {}",
        if works {
            "works"
        } else {
            "does not work here: qemu TCG (slower)"
        }
    );
    works
}

/// How long the guest may go without a heartbeat before it counts as hung (its script beats
/// every 10 s; a test file that hangs is ended by the script's own per-file timeout first).
const HUNG_AFTER: Duration = Duration::from_secs(300);

/// The file the guest script appends a byte to every few seconds while it runs.
pub const HEARTBEAT: &str = "heartbeat";
/// qemu's console (`vng -v`: kernel messages, BUG/WARN splats) of a run.
pub const CONSOLE: &str = "console.log";
/// The file a guest script leaves when it ran to its end.
pub const DONE_MARKER: &str = "done";

/// How a VM run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// The script ran to its end.
    Done,
    /// The guest stopped beating (hung kernel or qemu); it was killed.
    Hung,
    /// qemu exited before the script's end (guest panic, reboot).
    Died(String),
}

/// Boots `kernel` and runs `script` (a path on this machine) inside; `rw` becomes writable
/// and is where the script leaves its results, its heartbeat and the console. `progress` is
/// called every few seconds while the guest runs, with the time since the boot (it reads
/// what the guest left in `rw` so far). Returns once the VM is off; a guest that stops
/// beating is killed.
pub fn boot(
    kernel: &Kernel,
    vm_dir: &Path,
    script: &Path,
    rw: &Path,
    progress: &mut dyn FnMut(Duration),
) -> Result<Ended> {
    use std::os::unix::process::CommandExt as _;
    let console = fs::File::create(rw.join(CONSOLE)).context("creating the console log")?;
    let mut cmd = Command::new("vng");
    cmd.arg("--run").arg(&kernel.image).arg("--verbose");
    if !kvm_works(kernel, vm_dir) {
        // One host thread runs both vCPUs in turn: with a thread per vCPU (qemu 7.2's
        // default), a guest that patches kernel text (every attach and detach of a tracepoint
        // flips a static key) has left both vCPUs spinning in syscall_trace_enter for good
        // (soft lockups, seen on 5.10 and 6.1). Single-threaded TCG keeps translated code
        // coherent; the guest keeps two CPUs.
        cmd.args(["--disable-kvm", "--qemu-opts=-accel tcg,thread=single"]);
    }
    cmd.args(["--cpus", "2", "--memory", "4G", "--rwdir"])
        .arg(rw)
        .arg("--exec")
        .arg(format!("bash {}", script.display()))
        .stdin(Stdio::null())
        .stdout(console.try_clone()?)
        .stderr(console)
        // Its own process group: a hung guest is ended with vng's qemu child.
        .process_group(0);
    eprintln!(
        "xtask: vm: booting {} ({}) under qemu; console in {}; progress as it runs, the tests' \
         output when it is done",
        kernel.release,
        kernel.line,
        rw.join(CONSOLE).display()
    );
    let started = std::time::Instant::now();
    let mut child = cmd.spawn().context("starting vng")?;
    let beat = rw.join(HEARTBEAT);
    let mut last = (0u64, std::time::Instant::now());
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        std::thread::sleep(Duration::from_secs(2));
        progress(started.elapsed());
        let len = fs::metadata(&beat).map_or(0, |m| m.len());
        if len != last.0 {
            last = (len, std::time::Instant::now());
        } else if last.1.elapsed() > HUNG_AFTER {
            let pgid = child.id() as i32;
            // SAFETY: kill(2) on the process group this function created.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            let _ = child.wait();
            break None;
        }
    };
    eprintln!(
        "xtask: vm: {} ran for {:.0?} ({})",
        kernel.release,
        started.elapsed(),
        status.map_or_else(|| "killed: no heartbeat".to_owned(), |s| s.to_string())
    );
    Ok(match status {
        _ if rw.join(DONE_MARKER).is_file() => Ended::Done,
        None => Ended::Hung,
        Some(s) => Ended::Died(s.to_string()),
    })
}

/// Lines of a console log that tell of a kernel in trouble (oops, warning, lockup, stall).
pub fn kernel_trouble(console: &str) -> Vec<&str> {
    const SIGNS: [&str; 7] = [
        "BUG:",
        "WARNING:",
        "Oops",
        "soft lockup",
        "hung_task",
        "rcu_sched detected stalls",
        "Kernel panic",
    ];
    console
        .lines()
        .filter(|l| SIGNS.iter().any(|s| l.contains(s)))
        .collect()
}
