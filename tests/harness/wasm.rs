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
