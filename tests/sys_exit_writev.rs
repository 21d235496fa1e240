//! Root e2e: `syscalls:sys_exit_writev` (probe-ebpf/src/sys_exit_writev.rs): the result of a
//! captured writev, here into a closed stdout.

use std::process::Command;

use probe_tests::*;

const WRITER: &str = env!("CARGO_BIN_EXE_writer");

#[test]
fn writev_into_a_closed_stdout_reports_ebadf() {
    if !require_root("sys_exit_writev::writev_into_a_closed_stdout_reports_ebadf") {
        return;
    }
    let dir = TempDir::new("writev-ebadf");
    let wasmer = dir.copy_as(WRITER, "wasmer");
    let probe = Probe::start(&[]);
    // A runtime on the node: the write hooks are attached (see the cold-start test).
    let _warm = WarmRuntime::start(&probe);
    let status = Command::new(&wasmer)
        .args(["writev-closed", "nobody ", "hears\\n"])
        .status()
        .unwrap();
    assert!(!status.success(), "writev must fail");
    let records = wasm_outputs(
        probe.stop_when("the runtime's output", |r| {
            r["kind"] == "wasm_output" && r["text"] == "nobody hears"
        }),
        |r| r["text"] == "nobody hears",
    );
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0]["write_result"], -(libc::EBADF as i64));
    assert_eq!(records[0]["fd_target"], Value::Null);
}
