//! Reassembles what Wasm runtimes write into lines per (process, stream). Chunks of a write
//! wait for its result (bytes written or -errno); complete lines go out at once. A line never
//! holds more than `line_max` bytes: at the cap its bytes so far go out as a `partial` record
//! (as the CRI log format splits lines at 16 KiB), cut on a UTF-8 boundary, and so does a
//! line without its newline after `idle` without more output or when the process exits. A
//! runtime that writes without newlines therefore costs at most `line_max` bytes per stream.
//! Bytes stay exact: valid UTF-8 as text, anything else losslessly escaped with the raw bytes
//! in base64.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use base64::Engine as _;
use probe_common::RUNTIME_BY_CGROUP;

use crate::{
    decode::{Common, Decoded},
    model::{Body, Record, Stream, WasmOutput, WasmWrite},
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
    /// The most bytes a line record carries (at least 4: a UTF-8 character fits).
    line_max: usize,
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
    pub fn new(
        runtimes: Vec<String>,
        idle: Duration,
        line_max: usize,
        resolve: FdResolver,
    ) -> Self {
        Self {
            runtimes,
            idle,
            line_max: line_max.max(4),
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

    /// A chunk of a write: held until the write's result arrives. A write of the same thread
    /// still waiting for its result (the kernel did not report it: a kretprobe can miss) goes
    /// out first with `write_result: null`, its bytes as captured.
    pub fn on_chunk(&mut self, common: Common, chunk: WasmWrite) -> Vec<(Common, WasmOutput)> {
        let (Some(pid), Some(tid)) = (common.pid, common.tid) else {
            return Vec::new();
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
            // A later chunk of the same write (a chunk at offset 0 starts a new write: the
            // older one's result was lost, and its bytes are not kept growing).
            Some(p) if p.write.fd == chunk.fd && chunk.offset != 0 => {
                p.write.data.extend_from_slice(&chunk.data);
                p.write.truncated |= chunk.truncated;
                p.write.unreadable |= chunk.unreadable;
                Vec::new()
            }
            _ => {
                let pending = Pending {
                    common,
                    write: chunk,
                };
                match self.inflight.insert(tid, pending) {
                    Some(unsettled) => self.settle(unsettled, None, Instant::now()),
                    None => Vec::new(),
                }
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
        match self.inflight.remove(&tid) {
            Some(pending) if pending.write.fd == fd => {
                self.settle(pending, Some((result, fd_kind)), now)
            }
            Some(pending) => self.settle(pending, None, now),
            None => Vec::new(),
        }
    }

    /// A write's bytes into its line, with its result and what its fd was then (None: the
    /// kernel did not report the result; the bytes count as captured).
    fn settle(
        &mut self,
        Pending { common, write }: Pending,
        result: Option<(i64, Option<&'static str>)>,
        now: Instant,
    ) -> Vec<(Common, WasmOutput)> {
        let Some(pid) = common.pid else {
            return Vec::new();
        };
        let fd = write.fd;
        // A successful write may be partial: only what was written counts. A failed one is
        // reported with what it tried to write.
        let mut data = write.data;
        if let Some(written) = result.and_then(|(r, _)| usize::try_from(r).ok()) {
            data.truncate(written);
        }
        let Some(line) = self.lines.get_mut(&(pid, fd)) else {
            return Vec::new();
        };
        line.common = common;
        line.last_result = result.map(|(r, _)| r);
        match result.map(|(_, kind)| kind) {
            Some(Some("file")) if line.fd_target.is_some() => {}
            Some(Some(kind)) => line.fd_target = Some(kind.to_owned()),
            Some(None) => line.fd_target = None,
            None => {}
        }
        line.last_seen = now;
        let mut out = Vec::new();
        let mut rest = data.as_slice();
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            append(line, fd, &rest[..nl], self.line_max, &mut out);
            out.push(emit(line, fd, Ending::Newline));
            rest = &rest[nl + 1..];
        }
        append(line, fd, rest, self.line_max, &mut out);
        if write.truncated {
            // The bytes after the capture cap are missing: the line cannot be completed.
            out.push(emit(line, fd, Ending::Truncated));
        }
        out
    }

    /// Partial lines idle for `idle`.
    pub fn flush_idle(&mut self, now: Instant) -> Vec<(Common, WasmOutput)> {
        let idle = self.idle;
        self.lines
            .iter_mut()
            .filter(|(_, l)| !l.buf.is_empty() && now.duration_since(l.last_seen) >= idle)
            .map(|((_, fd), l)| emit(l, *fd, Ending::Partial))
            .collect()
    }

    /// The process exited: its writes still waiting for a result and its partial lines go
    /// out, and its state is dropped.
    pub fn on_exit(&mut self, pid: u32) -> Vec<(Common, WasmOutput)> {
        let unsettled: Vec<u32> = self
            .inflight
            .iter()
            .filter(|(_, p)| p.common.pid == Some(pid))
            .map(|(tid, _)| *tid)
            .collect();
        let mut out = Vec::new();
        for tid in unsettled {
            if let Some(pending) = self.inflight.remove(&tid) {
                out.extend(self.settle(pending, None, Instant::now()));
            }
        }
        let keys: Vec<(u32, u32)> = self
            .lines
            .keys()
            .filter(|(p, _)| *p == pid)
            .copied()
            .collect();
        for key in keys {
            if let Some(mut line) = self.lines.remove(&key)
                && !line.buf.is_empty()
            {
                out.push(emit(&mut line, key.1, Ending::Partial));
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

/// How a line record ends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// At its newline: a whole line.
    Newline,
    /// Without its newline (the size cap, idle, the process's exit): more may follow.
    Partial,
    /// The write's bytes beyond the capture cap are missing.
    Truncated,
}

/// Adds a newline-free segment to the line; every time the line would pass `max` bytes, what
/// it holds goes out as a partial record (cut before a character the cap would split).
fn append(
    line: &mut Line,
    fd: u32,
    mut bytes: &[u8],
    max: usize,
    out: &mut Vec<(Common, WasmOutput)>,
) {
    loop {
        let room = max.saturating_sub(line.buf.len());
        if bytes.len() <= room {
            line.buf.extend_from_slice(bytes);
            return;
        }
        line.buf.extend_from_slice(&bytes[..room]);
        bytes = &bytes[room..];
        let carry = line.buf.split_off(utf8_cut(&line.buf));
        out.push(emit(line, fd, Ending::Partial));
        line.buf = carry;
    }
}

/// Where to cut `buf` so that a UTF-8 character is not split: before an incomplete sequence
/// at its end (at most 3 bytes), else at its end (bytes that are not UTF-8 are cut anywhere).
fn utf8_cut(buf: &[u8]) -> usize {
    let len = buf.len();
    for back in 1..=3.min(len) {
        let at = len - back;
        let b = buf[at];
        if b & 0xc0 == 0x80 {
            continue;
        }
        let need = match b {
            0xc0..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf7 => 4,
            _ => 1,
        };
        return if need > back && at > 0 { at } else { len };
    }
    len
}

fn emit(line: &mut Line, fd: u32, ending: Ending) -> (Common, WasmOutput) {
    let bytes = std::mem::take(&mut line.buf);
    let (text, data_b64) = render(&bytes);
    (
        line.common.clone(),
        WasmOutput {
            stream: stream_of(fd),
            runtime: line.runtime.clone(),
            text,
            data_b64,
            partial: ending != Ending::Newline,
            truncated: ending == Ending::Truncated,
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

/// Classifies the target of /proc/PID/fd/FD: `pipe`, `socket`, `tty`, or the file's path.
pub fn classify_fd_target(target: procfs::process::FDTarget) -> String {
    use procfs::process::FDTarget;
    match target {
        FDTarget::Path(path) => {
            let path = path.to_string_lossy();
            if path.starts_with("/dev/pts/")
                || path.starts_with("/dev/tty")
                || path == "/dev/console"
            {
                "tty".into()
            } else {
                path.into_owned()
            }
        }
        FDTarget::Pipe(_) => "pipe".into(),
        FDTarget::Socket(_) => "socket".into(),
        // The rest as the link reads.
        FDTarget::Net(inode) => format!("net:[{inode}]"),
        FDTarget::AnonInode(what) => format!("anon_inode:{what}"),
        FDTarget::MemFD(name) => format!("/memfd:{name}"),
        FDTarget::Other(kind, inode) => format!("{kind}:[{inode}]"),
        FDTarget::Unknown(kind, rest) => format!("{kind}:{rest}"),
    }
}

/// The real resolver: /proc/PID/fd/FD's target.
pub fn proc_fd_resolver() -> FdResolver {
    Box::new(|pid, fd| {
        let (pid, fd) = (i32::try_from(pid).ok()?, i32::try_from(fd).ok()?);
        let info = procfs::process::Process::new(pid)
            .and_then(|p| p.fd_from_fd(fd))
            .ok()?;
        Some(classify_fd_target(info.target))
    })
}

impl super::Stage for WasmAssembler {
    fn wants(&self, event: &Decoded) -> bool {
        matches!(
            event.body,
            Body::WasmWrite(_) | Body::WasmWriteResult(_) | Body::ProcessExit(_)
        )
    }
    /// Takes write chunks and results (lines out when complete); flushes a process's partial
    /// lines at its exit and passes the exit on.
    fn on_event(
        &mut self,
        event: Decoded,
        cx: &super::Enricher,
        out: &mut Vec<Record>,
    ) -> Option<Decoded> {
        match event.body {
            Body::WasmWrite(chunk) => {
                let lines = self.on_chunk(event.common, chunk);
                out.extend(cx.kernel_events(lines, Body::wasm_output));
            }
            Body::WasmWriteResult(r) => {
                let lines =
                    self.on_result(&event.common, r.fd, r.result, r.fd_kind, Instant::now());
                out.extend(cx.kernel_events(lines, Body::wasm_output));
            }
            Body::ProcessExit(_) => {
                if let Some(pid) = event.common.pid {
                    out.extend(cx.kernel_events(self.on_exit(pid), Body::wasm_output));
                }
                return Some(event);
            }
            _ => return Some(event),
        }
        None
    }
    fn pending(&self, _now: Instant) -> bool {
        self.buffered() > 0
    }
    fn on_tick(&mut self, now: Instant, cx: &super::Enricher, out: &mut Vec<Record>) {
        out.extend(cx.kernel_events(self.flush_idle(now), Body::wasm_output));
    }
    fn drain(&mut self, cx: &super::Enricher, out: &mut Vec<Record>) {
        out.extend(cx.kernel_events(WasmAssembler::drain(self), Body::wasm_output));
    }
}

#[cfg(test)]
mod tests;
