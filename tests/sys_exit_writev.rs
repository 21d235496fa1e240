//! Root e2e: `syscalls:sys_exit_writev` (probe-ebpf/src/sys_exit_writev.rs): the result of a
//! captured writev, here into a closed stdout.

use std::{process::Command, time::Duration};

use probe_tests::*;

const WRITER: &str = env!("CARGO_BIN_EXE_writer");

#[test]
fn writev_into_a_closed_stdout_reports_ebadf() {
    if !require_root("sys_exit_writev::writev_into_a_closed_stdout_reports_ebadf") {
        return;
    }
    let dir = TempDir::new("writev-ebadf");
    let wasmer = dir.copy_as(WRITER, "wasmer");
    let mut probe = Probe::start(&[]);
    let status = Command::new(&wasmer)
        .args(["writev-closed", "nobody ", "hears\\n"])
        .status()
        .unwrap();
    assert!(!status.success(), "writev must fail");
    probe
        .wait_for(Duration::from_secs(10), |r| {
            r["kind"] == "wasm_output" && r["text"] == "nobody hears"
        })
        .expect("no record");
    let records: Vec<Value> = probe
        .stop()
        .into_iter()
        .filter(|r| r["kind"] == "wasm_output" && r["text"] == "nobody hears")
        .collect();
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0]["write_result"], -(libc::EBADF as i64));
    assert_eq!(records[0]["fd_target"], Value::Null);
}
