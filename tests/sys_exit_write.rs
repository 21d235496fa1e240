//! Root e2e: `syscalls:sys_exit_write` (probe-ebpf/src/sys_exit_write.rs): the result of each
//! captured write, so a write into a closed or broken stdout is visible.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use probe_tests::*;

fn only_line(mut probe: Probe, text: &str) -> Value {
    probe
        .wait_for(Duration::from_secs(10), |r| {
            r["kind"] == "wasm_output" && r["text"] == text
        })
        .unwrap_or_else(|| panic!("{text:?} was not reported"));
    let records: Vec<Value> = probe
        .stop()
        .into_iter()
        .filter(|r| r["kind"] == "wasm_output" && r["text"] == text)
        .collect();
    assert_eq!(records.len(), 1, "{records:#?}");
    records[0].clone()
}

#[test]
fn write_to_a_closed_stdout_reports_ebadf() {
    if !require_root("sys_exit_write::write_to_a_closed_stdout_reports_ebadf") {
        return;
    }
    let dir = TempDir::new("ebadf");
    let spin = dir.copy_as("/bin/sh", "spin");
    let probe = Probe::start(&[]);
    // A runtime on the node: the write hooks are attached (see the cold-start test).
    let _warm = WarmRuntime::start(&probe);
    let out = Command::new(&spin)
        .args(["-c", "exec 1>&-; echo into-closed-stdout"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let r = only_line(probe, "into-closed-stdout");
    assert_eq!(r["write_result"], -(libc::EBADF as i64));
    assert_eq!(r["fd_target"], Value::Null, "fd 1 points nowhere");
}

#[test]
fn write_to_a_broken_pipe_reports_epipe() {
    if !require_root("sys_exit_write::write_to_a_broken_pipe_reports_epipe") {
        return;
    }
    let dir = TempDir::new("epipe");
    let spin = dir.copy_as("/bin/sh", "spin");
    let probe = Probe::start(&[]);
    // A runtime on the node: the write hooks are attached (see the cold-start test).
    let _warm = WarmRuntime::start(&probe);
    let mut child = Command::new(&spin)
        .args(["-c", "trap '' PIPE; sleep 0.3; echo into-broken-pipe"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // nobody reads any more
    child.wait().unwrap();
    let r = only_line(probe, "into-broken-pipe");
    assert_eq!(r["write_result"], -(libc::EPIPE as i64));
    assert_eq!(r["fd_target"], "pipe");
}
