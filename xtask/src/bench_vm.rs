//! `cargo xtask bench --kernel 6.1` (and 5.10, 6.12): the same benchmarks inside a VM of the
//! kernel matrix. The guest runs this xtask's `bench-guest` on snapshots of the built agent and
//! receiver; every ratio is measured with and without the probe in that one guest run
//! (absolute numbers under qemu TCG mean nothing; ratios within a run do). The table and
//! results.json land in target/vm/bench/<release>/.

use std::{fmt::Write as _, fs, path::Path};

use anyhow::{Context as _, Result, bail};

use crate::{
    e2e::{self, shell_quote},
    vm,
};

/// The Kubernetes bench's fake, built beside the OTLP receiver.
fn receiver_dir_file(receiver: &Path) -> std::path::PathBuf {
    receiver.with_file_name("kube_scale")
}

/// Runs the benchmarks on `line`'s newest kernel; prints the guest's table.
pub fn bench_in_vm(
    line: &'static vm::Line,
    agent: &Path,
    receiver: &Path,
    quick: bool,
    vm_dir: &Path,
) -> Result<()> {
    vm::ensure_tools()?;
    // The guest runs on the host's root file system, without network: install here.
    crate::bench::install_tools()?;
    let kernel = vm::fetch(line, vm_dir)?;
    let out_dir = vm_dir.join("bench").join(&kernel.release);
    let _ = fs::remove_dir_all(&out_dir);
    fs::create_dir_all(&out_dir)?;
    // The guest reads its binaries over 9p for many minutes: hard links a rebuild cannot touch.
    let bin_dir = vm_dir.join("bench").join("bin");
    let _ = fs::remove_dir_all(&bin_dir);
    fs::create_dir_all(&bin_dir)?;
    let xtask = std::env::current_exe().context("this xtask's path")?;
    let keep = |from: &Path| -> Result<std::path::PathBuf> {
        let to = bin_dir.join(from.file_name().context("a file name")?);
        if fs::hard_link(from, &to).is_err() {
            fs::copy(from, &to).with_context(|| format!("copying {}", from.display()))?;
        }
        Ok(to)
    };
    let receiver_src = receiver.to_path_buf();
    let (xtask, agent, receiver) = (keep(&xtask)?, keep(agent)?, keep(receiver)?);
    // The API server fake of the Kubernetes bench, found beside the receiver.
    keep(&receiver_dir_file(&receiver_src))?;
    let q = |p: &Path| shell_quote(&p.display().to_string());
    let mut script = e2e::guest_setup(&out_dir);
    let _ = writeln!(
        script,
        "{} bench-guest {}--agent {} --receiver {} --out {} > {} 2>&1",
        q(&xtask),
        if quick { "--quick " } else { "" },
        q(&agent),
        q(&receiver),
        q(&out_dir),
        q(&out_dir.join("bench.txt")),
    );
    let _ = writeln!(script, "touch {}", q(&out_dir.join(vm::DONE_MARKER)));
    let path = out_dir.join("run.sh");
    fs::write(&path, script)?;
    let ended = vm::boot(&kernel, vm_dir, &path, &out_dir, &mut |_| {})?;
    let table = fs::read_to_string(out_dir.join("bench.txt")).unwrap_or_default();
    println!(
        "\n######## kernel {} (qemu, in a VM)\n{table}",
        kernel.release
    );
    if ended != vm::Ended::Done || !out_dir.join("results.json").is_file() {
        bail!(
            "the benchmarks did not finish in the {} VM ({ended:?}); console: {}",
            kernel.release,
            out_dir.join(vm::CONSOLE).display()
        );
    }
    Ok(())
}
