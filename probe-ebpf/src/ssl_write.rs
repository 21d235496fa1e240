//! `SSL_write` and `SSL_write_ex` (uprobes on OpenSSL's libssl): the plaintext a task hands to
//! TLS. The socket is not known here (OpenSSL writes the encrypted record through its BIO), so
//! the head of an HTTP/1.x request is kept per thread (`TLS_HEADS`) and the send hook takes it
//! on the thread's next send on a TLS connection (`tcp_sendmsg_locked.rs`: a socket whose first
//! send was a TLS handshake record): the request is tied to the socket the thread writes next,
//! which is the one OpenSSL writes the request's record to. A write that is no request costs
//! a 4-byte read and a map delete: it forgets what the thread kept (a head the send hook did not take, e.g. a
//! write OpenSSL buffered, is never handed to a later send). A request costs the read of its
//! head (up to `HTTP_HEAD` bytes), the scan and one map update. Every `SSL_write*` call of a
//! process mapping a covered libssl pays the uprobe's trap (measured in `cargo xtask bench`).

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user, bpf_probe_read_user_buf},
    macros::{map, uprobe},
    maps::{LruHashMap, PerCpuArray},
    programs::ProbeContext,
};
use probe_common::HTTP_HEAD;

use crate::{
    common::clamp_len,
    http::{Head, METHODS, has_traceparent},
};

/// A request head written through TLS, waiting for its thread's next send on a TLS socket.
#[repr(C)]
pub struct TlsHead {
    /// 1 when the head has a `traceparent` header line (the scan's verdict, kept).
    pub traced: u64,
    pub head: Head,
}

/// The request head each thread last wrote through TLS, by thread ID.
#[map]
pub static TLS_HEADS: LruHashMap<u32, TlsHead> = LruHashMap::with_max_entries(4096, 0);

/// The uprobe's scratch head.
#[map]
static TLS_SCRATCH: PerCpuArray<TlsHead> = PerCpuArray::with_max_entries(1, 0);

/// `int SSL_write(SSL *ssl, const void *buf, int num)`.
#[uprobe]
pub fn ssl_write(ctx: ProbeContext) -> u32 {
    if let (Some(buf), Some(num)) = (ctx.arg::<u64>(1), ctx.arg::<i32>(2)) {
        on_write(buf, num.max(0) as u64);
    }
    0
}

/// `int SSL_write_ex(SSL *s, const void *buf, size_t num, size_t *written)`.
#[uprobe]
pub fn ssl_write_ex(ctx: ProbeContext) -> u32 {
    if let (Some(buf), Some(num)) = (ctx.arg::<u64>(1), ctx.arg::<u64>(2)) {
        on_write(buf, num);
    }
    0
}

#[inline(always)]
fn on_write(buf: u64, num: u64) {
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: bpf_probe_read_user validates the address.
    let first = unsafe { bpf_probe_read_user(buf as *const u32) }.ok();
    if num < 16 || !first.is_some_and(|f| METHODS.contains(&f)) {
        // Not a request: what the thread kept is stale now (its send took it, or never will).
        let _ = TLS_HEADS.remove(&tid);
        return;
    }
    let Some(scratch) = TLS_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the per-CPU scratch value is this program's alone while it runs.
    let scratch = unsafe { &mut *scratch };
    let n = clamp_len(num, HTTP_HEAD as u64) as usize;
    let Some(dst) = scratch.head.data.get_mut(..n) else {
        return;
    };
    // SAFETY: bpf_probe_read_user_buf validates the address.
    if unsafe { bpf_probe_read_user_buf(buf as *const u8, dst) }.is_err() {
        return;
    }
    // SAFETY: a field of the scratch value; volatile: read back from memory after the scan.
    unsafe { core::ptr::write_volatile(&mut scratch.head.len, n as u64) };
    scratch.traced = u64::from(has_traceparent(&scratch.head));
    // A full map forgets its oldest thread: that request goes untied.
    let _ = TLS_HEADS.insert(&tid, scratch, 0);
}
