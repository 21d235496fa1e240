//! Root e2e: `syscalls:sys_enter_writev` (probe-ebpf/src/sys_enter_writev.rs): the iovecs of
//! one writev by a runtime, joined in order.

use std::process::Command;

use probe_tests::*;

const WRITER: &str = env!("CARGO_BIN_EXE_writer");

#[test]
fn writev_parts_are_joined() {
    if !require_root("sys_enter_writev::writev_parts_are_joined") {
        return;
    }
    let dir = TempDir::new("writev");
    let wasmer = dir.copy_as(WRITER, "wasmer");
    let probe = Probe::start(&[]);
    // A runtime on the node: the write hooks are attached (see the cold-start test).
    let _warm = WarmRuntime::start(&probe);
    let out = Command::new(&wasmer)
        .args(["writev", "first part, ", "second ✓ part\\n", "third\\n"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, "first part, second ✓ part\nthird\n".as_bytes());
    let records = wasm_outputs(
        probe.stop_when("the runtime's output", |r| {
            r["kind"] == "wasm_output" && r["text"] == "third"
        }),
        |r| r["runtime"] == "wasmer",
    );
    let texts: Vec<&str> = records
        .iter()
        .map(|r| r["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["first part, second ✓ part", "third"]);
    let total = "first part, second ✓ part\nthird\n".len();
    assert!(records.iter().all(|r| r["write_result"] == total));
    assert_eq!(records[0]["comm"], "wasmer");
}

#[test]
fn a_write_over_the_hard_cap_is_truncated_and_flagged() {
    if !require_root("sys_enter_writev::a_write_over_the_hard_cap_is_truncated_and_flagged") {
        return;
    }
    let dir = TempDir::new("truncate");
    let wasmer = dir.copy_as(WRITER, "wasmer");
    // 1 KiB chunks, 16 of them at most: 16 KiB of a 20000-byte write are copied.
    let probe = Probe::start(&["--capture-bytes", "1024"]);
    // A runtime on the node: the write hooks are attached (see the cold-start test).
    let _warm = WarmRuntime::start(&probe);
    let out = Command::new(&wasmer)
        .args(["write", "20000"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout.len(), 20001);
    let records = wasm_outputs(
        probe.stop_when("the runtime's output", |r| {
            r["kind"] == "wasm_output" && r["runtime"] == "wasmer"
        }),
        |r| r["runtime"] == "wasmer",
    );
    assert_eq!(records.len(), 1, "{records:#?}");
    let r = &records[0];
    assert_eq!(r["truncated"], true);
    assert_eq!(r["write_result"], 20001);
    let expected: String = (0..16 * 1024)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    assert_eq!(r["text"], expected);
}
