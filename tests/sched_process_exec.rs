//! Root e2e: `sched_process_exec` (probe-ebpf/src/sched_process_exec.rs): a process is
//! selected when it execs a runtime and deselected when it execs something else, the way
//! crun runs its Wasm handler in-process but exec's a normal container's entrypoint.

use std::{io::Write as _, process::Command};

use probe_tests::*;

#[test]
fn selected_at_exec_deselected_when_it_execs_something_else() {
    if !require_root("sched_process_exec::selected_at_exec_deselected_when_it_execs_something_else")
    {
        return;
    }
    let dir = TempDir::new("exec");
    let crun = dir.copy_as("/bin/sh", "crun");
    let notruntime = dir.copy_as("/bin/sh", "shell");
    let probe = Probe::start(&[]);
    // A runtime on the node: the write hooks are attached (see the cold-start test).
    let _warm = WarmRuntime::start(&probe);
    let out = Command::new(&crun)
        .args(["-c", "echo as-crun; exec /bin/echo after-exec"])
        .output()
        .unwrap();
    let crun_pid = out.status.success().then_some(()).map(|_| ());
    assert!(crun_pid.is_some());
    assert_eq!(out.stdout, b"as-crun\nafter-exec\n");
    let other = Command::new(&notruntime)
        .args(["-c", "echo not-a-runtime"])
        .output()
        .unwrap();
    assert_eq!(other.stdout, b"not-a-runtime\n");
    let records = wasm_outputs(
        probe.stop_when("the line written as crun", |r| {
            r["kind"] == "wasm_output" && r["text"] == "as-crun"
        }),
        |_| true,
    );
    assert_eq!(
        records.len(),
        1,
        "only the line written as crun: {records:#?}"
    );
    assert_eq!(records[0]["runtime"], "crun");
    assert_eq!(records[0]["comm"], "crun");
    assert_eq!(records[0]["text"], "as-crun");
}

/// A cold node: no runtime since the agent started, so the write hooks are detached and no
/// write on the node pays for them. Then the real wasmtime runs a module that writes at
/// once: its exec wakes the agent's write gate (the SELECTIONS ring buffer), which attaches
/// the hooks before the runtime's first write, and the line is captured byte for byte. How
/// long after the exec the hooks were in place is printed, not asserted (`cargo xtask bench`
/// measures). When the runtime is gone the hooks are detached again.
#[test]
fn cold_node_captures_a_new_runtimes_first_output() {
    if !require_root("sched_process_exec::cold_node_captures_a_new_runtimes_first_output") {
        return;
    }
    let dir = TempDir::new("cold");
    let module = dir.0.join("first.wat");
    let text = "first words, at once";
    std::fs::write(
        &module,
        wat_writer(&[(1, format!("{text}\n").into_bytes())]),
    )
    .unwrap();
    let probe = Probe::start(&[]);
    let cold = wait_write_hooks(&probe, "detached");
    assert_eq!(cold["attaches"], 0, "{cold:#}");

    let child = Command::new(wasmtime_bin())
        .arg("run")
        .arg(&module)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, format!("{text}\n").as_bytes());

    let opened = write_hooks(&probe);
    assert_eq!(opened["attaches"], 1, "{opened:#}");
    let window = opened["last_attach_after_exec_us"]
        .as_u64()
        .unwrap_or_else(|| panic!("no attach time after the exec: {opened:#}"));
    let _ = writeln!(
        std::io::stderr(),
        "cold start: write hooks attached {window} µs after wasmtime's exec"
    );
    // The last selected process is gone: detached again after the linger.
    let closed = wait_write_hooks(&probe, "detached");
    assert_eq!(closed["detaches"], 1, "{closed:#}");

    let records = probe.stop_when("wasmtime's first line", |r| {
        r["kind"] == "wasm_output" && r["pid"] == pid
    });
    let lines = wasm_lines(&records, pid);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_eq!(lines[0]["text"], text);
    assert_eq!(lines[0]["stream"], "stdout");
    assert_eq!(lines[0]["runtime"], "wasmtime");
    assert_eq!(lines[0]["write_result"], text.len() + 1);
}
