//! The real Wasm runtime and modules for the capture tests; temporary directories.

use std::path::PathBuf;

use crate::Value;

/// The wasmtime CLI installed by `cargo xtask test` (WASMTIME_BIN).
pub fn wasmtime_bin() -> PathBuf {
    std::env::var_os("WASMTIME_BIN")
        .map(PathBuf::from)
        .expect("WASMTIME_BIN is not set: run the e2e tests with `cargo xtask test`")
}

/// `wasm_output` records of process `pid`, in order.
pub fn wasm_lines(records: &[Value], pid: u32) -> Vec<Value> {
    records
        .iter()
        .filter(|r| r["kind"] == "wasm_output" && r["pid"] == pid)
        .cloned()
        .collect()
}

/// `wasm_output` records that satisfy `keep`, in order.
pub fn wasm_outputs(records: Vec<Value>, keep: impl Fn(&Value) -> bool) -> Vec<Value> {
    records
        .into_iter()
        .filter(|r| r["kind"] == "wasm_output" && keep(r))
        .collect()
}

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("probe-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating a temporary directory");
        Self(dir)
    }

    /// A copy of `program` in this directory named `name` (an executable by another name).
    pub fn copy_as(&self, program: &str, name: &str) -> PathBuf {
        let to = self.0.join(name);
        std::fs::copy(program, &to).expect("copying the program");
        to
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A WASI command module (WAT) that writes each `(fd, bytes)` with one `fd_write` call.
pub fn wat_writer(writes: &[(u32, Vec<u8>)]) -> String {
    let mut data = String::new();
    let mut calls = String::new();
    let mut at = 1024u32;
    for (fd, bytes) in writes {
        let escaped: String = bytes.iter().map(|b| format!("\\{b:02x}")).collect();
        data.push_str(&format!("  (data (i32.const {at}) \"{escaped}\")\n"));
        calls.push_str(&format!(
            "    (i32.store (i32.const 0) (i32.const {at}))\n    (i32.store (i32.const 4) (i32.const {len}))\n    (drop (call $fd_write (i32.const {fd}) (i32.const 0) (i32.const 1) (i32.const 8)))\n",
            len = bytes.len()
        ));
        at += bytes.len() as u32 + 16;
    }
    let pages = at / 65536 + 1;
    format!(
        "(module\n  (import \"wasi_snapshot_preview1\" \"fd_write\" (func $fd_write (param i32 i32 i32 i32) (result i32)))\n  (memory (export \"memory\") {pages})\n{data}  (func (export \"_start\")\n{calls}  )\n)\n"
    )
}

/// The agent's `write_hooks` report (/health/status): the write gate, null where the agent
/// runs without one (capture off, or no write hook on this kernel).
pub fn write_hooks(probe: &crate::Probe) -> Value {
    let (_, _, body) = crate::http_get(probe.http_addr(), "/health/status");
    let doc: Value = serde_json::from_str(&body).expect("/health/status is JSON");
    doc["write_hooks"].clone()
}

/// Waits until the write hooks are `state` ("attached", "detached"); the report then.
pub fn wait_write_hooks(probe: &crate::Probe, state: &str) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let report = write_hooks(probe);
        if report["state"] == state {
            return report;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the write hooks did not become {state}: {report:#}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A runtime that stays up and writes nothing (a copy of `sleep` named `wasmtime`): while it
/// lives the write hooks are attached, as on a node that runs Wasm workloads, so a test's
/// short-lived "runtime" (a copy of sh) is captured from its first byte. Killed when dropped.
pub struct WarmRuntime {
    child: std::process::Child,
    _dir: TempDir,
}

impl WarmRuntime {
    pub fn start(probe: &crate::Probe) -> Self {
        let dir = TempDir::new("warm-runtime");
        let sleep = dir.copy_as("/bin/sleep", "wasmtime");
        let child = std::process::Command::new(sleep)
            .arg("3600")
            .spawn()
            .expect("starting the warm runtime");
        wait_write_hooks(probe, "attached");
        Self { child, _dir: dir }
    }
}

impl Drop for WarmRuntime {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// For the function-hook files (ksys_write, do_writev): whether `capability` runs on a hook of
/// `function` on this kernel; otherwise prints the loud "unsupported" line with the hook the
/// kernel gave instead (the syscall tracepoints, tested by the sys_* files) and what failed.
pub fn served_by_function(probe: &crate::Probe, capability: &str, function: &str) -> bool {
    let status: Value =
        serde_json::from_str(&crate::http_get(probe.http_addr(), "/health/status").2).unwrap();
    let c = status["capabilities"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["capability"] == capability))
        .cloned()
        .unwrap_or_default();
    let hook = c["hook"].as_str().unwrap_or_default();
    if hook
        .split(" + ")
        .any(|h| h.ends_with(&format!(" {function}")))
    {
        return true;
    }
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!(
            "\n!!!!! {capability}: unsupported on this kernel through {function}: the hook is {hook:?}; \
             tried: {} !!!!!\n",
            c["tried"]
        )
        .as_bytes(),
    );
    false
}
