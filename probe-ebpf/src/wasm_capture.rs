//! Shared state and body of the Wasm output hooks. A process is selected when it execs a
//! runtime (WASM_RUNTIMES, longest-prefix match on the executable's basename), inherits the
//! selection at fork, loses it when it execs something else (crun exec'ing a normal
//! container's entrypoint) and at exit. A process in a cgroup of WASM_CGROUPS is selected too.
//! Writes of selected processes to fd 1 and 2 are copied in chunks; the result follows from
//! the exit hook.

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_task, bpf_probe_read_user, bpf_probe_read_user_buf,
    },
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap},
    programs::TracePointContext,
};
use probe_common::{
    CountKey, EXE_NAME_LEN, EventHeader, HDR_CGROUP, HDR_TASK, MAX_WRITE_CHUNKS, RUNTIME_BY_CGROUP,
    WRITE_CHUNK, WRITE_TRUNCATED, WRITE_UNREADABLE, WriteEvent, WriteLayout, WriteResultEvent,
    kind,
};

use crate::common::{
    EVENTS, agent, count_event, count_loss, new_header, read_field, read_kernel, task_offsets,
    wakeup_flags,
};

#[map]
pub static WASM_PIDS: HashMap<u32, u32> = HashMap::with_max_entries(16384, 0);

#[map]
pub static WASM_CGROUPS: HashMap<u64, u32> = HashMap::with_max_entries(4096, 0);

#[map]
static WASM_CGROUP_COUNT: Array<u32> = Array::with_max_entries(1, 0);

#[map]
pub static WASM_RUNTIMES: LpmTrie<[u8; EXE_NAME_LEN], u32> = LpmTrie::with_max_entries(256, 0);

#[map]
static WASM_INFLIGHT: LruHashMap<u32, u32> = LruHashMap::with_max_entries(16384, 0);

/// iovecs of one writev that are copied.
const MAX_IOVECS: u64 = 4;

/// The runtime index of the current process if it is selected. The hot path for every write
/// to fd 1/2 on the node while the write hooks are attached: one hash lookup, plus the
/// cgroup's only while a Wasm pod's cgroup is captured.
#[inline(always)]
fn selected(tgid: u32) -> Option<u32> {
    // SAFETY: the value is copied out at once.
    if let Some(runtime) = unsafe { WASM_PIDS.get(&tgid) } {
        return Some(*runtime);
    }
    if WASM_CGROUP_COUNT.get(0).is_none_or(|n| *n == 0) {
        return None;
    }
    // SAFETY: helper without preconditions.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: as above.
    unsafe { WASM_CGROUPS.get(&cgroup) }.map(|_| RUNTIME_BY_CGROUP)
}

/// `sys_enter_write` / `sys_enter_writev`: the arguments from the tracepoint's record.
#[inline(always)]
pub fn capture(ctx: &TracePointContext, layout: &WriteLayout, vectored: bool) {
    let Some(fd) = read_field::<u64>(ctx, layout.fd) else {
        return;
    };
    if fd != 1 && fd != 2 {
        return;
    }
    let buf: u64 = read_field(ctx, layout.buf).unwrap_or(0);
    let count: u64 = read_field(ctx, layout.count).unwrap_or(0);
    capture_args(fd, buf, count, vectored);
}

/// A write (or writev: `buf` is the iovec array, `count` their number) of `count` bytes at
/// user address `buf` to `fd`, seen where it starts (syscall tracepoint, kprobe on the
/// kernel's write path): its result follows from the matching exit hook.
#[inline(always)]
pub fn capture_args(fd: u64, buf: u64, count: u64, vectored: bool) {
    if let Some(pid_tgid) = capture_write(fd, buf, count, vectored) {
        let _ = WASM_INFLIGHT.insert(pid_tgid as u32, fd as u32, 0);
    }
}

/// The same, seen where it ended with its arguments (fexit): one program per write instead
/// of an entry and an exit program; the user buffer is read after the write, unchanged.
#[inline(always)]
pub fn capture_with_result(fd: u64, buf: u64, count: u64, vectored: bool, ret: i64) {
    if let Some(pid_tgid) = capture_write(fd, buf, count, vectored) {
        emit_result(pid_tgid, fd as u32, ret);
    }
}

/// Copies the write if the process is selected; its pid_tgid when it was.
#[inline(always)]
fn capture_write(fd: u64, buf: u64, count: u64, vectored: bool) -> Option<u64> {
    // A load-time constant: with capture disabled the verifier drops everything below.
    let config = agent();
    if config.capture_bytes == 0 {
        return None;
    }
    if fd != 1 && fd != 2 {
        return None;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let runtime = selected(tgid)?;
    if tgid == config.agent_tgid {
        return None;
    }
    let w = Writer {
        fd: fd as u32,
        runtime,
    };
    if vectored {
        let mut total = 0u64;
        for i in 0..MAX_IOVECS {
            if i >= count {
                break;
            }
            total += iovec(buf, i).1;
        }
        let mut offset = 0u64;
        for i in 0..MAX_IOVECS {
            if i >= count {
                break;
            }
            let (base, len) = iovec(buf, i);
            let more = i + 1 == MAX_IOVECS && count > MAX_IOVECS;
            w.copy::<CHUNKS_PER_IOVEC>(base, len, offset, total, more);
            offset += len;
        }
    } else {
        w.copy::<{ MAX_WRITE_CHUNKS as usize }>(buf, count, 0, count, false);
    }
    Some(pid_tgid)
}

/// Chunks per iovec of a writev (MAX_IOVECS * CHUNKS_PER_IOVEC = MAX_WRITE_CHUNKS).
const CHUNKS_PER_IOVEC: usize = 4;

#[inline(always)]
fn iovec(vec: u64, i: u64) -> (u64, u64) {
    // struct iovec { void *iov_base; size_t iov_len; } (uapi).
    // SAFETY: bpf_probe_read_user validates the address.
    unsafe { bpf_probe_read_user((vec + i * 16) as *const [u64; 2]) }
        .map_or((0, 0), |v| (v[0], v[1]))
}

/// Header of an event about the current writer: pid/tid, the process's comm (its group
/// leader's, not the writing thread's), cgroup.
#[inline(always)]
fn writer_header(kind: u32, pid_tgid: u64) -> EventHeader {
    let mut header = new_header(kind);
    header.pid = (pid_tgid >> 32) as u32;
    header.tid = pid_tgid as u32;
    header.flags = HDR_TASK | HDR_CGROUP;
    // SAFETY: helpers without preconditions.
    header.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let t = task_offsets();
    // SAFETY: as above.
    let task = unsafe { bpf_get_current_task() };
    let leader: u64 = read_kernel(task, t.group_leader).unwrap_or(0);
    header.comm = match read_kernel::<[u8; 16]>(leader, t.comm) {
        Some(comm) => comm,
        None => bpf_get_current_comm().unwrap_or([0; 16]),
    };
    header
}

struct Writer {
    fd: u32,
    runtime: u32,
}

impl Writer {
    /// Copies `len` bytes at user address `src` (at `base` within a write of `total` bytes)
    /// in at most `N` chunks. The loop carries only its index: each chunk, with all the
    /// arithmetic on the lengths, is a call of a separately verified function that says when
    /// the write is done, so the verifier's work grows with N, not with the paths through N
    /// iterations (5.10 exceeded its 1M-instruction budget with 16 chunks of 1 KiB).
    #[inline(always)]
    fn copy<const N: usize>(&self, src: u64, len: u64, base: u64, total: u64, more_after: bool) {
        for i in 0..N {
            let meta = i as u64
                | (u64::from(i + 1 == N) << CHUNK_LAST_SHIFT)
                | (u64::from(more_after) << CHUNK_MORE_SHIFT)
                | (u64::from(self.fd & 0xff) << CHUNK_FD_SHIFT)
                | (u64::from(self.runtime) << CHUNK_RUNTIME_SHIFT);
            if wasm_write_chunk(src, len, base, total, meta) != 0 {
                break;
            }
        }
    }
}

/// `meta` of [`wasm_write_chunk`]: chunk index (bits 0-7), last allowed chunk (8), more
/// bytes after this buffer (9), fd (16-23), runtime index (32-63).
const CHUNK_INDEX_MASK: u64 = 0xff;
const CHUNK_LAST_SHIFT: u32 = 8;
const CHUNK_MORE_SHIFT: u32 = 9;
const CHUNK_FD_SHIFT: u32 = 16;
const CHUNK_RUNTIME_SHIFT: u32 = 32;

/// Chunk `i` (from `meta`) of the `len` bytes at `src` to the ring buffer; returns 1 when the
/// buffer is done (nothing left after this chunk, or nothing at all), 0 otherwise. A global
/// BPF function (scalar arguments only): the verifier checks it once, on its own.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn wasm_write_chunk(src: u64, len: u64, base: u64, total: u64, meta: u64) -> i32 {
    let config = agent();
    let chunk = if config.capture_bytes as usize > WRITE_CHUNK || config.capture_bytes == 0 {
        WRITE_CHUNK as u64
    } else {
        u64::from(config.capture_bytes)
    };
    let off = (meta & CHUNK_INDEX_MASK) * chunk;
    if off >= len {
        return 1;
    }
    let left = len - off;
    let n = if left < chunk { left } else { chunk };
    let end = off + n >= len;
    let last = (meta >> CHUNK_LAST_SHIFT) & 1 == 1;
    let more_after = (meta >> CHUNK_MORE_SHIFT) & 1 == 1;
    let truncated = (last && !end) || (end && more_after);
    let Some(mut entry) = EVENTS.reserve::<WriteEvent>(0) else {
        count_loss(kind::WASM_WRITE);
        return i32::from(end);
    };
    let ev = entry.as_mut_ptr();
    let mut flags = if truncated { WRITE_TRUNCATED } else { 0 };
    // 1..=WRITE_CHUNK by a mask as the last arithmetic before use: every verifier of the
    // matrix keeps that range (a compare-and-clamp was compiled into a form whose bound 6.1's
    // verifier lost across a stack spill). n >= 1 here (off < len).
    let n = (((n - 1) & (WRITE_CHUNK as u64 - 1)) + 1) as usize;
    let header = writer_header(kind::WASM_WRITE, bpf_get_current_pid_tgid());
    // SAFETY: `ev` points at a reserved WriteEvent; fields are written before submit.
    unsafe {
        if let Some(dst) = (*ev).data.get_mut(..n)
            && bpf_probe_read_user_buf((src + off) as *const u8, dst).is_err()
        {
            flags |= WRITE_UNREADABLE;
        }
        (*ev).header = header;
        (*ev).fd = ((meta >> CHUNK_FD_SHIFT) & 0xff) as u32;
        (*ev).flags = flags;
        (*ev).total_len = total;
        (*ev).offset = base + off;
        (*ev).chunk_len = n as u32;
        (*ev).runtime = (meta >> CHUNK_RUNTIME_SHIFT) as u32;
    }
    entry.submit(wakeup_flags());
    i32::from(end)
}

/// Mode and rdev of the inode behind the current task's `fd` ((0, 0) when closed): known in
/// the kernel even when the process is gone before userspace could look at /proc.
#[inline(always)]
fn fd_inode(fd: u32) -> (u32, u32) {
    let t = task_offsets();
    // SAFETY: helper without preconditions.
    let task = unsafe { bpf_get_current_task() };
    let files: u64 = read_kernel(task, t.files).unwrap_or(0);
    let fdt: u64 = read_kernel(files, t.files_fdt).unwrap_or(0);
    let fds: u64 = read_kernel(fdt, t.fdt_fd).unwrap_or(0);
    let file: u64 = if fds == 0 {
        0
    } else {
        read_kernel(fds + u64::from(fd) * 8, 0).unwrap_or(0)
    };
    let inode: u64 = read_kernel(file, t.file_inode).unwrap_or(0);
    (
        u32::from(read_kernel::<u16>(inode, t.inode_mode).unwrap_or(0)),
        read_kernel::<u32>(inode, t.inode_rdev).unwrap_or(0),
    )
}

/// `sys_exit_write` / `sys_exit_writev`: the result from the tracepoint's record.
#[inline(always)]
pub fn result(ctx: &TracePointContext, layout: &WriteLayout) {
    result_of(read_field::<i64>(ctx, layout.exit_ret).unwrap_or(0));
}

/// The result (bytes written or -errno) of a captured write, from whichever hook saw the
/// write end. One lookup for every other write on the node.
#[inline(always)]
pub fn result_of(ret: i64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    // SAFETY: the value is copied out at once.
    let Some(fd) = (unsafe { WASM_INFLIGHT.get(&tid) }).copied() else {
        return;
    };
    let _ = WASM_INFLIGHT.remove(&tid);
    emit_result(pid_tgid, fd, ret);
}

/// The result event of a captured write.
#[inline(always)]
fn emit_result(pid_tgid: u64, fd: u32, ret: i64) {
    let (file_mode, file_rdev) = fd_inode(fd);
    let ev = WriteResultEvent {
        header: writer_header(kind::WASM_WRITE_RESULT, pid_tgid),
        fd,
        file_mode,
        result: ret,
        file_rdev,
        _reserved: 0,
    };
    let key = CountKey {
        cgroup_id: ev.header.cgroup_id,
        netns: 0,
        kind: kind::WASM_WRITE_RESULT,
        a: fd,
        b: 0,
    };
    count_event(&key, if ret > 0 { ret as u64 } else { 0 });
    if EVENTS
        .output::<WriteResultEvent>(&ev, wakeup_flags())
        .is_err()
    {
        count_loss(kind::WASM_WRITE_RESULT);
    }
}
