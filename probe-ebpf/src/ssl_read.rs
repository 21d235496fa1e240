//! `SSL_read` and `SSL_read_ex` (uprobes and uretprobes on OpenSSL's libssl): the plaintext a
//! TLS server reads, the server's end of the trace tie through TLS. At entry the user buffer
//! is kept per thread (`TLS_READS`); at return, what OpenSSL decrypted into it is looked at: a
//! request head (4 bytes tell) is read and scanned as on the plaintext receive path
//! (`http.rs`). The socket is the one the thread last read on a TLS connection: the receive
//! hook notes it for TLS sockets only (`sock_recv_length.rs`, `TLS_READ_SOCKETS`), since OpenSSL
//! reads its records through its BIO, never with the plaintext's buffer. The request is then
//! served on that socket as a plaintext one (`TLS_SERVING`), until the thread's first send on it
//! (`tcp_sendmsg_locked.rs`). Every `SSL_read*` call of a process mapping a covered libssl pays
//! two traps (entry and return) and a map update; a read that is no request costs a 4-byte read
//! more.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user, bpf_probe_read_user_buf},
    macros::{map, uprobe, uretprobe},
    maps::{LruHashMap, PerCpuArray},
    programs::{ProbeContext, RetProbeContext},
};
use probe_common::{HTTP_HEAD, side};

use crate::{
    common::clamp_len,
    http::{
        HTTP_SOCKETS, Head, METHODS, SEND_LAYOUT, TLS_PLAIN, TLS_SERVING, emit, has_traceparent,
    },
};

/// The uretprobes' scratch head.
#[map]
static TLS_READ_HEAD: PerCpuArray<Head> = PerCpuArray::with_max_entries(1, 0);

/// A read in progress: the user buffer, and where `SSL_read_ex` writes the count (0 for
/// `SSL_read`, which returns it).
#[repr(C)]
#[derive(Clone, Copy)]
struct TlsRead {
    buf: u64,
    readbytes: u64,
}

/// By thread (pid_tgid). An LRU: a thread that never returns is forgotten.
#[map]
static TLS_READS: LruHashMap<u64, TlsRead> = LruHashMap::with_max_entries(4096, 0);

/// The TCP socket each thread last read a TLS connection's bytes from (pid_tgid -> socket).
#[map]
pub static TLS_READ_SOCKETS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(4096, 0);

/// `int SSL_read(SSL *ssl, void *buf, int num)` at entry.
#[uprobe]
pub fn ssl_read(ctx: ProbeContext) -> u32 {
    if let Some(buf) = ctx.arg::<u64>(1) {
        let read = TlsRead { buf, readbytes: 0 };
        let _ = TLS_READS.insert(&bpf_get_current_pid_tgid(), &read, 0);
    }
    0
}

/// `int SSL_read_ex(SSL *ssl, void *buf, size_t num, size_t *readbytes)` at entry.
#[uprobe]
pub fn ssl_read_ex(ctx: ProbeContext) -> u32 {
    if let (Some(buf), Some(readbytes)) = (ctx.arg::<u64>(1), ctx.arg::<u64>(3)) {
        let read = TlsRead { buf, readbytes };
        let _ = TLS_READS.insert(&bpf_get_current_pid_tgid(), &read, 0);
    }
    0
}

/// `SSL_read`'s return: the number of bytes read (> 0), else a failure.
#[uretprobe]
pub fn ssl_read_ret(ctx: RetProbeContext) -> u32 {
    let ret = ctx.ret::<u64>() as i32;
    if let Some(read) = take_read() {
        on_read(read.buf, ret.max(0) as u64);
    }
    0
}

/// `SSL_read_ex`'s return: 1 on success, the count in `*readbytes`.
#[uretprobe]
pub fn ssl_read_ex_ret(ctx: RetProbeContext) -> u32 {
    let ret = ctx.ret::<u64>() as i32;
    if let Some(read) = take_read()
        && ret == 1
    {
        // SAFETY: bpf_probe_read_user validates the address.
        let n = unsafe { bpf_probe_read_user(read.readbytes as *const u64) }.unwrap_or(0);
        on_read(read.buf, n);
    }
    0
}

/// The thread's read kept at entry, taken out.
#[inline(always)]
fn take_read() -> Option<TlsRead> {
    let id = bpf_get_current_pid_tgid();
    // SAFETY: a copy of this thread's value.
    let read = unsafe { *TLS_READS.get_ptr(&id)? };
    let _ = TLS_READS.remove(&id);
    Some(read)
}

/// `count` plaintext bytes at `buf` a thread read through TLS.
#[inline(always)]
fn on_read(buf: u64, count: u64) {
    if count < 16 {
        return;
    }
    // SAFETY: bpf_probe_read_user validates the address.
    let Ok(word) = (unsafe { bpf_probe_read_user(buf as *const u32) }) else {
        return;
    };
    if !METHODS.contains(&word) {
        return;
    }
    let Some(sk) = TLS_READ_SOCKETS.get_ptr(&bpf_get_current_pid_tgid()) else {
        return;
    };
    // SAFETY: a copy of this thread's value.
    let sk = unsafe { *sk };
    let Some(state) = HTTP_SOCKETS.get_ptr_mut(&sk) else {
        return;
    };
    // SAFETY: the socket's value (an LRU may reuse it: one event too many or too few).
    let before = unsafe { *state };
    if before != TLS_PLAIN && before != TLS_SERVING {
        return;
    }
    let Some(head) = TLS_READ_HEAD.get_ptr_mut(0) else {
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
    // SAFETY: a field of the scratch value; volatile: read back from memory after the scan.
    unsafe { core::ptr::write_volatile(&mut head.len, n as u64) };
    let traced = has_traceparent(head);
    let now = if traced { TLS_SERVING } else { TLS_PLAIN };
    if now != before {
        // SAFETY: as above.
        unsafe { *state = now };
    }
    // A request with trace context, or one after a traced request that was never answered.
    if traced || before == TLS_SERVING {
        // SAFETY: a plain read of a global; volatile so the loader's value is not folded.
        let l = unsafe { core::ptr::read_volatile(&SEND_LAYOUT) };
        emit(sk, Some(head), &l, side::RECEIVED);
    }
}
