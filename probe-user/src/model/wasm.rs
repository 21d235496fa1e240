//! What Wasm runtimes wrote to stdout and stderr.

use serde::Serialize;

use super::{
    Common,
    describe::{Attrs, Describe, Line, LogLine, Severity, Tone, opt, task},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// `kind:"wasm_output"`: one line (or an idle/exit-flushed partial line) a Wasm runtime wrote
/// to stdout or stderr. pid/comm are the runtime process's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WasmOutput {
    pub stream: Stream,
    /// The runtime pattern that selected the process ("wasmtime", "containerd-shim-spin*",
    /// "cgroup" when selected through its cgroup).
    pub runtime: String,
    /// The line without its newline: exact when valid UTF-8, else losslessly escaped
    /// (`\\` for a backslash, `\xNN` for a byte that is not UTF-8).
    pub text: String,
    /// The raw bytes, base64, only when they are not valid UTF-8.
    pub data_b64: Option<String>,
    /// The line went out without its newline: at `--wasm-line-max-bytes` (its next bytes
    /// follow in the next record), after `--wasm-line-idle` without more output, at the
    /// process's exit, or truncated.
    pub partial: bool,
    /// Bytes of the write beyond the capture cap are missing.
    pub truncated: bool,
    /// Result of the (last) write that carried the line: bytes written, or -errno.
    pub write_result: Option<i64>,
    /// Where the fd pointed: "pipe", "socket", "tty", "/dev/null", a file path; null if
    /// unknown.
    pub fd_target: Option<String>,
}

/// A chunk of a captured write (internal).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WasmWrite {
    pub fd: u32,
    pub runtime: u32,
    pub offset: u64,
    pub total_len: u64,
    pub truncated: bool,
    pub unreadable: bool,
    pub data: Vec<u8>,
}

/// The result of a captured write (internal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct WasmWriteResult {
    pub fd: u32,
    pub result: i64,
    /// What the fd was when the write returned, from the kernel ("pipe", "/dev/null", ...);
    /// `Some("file")` for regular files (userspace may find the path); None when closed.
    pub fd_kind: Option<&'static str>,
}

impl Stream {
    pub fn name(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

impl Describe for WasmOutput {
    fn by_task(&self) -> bool {
        true
    }
    fn line(&self, c: &Common) -> Line {
        Line {
            tag: format!("WASM {}", self.stream.name()),
            tone: match self.stream {
                Stream::Stdout => Tone::Dim,
                Stream::Stderr => Tone::Warn,
            },
            text: format!(
                "{} runtime={} fd={} result={}{} | {}",
                task(c),
                self.runtime,
                self.fd_target.as_deref().unwrap_or("-"),
                opt(&self.write_result),
                if self.truncated {
                    " TRUNCATED"
                } else if self.partial {
                    " PARTIAL"
                } else {
                    ""
                },
                self.text,
            ),
        }
    }
    fn layer(&self) -> &'static str {
        "wasm.runtime"
    }
    /// A span too, so TraceQL can count lines per pod.
    fn span_name(&self) -> Option<std::borrow::Cow<'static, str>> {
        Some("wasm.output".into())
    }
    fn log(&self) -> Option<LogLine> {
        Some(LogLine {
            event_name: "wasm.output",
            severity: match self.stream {
                Stream::Stdout => Severity::Info,
                Stream::Stderr => Severity::Warn,
            },
            body: self.text.clone(),
        })
    }
    fn attributes(&self, a: &mut Attrs) {
        a.str("log.iostream", self.stream.name());
        a.str("probe.runtime", &self.runtime);
        a.push("probe.partial", super::AttrRef::Bool(self.partial));
        a.push("probe.truncated", super::AttrRef::Bool(self.truncated));
        if let Some(r) = self.write_result {
            a.signed("probe.write_result", r);
        }
        a.opt_str("probe.fd_target", self.fd_target.as_deref());
    }
}
