//! Root e2e: `ksys_write` (probe-ebpf/src/ksys_write.rs): fentry/fexit, else kprobe/kretprobe,
//! on the kernel's write(2) path, where the kernel allows it (the Debian kernels; this host has
//! neither and uses the syscall tracepoints, which the sys_*_write files test). A runtime's
//! write is captured through it byte for byte with its result, and the write gate put those
//! programs, not a syscall tracepoint, on the node.

use std::process::Command;

use probe_tests::*;

const WRITER: &str = env!("CARGO_BIN_EXE_writer");

#[test]
fn a_runtimes_write_is_captured_on_the_write_path() {
    if !require_root("ksys_write::a_runtimes_write_is_captured_on_the_write_path") {
        return;
    }
    let probe = Probe::start(&[]);
    if !served_by_function(&probe, "wasm_write", "ksys_write") {
        return;
    }
    assert!(served_by_function(&probe, "write_result", "ksys_write"));
    let dir = TempDir::new("ksys-write");
    let wasmtime = dir.copy_as(WRITER, "wasmtime");
    let _warm = WarmRuntime::start(&probe);
    let programs = write_hooks(&probe)["programs"].clone();
    assert!(
        programs.as_array().unwrap().iter().all(|p| {
            let p = p.as_str().unwrap();
            p.starts_with("ksys_write_") || p.starts_with("do_writev_")
        }),
        "the write gate attached {programs}"
    );
    let out = Command::new(&wasmtime)
        .args(["write", "40"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let line: String = (0..40).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    assert_eq!(out.stdout, format!("{line}\n").as_bytes());
    let records = wasm_outputs(
        probe.stop_when("the runtime's line", |r| {
            r["kind"] == "wasm_output" && r["text"] == line.as_str()
        }),
        |r| r["runtime"] == "wasmtime" && r["comm"] == "wasmtime",
    );
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0]["stream"], "stdout");
    assert_eq!(records[0]["write_result"], 41);
    assert_eq!(records[0]["fd_target"], "pipe");
}
