//! `sock_recv_length` (raw tracepoint, 6.3+; else `inet_recvmsg`/`inet6_recvmsg` fentry and
//! fexit, else kprobe and kretprobe): data a task read from a TCP socket. Only the start of a
//! plaintext HTTP/1.x request is of interest: the server's end of the horizontal tie (its
//! `traceparent` ties what happens while the request is served to the request's trace).
//!
//! A connection's first read is looked at (4 bytes of the user buffer); later reads only where
//! that first one was a request (`HTTP_SOCKETS`, `ANSWERED`/`SERVING`): on every other TCP
//! socket a read costs one map lookup and three reads of the socket (the bytes it received and
//! the unread ones tell whether the task had read any before). On a request's connection a read
//! costs the lookup and the head's copy (up to `HTTP_HEAD` bytes), scanned for a `traceparent`
//! header line as on the send path (`http.rs`). The agent hears of a request only when it
//! carries a trace context or ends one (a traced request that was never answered); the first
//! send on the socket after a traced request answers it (`tcp_sendmsg_locked.rs`).
//!
//! After the read (the tracepoint) the kernel's `msghdr` is gone: the buffer is the syscall's
//! second argument, read from the task's saved registers (`read`, `recvfrom`: the buffer;
//! `readv`: the first iovec; `recvmsg`: the first iovec of the `msghdr`). The function hooks
//! keep the buffer of the `msghdr` at entry, per thread, for the exit.

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task_btf, bpf_probe_read_user,
        bpf_probe_read_user_buf, bpf_task_pt_regs,
    },
    macros::{fentry, fexit, kprobe, kretprobe, map, raw_tracepoint},
    maps::LruHashMap,
    programs::{FEntryContext, FExitContext, ProbeContext, RawTracePointContext, RetProbeContext},
};
use probe_common::{ABSENT, HTTP_HEAD, ITER_WINDOW, RecvLayout, SendLayout, family, side};

use crate::{
    common::{clamp_len, read_kernel},
    http::{
        ANSWERED, H2_CLIENT, H2_SERVER, HTTP_SOCKETS, METHODS, PROXY, RECV_HEAD, SEND_LAYOUT,
        SERVING, TLS_HANDSHAKE, TLS_PLAIN, emit, has_traceparent, user_data,
    },
    http2,
    ssl_read::TLS_READ_SOCKETS,
};

#[unsafe(no_mangle)]
static RECV_LAYOUT: RecvLayout = RecvLayout::ABSENT;

const IPPROTO_TCP: u16 = 6;
/// `MSG_PEEK`: the data stays to be read again.
const MSG_PEEK: i32 = 2;

/// A read the function hooks look at, from its entry to its exit: the socket, the user
/// buffer and its length, and whether it was the socket's first.
#[repr(C)]
#[derive(Clone, Copy)]
struct Pending {
    sk: u64,
    buf: u64,
    len: u64,
    first: u64,
}

/// By thread (pid_tgid). An LRU: a thread that never returns (killed mid-read) is forgotten.
#[map]
static RECV_PENDING: LruHashMap<u64, Pending> = LruHashMap::with_max_entries(4096, 0);

#[inline(always)]
fn layouts() -> (RecvLayout, SendLayout) {
    // SAFETY: plain reads of globals; volatile so the loader's values are not constant-folded.
    unsafe {
        (
            core::ptr::read_volatile(&RECV_LAYOUT),
            core::ptr::read_volatile(&SEND_LAYOUT),
        )
    }
}

#[raw_tracepoint(tracepoint = "sock_recv_length")]
#[inline(always)] // one stack frame (a call adds one: 512 bytes for both)
pub fn sock_recv_length(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(struct sock *sk, int ret, int flags)
    let sk: u64 = ctx.arg(0);
    let ret = ctx.arg::<u64>(1) as i32;
    let flags = ctx.arg::<u64>(2) as i32;
    if ret > 0 && flags & MSG_PEEK == 0 {
        after_read(sk, ret as u64);
    }
    0
}

/// The tracepoint's read: a TCP socket's, its buffer from the syscall's registers.
#[inline(always)]
fn after_read(sk: u64, ret: u64) {
    let (r, s) = layouts();
    if r.regs_nr == ABSENT || s.msg_iter == ABSENT {
        return;
    }
    let fam: u16 = read_kernel(sk, s.skc_family).unwrap_or(0);
    if fam != family::INET && fam != family::INET6 {
        return;
    }
    if read_kernel::<u16>(sk, r.sk_protocol) != Some(IPPROTO_TCP) {
        return;
    }
    let Some(state) = look(sk, &r, ret) else {
        return;
    };
    // SAFETY: helpers without preconditions; the registers are read through checked reads.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
    let Some(nr) = read_kernel::<u64>(regs, r.regs_nr) else {
        return;
    };
    let Some(arg) = read_kernel::<u64>(regs, r.regs_arg1) else {
        return;
    };
    let (buf, len) = if nr == u64::from(r.nr_read) || nr == u64::from(r.nr_recvfrom) {
        (arg, ret)
    } else if nr == u64::from(r.nr_readv) {
        let Some(iov) = first_iovec(arg) else {
            return;
        };
        iov
    } else if nr == u64::from(r.nr_recvmsg) {
        // struct user_msghdr { void *msg_name; int msg_namelen; struct iovec *msg_iov; ... }
        // SAFETY: bpf_probe_read_user validates the address.
        let Ok(iov) = (unsafe { bpf_probe_read_user((arg + 16) as *const u64) }) else {
            return;
        };
        let Some(iov) = first_iovec(iov) else {
            return;
        };
        iov
    } else {
        // io_uring, a kernel reader: no user buffer in the registers.
        return;
    };
    on_received(sk, state, buf, if len < ret { len } else { ret }, ret, &s);
}

/// The first `{ iov_base, iov_len }` of a user iovec array.
#[inline(always)]
fn first_iovec(iov: u64) -> Option<(u64, u64)> {
    // SAFETY: bpf_probe_read_user validates the address.
    let [base, len]: [u64; 2] = unsafe { bpf_probe_read_user(iov as *const [u64; 2]) }.ok()?;
    Some((base, len))
}

/// Whether a read of `sk` is looked at: `Some(state)` for a request connection's (its map
/// value, a server's end) or a connection's first read (null: not in the map); `None` for any
/// other, and for the client's end of a request connection. `done` is what this read took
/// already (0 at a function's entry, where a read of any size is looked at). A read of fewer
/// than 16 bytes is looked at only on an HTTP/2 server's connection (whose frames are followed
/// through every read).
#[inline(always)]
fn look(sk: u64, r: &RecvLayout, done: u64) -> Option<*mut u8> {
    let small = done != 0 && done < 16;
    if let Some(p) = HTTP_SOCKETS.get_ptr_mut(&sk) {
        // SAFETY: the socket's value in the map (an LRU may reuse it: one event too many or
        // too few at worst, never a fault).
        let v = unsafe { *p };
        if v >= H2_CLIENT {
            // HTTP/2: a server's reads carry the requests; a client's, nothing looked at.
            return (v == H2_SERVER).then_some(p);
        }
        if small {
            return None;
        }
        if v >= TLS_PLAIN {
            // A TLS connection: its plaintext is read at `SSL_read`'s return (`ssl_read.rs`),
            // which needs the socket this thread reads.
            let _ = TLS_READ_SOCKETS.insert(&bpf_get_current_pid_tgid(), &sk, 0);
            return None;
        }
        return (ANSWERED..=SERVING).contains(&v).then_some(p);
    }
    if small {
        return None;
    }
    // Bytes the task read before: received, less those still unread, less this read's.
    let received: u64 = read_kernel(sk, r.bytes_received)?;
    let nxt: u32 = read_kernel(sk, r.rcv_nxt)?;
    let copied: u32 = read_kernel(sk, r.copied_seq)?;
    let unread = u64::from(nxt.wrapping_sub(copied));
    (received == unread + done).then_some(core::ptr::null_mut())
}

/// A read of `total` bytes on `sk`, the first `count` at `buf` (`state`: as `look` gave it).
#[inline(always)]
fn on_received(sk: u64, state: *mut u8, buf: u64, count: u64, total: u64, s: &SendLayout) {
    // SAFETY: as in `look`.
    let mut h2 = !state.is_null() && unsafe { *state } == H2_SERVER;
    if !h2 && count < 16 {
        return;
    }
    let first = state.is_null();
    if first {
        // Most first reads are no request: 4 bytes tell.
        // SAFETY: bpf_probe_read_user validates the address.
        let Ok(word) = (unsafe { bpf_probe_read_user(buf as *const u32) }) else {
            return;
        };
        if word == http2::PREFACE {
            // An HTTP/2 server's end: its frames are followed from here.
            let _ = HTTP_SOCKETS.insert(&sk, &H2_SERVER, 0);
            http2::start(sk);
            h2 = true;
        } else if !METHODS.contains(&word) {
            if word == PROXY {
                // A proxy's line before the requests: the requests follow on this socket.
                let _ = HTTP_SOCKETS.insert(&sk, &ANSWERED, 0);
            } else if word as u16 == TLS_HANDSHAKE {
                // A TLS server's end: its requests are read through TLS.
                let _ = HTTP_SOCKETS.insert(&sk, &TLS_PLAIN, 0);
                let _ = TLS_READ_SOCKETS.insert(&bpf_get_current_pid_tgid(), &sk, 0);
            }
            return;
        }
    }
    if h2 {
        if let Some(d) = http2::follow::<true>(sk, buf, count, total, side::H2_RECEIVED) {
            http2::emit(sk, s, d);
        }
        return;
    }
    let Some(head) = RECV_HEAD.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the per-CPU scratch buffer is this program's alone while it runs.
    let head = unsafe { &mut *head };
    let n = clamp_len(count, HTTP_HEAD as u64) as usize;
    let Some(dst) = head.data.get_mut(..n) else {
        return;
    };
    // SAFETY: bpf_probe_read_user_buf validates the address.
    if unsafe { bpf_probe_read_user_buf(buf as *const u8, dst) }.is_err() {
        return;
    }
    // A later read of a request connection: a request only if it starts with a method (not
    // a body's next bytes).
    // SAFETY: within `data`, 8-byte aligned in `Head`.
    if !first && !METHODS.contains(&unsafe { *(head.data.as_ptr() as *const u32) }) {
        return;
    }
    // SAFETY: a field of the scratch value; volatile: read back from memory after the scan.
    unsafe { core::ptr::write_volatile(&mut head.len, n as u64) };
    let traced = has_traceparent(head);
    let now = if traced { SERVING } else { ANSWERED };
    let mut before = ANSWERED;
    if first {
        let _ = HTTP_SOCKETS.insert(&sk, &now, 0);
    } else {
        // SAFETY: as in `look`.
        before = unsafe { *state };
        if before != now {
            // SAFETY: as above.
            unsafe { *state = now };
        }
    }
    // A request with trace context, or one after a traced request that was never answered.
    if traced || before == SERVING {
        emit(sk, Some(head), s, side::RECEIVED);
    }
}

/// `int inet_recvmsg(struct socket *sock, struct msghdr *msg, size_t size, int flags)` (and
/// `inet6_recvmsg`, the same) at entry: a TCP read to look at is kept for the exit.
#[inline(always)]
fn on_entry(sock: u64, msg: u64, flags: u64) {
    if flags as i32 & MSG_PEEK != 0 {
        return;
    }
    let (r, s) = layouts();
    if s.msg_iter == ABSENT {
        return;
    }
    let Some(sk) = read_kernel::<u64>(sock, r.socket_sk) else {
        return;
    };
    if read_kernel::<u16>(sk, r.sk_protocol) != Some(IPPROTO_TCP) {
        return;
    }
    let Some(state) = look(sk, &r, 0) else {
        return;
    };
    let mut window = [0u64; ITER_WINDOW / 8];
    let Some((buf, len, _)) = user_data(msg, &s, r.iter_iovec, &mut window) else {
        return;
    };
    let pending = Pending {
        sk,
        buf,
        len,
        first: u64::from(state.is_null()),
    };
    let _ = RECV_PENDING.insert(&bpf_get_current_pid_tgid(), &pending, 0);
}

/// The exit of the read kept at its entry, with what it returned.
#[inline(always)]
fn on_exit(ret: u64) {
    let id = bpf_get_current_pid_tgid();
    let Some(p) = RECV_PENDING.get_ptr(&id) else {
        return;
    };
    // SAFETY: the thread's value in the map, copied out before it is removed.
    let p = unsafe { *p };
    let _ = RECV_PENDING.remove(&id);
    let ret = ret as i32;
    if ret <= 0 {
        return;
    }
    let (_, s) = layouts();
    // The state again: the entry's pointer may not outlive the read.
    let state = match HTTP_SOCKETS.get_ptr_mut(&p.sk) {
        Some(v) => v,
        None if p.first == 1 => core::ptr::null_mut(),
        None => return,
    };
    let ret = ret as u64;
    on_received(
        p.sk,
        state,
        p.buf,
        if p.len < ret { p.len } else { ret },
        ret,
        &s,
    );
}

#[fentry(function = "inet_recvmsg")]
#[inline(always)] // one stack frame (a call adds one: 512 bytes for both)
pub fn inet_recvmsg_fentry(ctx: FEntryContext) -> u32 {
    on_entry(ctx.arg(0), ctx.arg(1), ctx.arg(3));
    0
}

#[fentry(function = "inet6_recvmsg")]
#[inline(always)] // one stack frame (a call adds one: 512 bytes for both)
pub fn inet6_recvmsg_fentry(ctx: FEntryContext) -> u32 {
    on_entry(ctx.arg(0), ctx.arg(1), ctx.arg(3));
    0
}

#[fexit(function = "inet_recvmsg")]
#[inline(always)] // one stack frame (a call adds one: 512 bytes for both)
pub fn inet_recvmsg_fexit(ctx: FExitContext) -> u32 {
    on_exit(ctx.arg(4));
    0
}

#[fexit(function = "inet6_recvmsg")]
#[inline(always)] // one stack frame (a call adds one: 512 bytes for both)
pub fn inet6_recvmsg_fexit(ctx: FExitContext) -> u32 {
    on_exit(ctx.arg(4));
    0
}

#[kprobe(function = "inet_recvmsg")]
#[inline(always)] // one stack frame (a call adds one: 512 bytes for both)
pub fn inet_recvmsg_kprobe(ctx: ProbeContext) -> u32 {
    kprobe_entry(&ctx);
    0
}

#[kprobe(function = "inet6_recvmsg")]
#[inline(always)] // one stack frame (a call adds one: 512 bytes for both)
pub fn inet6_recvmsg_kprobe(ctx: ProbeContext) -> u32 {
    kprobe_entry(&ctx);
    0
}

#[inline(always)]
fn kprobe_entry(ctx: &ProbeContext) {
    if let (Some(sock), Some(msg), Some(flags)) =
        (ctx.arg::<u64>(0), ctx.arg::<u64>(1), ctx.arg::<u64>(3))
    {
        on_entry(sock, msg, flags);
    }
}

#[kretprobe(function = "inet_recvmsg")]
#[inline(always)] // one stack frame (a call adds one: 512 bytes for both)
pub fn inet_recvmsg_kretprobe(ctx: RetProbeContext) -> u32 {
    on_exit(ctx.ret::<u64>());
    0
}

#[kretprobe(function = "inet6_recvmsg")]
#[inline(always)] // one stack frame (a call adds one: 512 bytes for both)
pub fn inet6_recvmsg_kretprobe(ctx: RetProbeContext) -> u32 {
    on_exit(ctx.ret::<u64>());
    0
}
