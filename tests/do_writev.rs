//! Root e2e: `do_writev` (probe-ebpf/src/do_writev.rs): fentry/fexit, else kprobe/kretprobe,
//! on the kernel's writev(2) path where the kernel allows it (see ksys_write.rs): the iovecs of
//! one writev by a runtime, joined in order, with the writev's result.

use std::process::Command;

use probe_tests::*;

const WRITER: &str = env!("CARGO_BIN_EXE_writer");

#[test]
fn a_runtimes_writev_is_captured_on_the_write_path() {
    if !require_root("do_writev::a_runtimes_writev_is_captured_on_the_write_path") {
        return;
    }
    let probe = Probe::start(&[]);
    if !served_by_function(&probe, "wasm_writev", "do_writev") {
        return;
    }
    assert!(served_by_function(&probe, "write_result", "do_writev"));
    let dir = TempDir::new("do-writev");
    let wasmer = dir.copy_as(WRITER, "wasmer");
    let _warm = WarmRuntime::start(&probe);
    let out = Command::new(&wasmer)
        .args(["writev", "one, ", "two\\n", "three\\n"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, b"one, two\nthree\n");
    let records = wasm_outputs(
        probe.stop_when("the runtime's output", |r| {
            r["kind"] == "wasm_output" && r["text"] == "three"
        }),
        |r| r["runtime"] == "wasmer",
    );
    let texts: Vec<&str> = records
        .iter()
        .map(|r| r["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["one, two", "three"]);
    assert!(
        records.iter().all(|r| r["write_result"] == 15),
        "{records:#?}"
    );
}
