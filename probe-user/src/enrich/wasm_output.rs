//! Reassembles what Wasm runtimes write into lines per (process, stream). Chunks of a write
//! wait for its result (bytes written or -errno); complete lines go out at once, a partial
//! line after `idle` without more output or when the process exits. Bytes stay exact: valid
//! UTF-8 as text, anything else losslessly escaped with the raw bytes in base64.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use base64::Engine as _;
use probe_common::RUNTIME_BY_CGROUP;

use crate::{
    decode::Common,
    record::{Stream, WasmOutput, WasmWrite},
};

/// Where a process's fd points (readlink of /proc/PID/fd/FD, classified).
pub type FdResolver = Box<dyn Fn(u32, u32) -> Option<String> + Send>;

struct Pending {
    common: Common,
    write: WasmWrite,
}

struct Line {
    common: Common,
    runtime: String,
    fd_target: Option<String>,
    buf: Vec<u8>,
    last_result: Option<i64>,
    last_seen: Instant,
}

pub struct WasmAssembler {
    runtimes: Vec<String>,
    idle: Duration,
    resolve: FdResolver,
    /// Writes waiting for their result, by thread id.
    inflight: HashMap<u32, Pending>,
    lines: HashMap<(u32, u32), Line>,
}

fn stream_of(fd: u32) -> Stream {
    if fd == 2 {
        Stream::Stderr
    } else {
        Stream::Stdout
    }
}

impl WasmAssembler {
    pub fn new(runtimes: Vec<String>, idle: Duration, resolve: FdResolver) -> Self {
        Self {
            runtimes,
            idle,
            resolve,
            inflight: HashMap::new(),
            lines: HashMap::new(),
        }
    }

    pub fn buffered(&self) -> usize {
        self.lines.values().filter(|l| !l.buf.is_empty()).count() + self.inflight.len()
    }

    fn runtime_name(&self, index: u32) -> String {
        if index == RUNTIME_BY_CGROUP {
            return "cgroup".into();
        }
        self.runtimes
            .get(index as usize)
            .cloned()
            .unwrap_or_else(|| format!("runtime_{index}"))
    }

    /// A chunk of a write: held until the write's result arrives.
    pub fn on_chunk(&mut self, common: Common, chunk: WasmWrite) {
        let (Some(pid), Some(tid)) = (common.pid, common.tid) else {
            return;
        };
        // Resolve where the fd points as early as possible: the process may exit soon.
        if !self.lines.contains_key(&(pid, chunk.fd)) {
            let line = Line {
                common: common.clone(),
                runtime: self.runtime_name(chunk.runtime),
                fd_target: (self.resolve)(pid, chunk.fd),
                buf: Vec::new(),
                last_result: None,
                last_seen: Instant::now(),
            };
            self.lines.insert((pid, chunk.fd), line);
        }
        match self.inflight.get_mut(&tid) {
            Some(p) if p.write.fd == chunk.fd => {
                p.write.data.extend_from_slice(&chunk.data);
                p.write.truncated |= chunk.truncated;
                p.write.unreadable |= chunk.unreadable;
            }
            _ => {
                self.inflight.insert(
                    tid,
                    Pending {
                        common,
                        write: chunk,
                    },
                );
            }
        }
    }

    /// The result of a write: its bytes join the line buffer; complete lines come out.
    /// `fd_kind` is what the kernel saw when the write returned; it wins over the earlier
    /// /proc look-up except for regular files, whose path only /proc knows.
    pub fn on_result(
        &mut self,
        common: &Common,
        fd: u32,
        result: i64,
        fd_kind: Option<&'static str>,
        now: Instant,
    ) -> Vec<(Common, WasmOutput)> {
        let Some(tid) = common.tid else {
            return Vec::new();
        };
        let Some(Pending { common, write }) = self.inflight.remove(&tid) else {
            return Vec::new();
        };
        let Some(pid) = common.pid else {
            return Vec::new();
        };
        // A successful write may be partial: only what was written counts. A failed one is
        // reported with what it tried to write.
        let mut data = write.data;
        if let Ok(written) = usize::try_from(result) {
            data.truncate(written);
        }
        let Some(line) = self.lines.get_mut(&(pid, fd)) else {
            return Vec::new();
        };
        line.common = common;
        line.last_result = Some(result);
        match fd_kind {
            Some("file") if line.fd_target.is_some() => {}
            Some(kind) => line.fd_target = Some(kind.to_owned()),
            None => line.fd_target = None,
        }
        line.last_seen = now;
        let mut out = Vec::new();
        if write.truncated {
            // The bytes after the cap are missing: the line cannot be completed.
            line.buf.extend_from_slice(&data);
            out.push(emit(line, fd, true));
            return out;
        }
        let mut rest = data.as_slice();
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            line.buf.extend_from_slice(&rest[..nl]);
            out.push(emit(line, fd, false));
            rest = &rest[nl + 1..];
        }
        line.buf.extend_from_slice(rest);
        out
    }

    /// Partial lines idle for `idle`.
    pub fn flush_idle(&mut self, now: Instant) -> Vec<(Common, WasmOutput)> {
        let idle = self.idle;
        self.lines
            .iter_mut()
            .filter(|(_, l)| !l.buf.is_empty() && now.duration_since(l.last_seen) >= idle)
            .map(|((_, fd), l)| emit(l, *fd, false))
            .collect()
    }

    /// The process exited: its partial lines go out and its state is dropped.
    pub fn on_exit(&mut self, pid: u32) -> Vec<(Common, WasmOutput)> {
        let keys: Vec<(u32, u32)> = self
            .lines
            .keys()
            .filter(|(p, _)| *p == pid)
            .copied()
            .collect();
        self.inflight.retain(|_, p| p.common.pid != Some(pid));
        let mut out = Vec::new();
        for key in keys {
            if let Some(mut line) = self.lines.remove(&key)
                && !line.buf.is_empty()
            {
                out.push(emit(&mut line, key.1, false));
            }
        }
        out
    }

    /// Everything still buffered (shutdown).
    pub fn drain(&mut self) -> Vec<(Common, WasmOutput)> {
        let pids: Vec<u32> = self.lines.keys().map(|(p, _)| *p).collect();
        pids.into_iter().flat_map(|p| self.on_exit(p)).collect()
    }
}

fn emit(line: &mut Line, fd: u32, truncated: bool) -> (Common, WasmOutput) {
    let bytes = std::mem::take(&mut line.buf);
    let (text, data_b64) = render(&bytes);
    (
        line.common.clone(),
        WasmOutput {
            stream: stream_of(fd),
            runtime: line.runtime.clone(),
            text,
            data_b64,
            truncated,
            write_result: line.last_result,
            fd_target: line.fd_target.clone(),
        },
    )
}

/// Valid UTF-8 as is; otherwise an escaped text (lossless: `\\` and `\xNN`) and base64.
pub fn render(bytes: &[u8]) -> (String, Option<String>) {
    if let Ok(text) = std::str::from_utf8(bytes) {
        return (text.to_owned(), None);
    }
    let mut text = String::with_capacity(bytes.len() * 2);
    for chunk in bytes.utf8_chunks() {
        text.push_str(&chunk.valid().replace('\\', "\\\\"));
        for b in chunk.invalid() {
            text.push_str(&format!("\\x{b:02x}"));
        }
    }
    (
        text,
        Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
    )
}

/// Classifies the target of /proc/PID/fd/FD.
pub fn classify_fd_target(link: &str) -> String {
    if link.starts_with("pipe:") {
        "pipe".into()
    } else if link.starts_with("socket:") {
        "socket".into()
    } else if link.starts_with("/dev/pts/")
        || link.starts_with("/dev/tty")
        || link == "/dev/console"
    {
        "tty".into()
    } else {
        link.to_owned()
    }
}

/// The real resolver: readlink of /proc/PID/fd/FD.
pub fn proc_fd_resolver() -> FdResolver {
    Box::new(|pid, fd| {
        std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
            .ok()
            .map(|p| classify_fd_target(&p.to_string_lossy()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn common(pid: u32, tid: u32) -> Common {
        Common {
            pid: Some(pid),
            tid: Some(tid),
            comm: Some("wasmtime".into()),
            ..Common::none()
        }
    }

    fn chunk(fd: u32, data: &[u8], truncated: bool) -> WasmWrite {
        WasmWrite {
            fd,
            runtime: 1,
            offset: 0,
            total_len: data.len() as u64,
            truncated,
            unreadable: false,
            data: data.to_vec(),
        }
    }

    fn assembler() -> WasmAssembler {
        WasmAssembler::new(
            vec!["wasmedge".into(), "wasmtime".into()],
            Duration::from_millis(500),
            Box::new(|_, fd| {
                Some(if fd == 1 {
                    "pipe".into()
                } else {
                    "/dev/null".into()
                })
            }),
        )
    }

    fn write(a: &mut WasmAssembler, fd: u32, data: &[u8], now: Instant) -> Vec<String> {
        a.on_chunk(common(10, 11), chunk(fd, data, false));
        a.on_result(
            &common(10, 11),
            fd,
            data.len() as i64,
            Some(if fd == 1 { "pipe" } else { "/dev/null" }),
            now,
        )
        .into_iter()
        .map(|(_, o)| o.text)
        .collect()
    }

    #[test]
    fn lines_across_writes_and_chunks() {
        let mut a = assembler();
        let t = Instant::now();
        assert_eq!(write(&mut a, 1, b"hel", t), Vec::<String>::new());
        assert_eq!(write(&mut a, 1, b"lo\n\nwor", t), vec!["hello", ""]);
        // Two chunks of one write.
        a.on_chunk(common(10, 11), chunk(1, b"ld\nx", false));
        a.on_chunk(common(10, 11), chunk(1, b"y\n", false));
        let out = a.on_result(&common(10, 11), 1, 6, Some("pipe"), t);
        let texts: Vec<&str> = out.iter().map(|(_, o)| o.text.as_str()).collect();
        assert_eq!(texts, ["world", "xy"]);
        let (c, o) = &out[0];
        assert_eq!(c.pid, Some(10));
        assert_eq!(
            (o.stream, o.runtime.as_str(), o.write_result),
            (Stream::Stdout, "wasmtime", Some(6))
        );
        assert_eq!(o.fd_target.as_deref(), Some("pipe"));
        assert!(!o.truncated);
    }

    #[test]
    fn streams_are_separate_and_partial_writes_count_only_written_bytes() {
        let mut a = assembler();
        let t = Instant::now();
        assert_eq!(write(&mut a, 2, b"err", t), Vec::<String>::new());
        assert_eq!(write(&mut a, 1, b"out\n", t), vec!["out"]);
        a.on_chunk(common(10, 11), chunk(2, b"or\nlost\n", false));
        let out = a.on_result(&common(10, 11), 2, 3, Some("/dev/null"), t);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1.text, "error");
        assert_eq!(out[0].1.stream, Stream::Stderr);
        assert_eq!(out[0].1.fd_target.as_deref(), Some("/dev/null"));
    }

    #[test]
    fn failed_writes_report_errno_and_the_attempted_bytes() {
        let mut a = assembler();
        a.on_chunk(common(10, 11), chunk(1, b"to a closed pipe\n", false));
        let out = a.on_result(&common(10, 11), 1, -32, None, Instant::now());
        assert_eq!(out[0].1.text, "to a closed pipe");
        assert_eq!(out[0].1.write_result, Some(-32));
        assert_eq!(
            out[0].1.fd_target, None,
            "the kernel saw no file behind the fd"
        );
    }

    #[test]
    fn partial_lines_flush_after_idle_and_at_exit() {
        let mut a = assembler();
        let t = Instant::now();
        write(&mut a, 1, b"prompt> ", t);
        assert!(a.flush_idle(t + Duration::from_millis(100)).is_empty());
        let out = a.flush_idle(t + Duration::from_millis(500));
        assert_eq!(out[0].1.text, "prompt> ");
        assert!(
            a.flush_idle(t + Duration::from_secs(5)).is_empty(),
            "flushed once"
        );
        write(&mut a, 2, b"bye", t);
        let out = a.on_exit(10);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1.text, "bye");
        assert_eq!(a.buffered(), 0);
    }

    #[test]
    fn truncated_writes_are_flagged() {
        let mut a = assembler();
        a.on_chunk(common(10, 11), chunk(1, b"abc", true));
        let out = a.on_result(&common(10, 11), 1, 100_000, Some("pipe"), Instant::now());
        assert_eq!(out.len(), 1);
        assert!(out[0].1.truncated);
        assert_eq!(out[0].1.text, "abc");
    }

    fn unescape(text: &str) -> Vec<u8> {
        let mut out = Vec::new();
        let b = text.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'\\' && b.get(i + 1) == Some(&b'\\') {
                out.push(b'\\');
                i += 2;
            } else if b[i] == b'\\' && b.get(i + 1) == Some(&b'x') {
                out.push(u8::from_str_radix(&text[i + 2..i + 4], 16).unwrap());
                i += 4;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        out
    }

    #[test]
    fn escaping_round_trip() {
        assert_eq!(
            render("héllo ✓ 日本".as_bytes()),
            ("héllo ✓ 日本".into(), None)
        );
        assert_eq!(render(b"back\\slash"), ("back\\slash".into(), None));
        for raw in [
            &b"\xff\xfeA\\x41"[..],
            b"ok \xc3\x28 \\ end",
            b"\x80",
            b"caf\xc3\xa9\xff",
        ] {
            let (text, b64) = render(raw);
            assert_eq!(unescape(&text), raw, "{text}");
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(b64.unwrap())
                .unwrap();
            assert_eq!(decoded, raw);
        }
        assert_eq!(render(b"\xffA").0, "\\xffA");
    }

    #[test]
    fn fd_targets() {
        assert_eq!(classify_fd_target("pipe:[4711]"), "pipe");
        assert_eq!(classify_fd_target("socket:[1]"), "socket");
        assert_eq!(classify_fd_target("/dev/pts/3"), "tty");
        assert_eq!(classify_fd_target("/dev/null"), "/dev/null");
        assert_eq!(classify_fd_target("/var/log/app.log"), "/var/log/app.log");
    }
}
