//! Root e2e: what the node's workloads control cannot grow the agent. A "runtime" that writes
//! without ever ending a line (32 KiB every 20 ms) is reported byte for byte in records of at
//! most `--wasm-line-max-bytes`, marked `partial`, and the agent's peak RSS stays bounded (it
//! used to buffer the whole stream as one line: +260 MB and a 140 MB JSON line in 20 s).

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use probe_tests::*;

const WRITER: &str = env!("CARGO_BIN_EXE_writer");

#[test]
fn output_without_newlines_is_capped_and_exact() {
    if !require_root("bounded_memory::output_without_newlines_is_capped_and_exact") {
        return;
    }
    const WRITE: usize = 32 * 1024;
    const WRITES: usize = 400;
    const CAP: usize = 16 * 1024;
    let mut probe = Probe::start(&[]);
    let dir = TempDir::new("newline-less");
    let runtime = dir.copy_as(WRITER, "wasmtime");
    let _warm = WarmRuntime::start(&probe);
    let hwm_before = status_kib(probe.pid(), "VmHWM");

    let mut child = Command::new(&runtime)
        .args(["stream", &WRITE.to_string(), "20", &WRITES.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let total = WRITE * WRITES;
    let expected: Vec<u8> = (0..total).map(|i| b'a' + (i % 26) as u8).collect();
    // Every byte arrives (the last partial record at the writer's exit).
    let got = std::cell::Cell::new(0usize);
    let done = probe.wait_for(Duration::from_secs(240), |r| {
        if r["kind"] == "wasm_output" && r["pid"] == pid {
            got.set(got.get() + r["text"].as_str().map_or(0, str::len));
        }
        got.get() >= total
    });
    assert!(child.wait().unwrap().success(), "the writer failed");
    let hwm_after = status_kib(probe.pid(), "VmHWM");
    let records = probe.stop();
    let losses: Vec<&Value> = records.iter().filter(|r| r["kind"] == "loss").collect();
    assert!(
        done.is_some(),
        "only {} of {total} bytes were reported; losses: {losses:#?}",
        got.get()
    );
    let grew_mib = hwm_after.saturating_sub(hwm_before) / 1024;
    eprintln!(
        "agent peak RSS {} -> {} MiB while {} MiB went through without a newline in {} records",
        hwm_before / 1024,
        hwm_after / 1024,
        total >> 20,
        wasm_lines(&records, pid).len()
    );
    assert!(
        grew_mib < 16,
        "the agent's peak RSS grew by {grew_mib} MiB for a {} MiB stream",
        total >> 20
    );
    let lines = wasm_lines(&records, pid);
    let text: String = lines
        .iter()
        .map(|r| r["text"].as_str().unwrap())
        .collect::<Vec<_>>()
        .concat();
    assert_eq!(text.len(), total, "losses: {losses:#?}");
    assert!(text.as_bytes() == expected, "the bytes are not the stream");
    for r in &lines {
        let len = r["text"].as_str().unwrap().len();
        assert!(len <= CAP, "a record of {len} bytes");
        assert_eq!(
            r["partial"], true,
            "no newline was written: {}",
            r["write_result"]
        );
        assert_eq!(r["truncated"], false);
        assert_eq!(r["runtime"], "wasmtime");
        assert_eq!(r["stream"], "stdout");
    }
    // Records at the cap while the stream runs: all but the last one are full.
    assert!(
        lines[..lines.len() - 1]
            .iter()
            .all(|r| r["text"].as_str().unwrap().len() == CAP),
        "records below the cap before the end"
    );
}
