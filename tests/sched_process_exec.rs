//! Root e2e: `sched_process_exec` (probe-ebpf/src/sched_process_exec.rs): a process is
//! selected when it execs a runtime and deselected when it execs something else, the way
//! crun runs its Wasm handler in-process but exec's a normal container's entrypoint.

use std::process::Command;

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
