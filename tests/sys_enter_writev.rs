//! Root e2e: `syscalls:sys_enter_writev` (probe-ebpf/src/sys_enter_writev.rs): the iovecs of
//! one writev by a runtime, joined in order.

use std::{process::Command, time::Duration};

use probe_tests::*;

const WRITER: &str = env!("CARGO_BIN_EXE_writer");

#[test]
fn writev_parts_are_joined() {
    if !require_root("sys_enter_writev::writev_parts_are_joined") {
        return;
    }
    let dir = TempDir::new("writev");
    let wasmer = dir.copy_as(WRITER, "wasmer");
    let mut probe = Probe::start(&[]);
    let out = Command::new(&wasmer)
        .args(["writev", "first part, ", "second ✓ part\\n", "third\\n"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, "first part, second ✓ part\nthird\n".as_bytes());
    probe
        .wait_for(Duration::from_secs(10), |r| {
            r["kind"] == "wasm_output" && r["text"] == "third"
        })
        .expect("no record");
    let records: Vec<Value> = probe
        .stop()
        .into_iter()
        .filter(|r| r["kind"] == "wasm_output" && r["runtime"] == "wasmer")
        .collect();
    let texts: Vec<&str> = records
        .iter()
        .map(|r| r["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["first part, second ✓ part", "third"]);
    let total = "first part, second ✓ part\nthird\n".len();
    assert!(records.iter().all(|r| r["write_result"] == total));
    assert_eq!(records[0]["comm"], "wasmer");
}
