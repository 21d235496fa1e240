//! Root e2e: `syscalls:sys_enter_write` (probe-ebpf/src/sys_enter_write.rs) with the real
//! wasmtime CLI running a WASI module: its stdout and stderr reproduced byte for byte, in
//! order, with stream, runtime, pid and comm; a stdout on /dev/null; nothing from others.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use base64::Engine as _;
use probe_tests::*;

fn run_module(dir: &TempDir, writes: &[(u32, Vec<u8>)], stdout: Stdio) -> (u32, Vec<u8>) {
    let module = dir.0.join("writer.wat");
    std::fs::write(&module, wat_writer(writes)).unwrap();
    let child = Command::new(wasmtime_bin())
        .arg("run")
        .arg(&module)
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "wasmtime: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (pid, out.stdout)
}

fn line(bytes: &[u8]) -> Vec<u8> {
    let mut v = bytes.to_vec();
    v.push(b'\n');
    v
}

#[test]
fn wasmtime_output_is_reproduced_byte_for_byte() {
    if !require_root("sys_enter_write::wasmtime_output_is_reproduced_byte_for_byte") {
        return;
    }
    let dir = TempDir::new("wasm-exact");
    let big = vec![b'x'; 10 * 1024];
    let not_utf8 = b"\xff\xfe not utf8 \xc3\x28 \\ end".to_vec();
    let stdout_lines: Vec<Vec<u8>> = vec![
        b"plain ascii".to_vec(),
        "héllo wörld ✓ 日本語".as_bytes().to_vec(),
        Vec::new(),
        big.clone(),
        not_utf8.clone(),
    ];
    let stderr_lines: Vec<Vec<u8>> = vec![
        b"to stderr".to_vec(),
        "ünïcödé on stderr".as_bytes().to_vec(),
    ];
    let mut writes = Vec::new();
    for (i, l) in stdout_lines.iter().enumerate() {
        writes.push((1, line(l)));
        if let Some(e) = stderr_lines.get(i) {
            writes.push((2, line(e)));
        }
    }

    let mut probe = Probe::start(&[]);
    // A runtime on the node: the write hooks are attached (see the cold-start test).
    let _warm = WarmRuntime::start(&probe);
    let (pid, stdout) = run_module(&dir, &writes, Stdio::piped());
    let expected_stdout: Vec<u8> = stdout_lines.iter().flat_map(|l| line(l)).collect();
    assert_eq!(
        stdout, expected_stdout,
        "wasmtime itself printed something else"
    );
    probe
        .wait_for(Duration::from_secs(15), |r| {
            r["kind"] == "wasm_output" && r["pid"] == pid && r["data_b64"].is_string()
        })
        .expect("the last stdout line was not reported");
    let records = wasm_lines(&probe.stop(), pid);

    let of = |stream: &str| -> Vec<&Value> {
        records.iter().filter(|r| r["stream"] == stream).collect()
    };
    let out = of("stdout");
    let err = of("stderr");
    assert_eq!(out.len(), stdout_lines.len(), "{records:#?}");
    assert_eq!(err.len(), stderr_lines.len(), "{records:#?}");
    for (r, expected) in out
        .iter()
        .zip(&stdout_lines)
        .chain(err.iter().zip(&stderr_lines))
    {
        assert_eq!(r["runtime"], "wasmtime");
        assert_eq!(r["comm"], "wasmtime");
        assert_eq!(r["truncated"], false);
        assert_eq!(r["fd_target"], "pipe");
        let result = r["write_result"].as_u64().expect("a byte count");
        if expected.len() < 4096 {
            assert_eq!(result, expected.len() as u64 + 1, "one write per line");
        } else {
            // wasmtime splits large output into writes of at most 4096 bytes: the record
            // carries the last one's result; the line itself is whole (checked below).
            assert!((1..=4096).contains(&result), "{result}");
        }
        match std::str::from_utf8(expected) {
            Ok(text) => {
                assert_eq!(r["text"], text);
                assert_eq!(r["data_b64"], Value::Null);
            }
            Err(_) => {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(r["data_b64"].as_str().unwrap())
                    .unwrap();
                assert_eq!(raw, *expected);
                assert_eq!(r["text"], "\\xff\\xfe not utf8 \\xc3( \\\\ end");
            }
        }
    }
    // Order across streams: every stderr line after the stdout line written before it.
    let position = |r: &Value| records.iter().position(|x| x == r).unwrap();
    assert!(position(out[0]) < position(err[0]) && position(err[0]) < position(out[1]));
}

#[test]
fn stdout_on_dev_null_is_captured_and_says_so() {
    if !require_root("sys_enter_write::stdout_on_dev_null_is_captured_and_says_so") {
        return;
    }
    let dir = TempDir::new("wasm-null");
    let mut probe = Probe::start(&[]);
    // A runtime on the node: the write hooks are attached (see the cold-start test).
    let _warm = WarmRuntime::start(&probe);
    let (pid, _) = run_module(&dir, &[(1, b"lost in the void\n".to_vec())], Stdio::null());
    probe
        .wait_for(Duration::from_secs(15), |r| {
            r["kind"] == "wasm_output" && r["pid"] == pid
        })
        .expect("no record");
    let records = wasm_lines(&probe.stop(), pid);
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0]["text"], "lost in the void");
    assert_eq!(records[0]["stream"], "stdout");
    assert_eq!(records[0]["fd_target"], "/dev/null");
}

#[test]
fn busy_writer_that_is_no_runtime_is_not_captured() {
    if !require_root("sys_enter_write::busy_writer_that_is_no_runtime_is_not_captured") {
        return;
    }
    let probe = Probe::start(&[]);
    // A runtime on the node: the write hooks are attached (see the cold-start test).
    let _warm = WarmRuntime::start(&probe);
    let dd = Command::new("dd")
        .args(["if=/dev/zero", "of=/dev/null", "bs=1", "count=1000000"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = dd.id();
    assert!(dd.wait_with_output().unwrap().status.success());
    let records = probe.stop();
    assert_eq!(wasm_lines(&records, pid), Vec::<Value>::new());
    assert!(
        records.iter().all(|r| r["kind"] != "wasm_output"),
        "nothing was selected"
    );
}

#[test]
fn capture_can_be_disabled_and_then_costs_no_syscall_hook() {
    if !require_root("sys_enter_write::capture_can_be_disabled_and_then_costs_no_syscall_hook") {
        return;
    }
    let dir = TempDir::new("wasm-off");
    let probe = Probe::start(&["--capture-bytes", "0"]);
    let status: Value =
        serde_json::from_str(&http_get(probe.http_addr(), "/health/status").2).unwrap();
    // The capabilities are off, and their programs were never loaded.
    for capability in ["wasm_write", "wasm_writev", "write_result"] {
        let c = status["capabilities"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["capability"] == capability)
            .unwrap_or_else(|| panic!("no capability {capability} in {status}"));
        assert_eq!(c["hook"], Value::Null, "{capability}");
        assert!(
            c["error"]
                .as_str()
                .unwrap()
                .ends_with("disabled by --capture-bytes 0"),
            "{c}"
        );
    }
    let programs = status["programs"].as_array().unwrap();
    assert!(
        !programs
            .iter()
            .any(|p| p["program"].as_str().unwrap().starts_with("sys_")),
        "{programs:?}"
    );
    let (pid, _) = run_module(&dir, &[(1, b"not captured\n".to_vec())], Stdio::piped());
    let records = probe.stop();
    assert_eq!(wasm_lines(&records, pid), Vec::<Value>::new());
}
