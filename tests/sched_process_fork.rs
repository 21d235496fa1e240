//! Root e2e: `sched_process_fork` (probe-ebpf/src/sched_process_fork.rs): children of a
//! selected runtime process are selected too.

use std::process::Command;

use probe_tests::*;

#[test]
fn children_of_a_runtime_are_captured() {
    if !require_root("sched_process_fork::children_of_a_runtime_are_captured") {
        return;
    }
    let dir = TempDir::new("fork");
    let spin = dir.copy_as("/bin/sh", "spin");
    let probe = Probe::start(&[]);
    // A runtime on the node: the write hooks are attached (see the cold-start test).
    let _warm = WarmRuntime::start(&probe);
    let child = Command::new(&spin)
        .args(["-c", "(echo from-child; true); echo from-parent"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let parent = child.id();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.stdout, b"from-child\nfrom-parent\n");
    let records = wasm_outputs(
        probe.stop_when("the runtime's output", |r| {
            r["kind"] == "wasm_output" && r["text"] == "from-parent"
        }),
        |r| r["runtime"] == "spin",
    );
    assert_eq!(records.len(), 2, "{records:#?}");
    assert_eq!(records[0]["text"], "from-child");
    assert_ne!(records[0]["pid"], parent, "written by the forked child");
    assert_eq!(records[1]["text"], "from-parent");
    assert_eq!(records[1]["pid"], parent);
}
