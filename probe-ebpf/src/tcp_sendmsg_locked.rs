//! `tcp_sendmsg_locked` (raw tracepoint): data a task sends on a TCP socket. Only the start of
//! a plaintext HTTP/1.x request is of interest (its W3C `traceparent` header ties kernel events
//! on that connection to the request's trace). A connection's first send is read (4 bytes of
//! the user buffer); later sends only where that first one was a request (`HTTP_SOCKETS`):
//! on every other socket a send costs one map lookup and one read of `bytes_sent`. On a
//! request's connection a send costs the lookup and two reads (the message's `iov_iter` in one
//! window, the head itself: up to `HTTP_HEAD` bytes). The head is scanned here for a
//! `traceparent` header line; it goes to the agent, which parses it, only when it has one or
//! when the connection's previous request had one (the agent must then forget that trace).
//! Requests without trace context on connections without it cost the scan and nothing in the
//! agent. On a socket whose first read was a request (`sock_recv_length.rs`: the server's end),
//! a send costs the lookup; the first one after a traced request tells the agent the request
//! was answered. The head, the scan and the event are shared with the receive hooks (`http.rs`).
//! A connection whose first send is a TLS handshake record is marked too: on it, a send costs
//! the lookup and one more of the sending thread's request head written through TLS
//! (`ssl_write.rs`), which becomes the send's request.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user, bpf_probe_read_user_buf},
    macros::{fentry, kprobe, raw_tracepoint},
    programs::{FEntryContext, ProbeContext, RawTracePointContext},
};
use probe_common::{ABSENT, HTTP_HEAD, SendLayout, side};

use crate::{
    common::{clamp_len, read_kernel},
    http::{
        ANSWERED, H2_CLIENT, HEAD, HTTP_SOCKETS, METHODS, PLAIN, PROXY, SEND_LAYOUT, SERVING,
        TLS_HANDSHAKE, TLS_PLAIN, TLS_SERVING, TLS_TRACED, TRACED, emit, has_traceparent,
        user_data,
    },
    http2,
    ssl_write::TLS_HEADS,
};

#[raw_tracepoint(tracepoint = "tcp_sendmsg_locked")]
#[inline(always)] // one stack frame (a call adds one: 512 bytes for both)
pub fn tcp_sendmsg_locked(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(const struct sock *sk, const struct msghdr *msg, const struct sk_buff *skb,
    //          int size_goal)
    on_send(ctx.arg(0), ctx.arg(1));
    0
}

/// The function itself, where the kernel has no such tracepoint (before 6.13):
/// `int tcp_sendmsg_locked(struct sock *sk, struct msghdr *msg, size_t size)`.
#[fentry(function = "tcp_sendmsg_locked")]
#[inline(always)] // one stack frame (a call adds one: 512 bytes for both)
pub fn tcp_sendmsg_locked_fentry(ctx: FEntryContext) -> u32 {
    on_send(ctx.arg(0), ctx.arg(1));
    0
}

#[kprobe(function = "tcp_sendmsg_locked")]
#[inline(always)] // one stack frame (a call adds one: 512 bytes for both)
pub fn tcp_sendmsg_locked_kprobe(ctx: ProbeContext) -> u32 {
    if let (Some(sk), Some(msg)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) {
        on_send(sk, msg);
    }
    0
}

#[inline(always)]
fn on_send(sk: u64, msg: u64) {
    // SAFETY: a plain read of a global; volatile so the loader's value is not constant-folded.
    let l = unsafe { core::ptr::read_volatile(&SEND_LAYOUT) };
    if l.msg_iter == ABSENT {
        return;
    }
    // A request's connection: read on (`bytes_sent` is not needed). Any other: read on only
    // on its first send. The socket's map value stays null there (a plain pointer, set on
    // every path: 5.10's verifier rejects a read of a stack slot one path left unwritten).
    let mut state: *mut u8 = core::ptr::null_mut();
    let mut first_send = false;
    let mut h2 = 0u8;
    match HTTP_SOCKETS.get_ptr_mut(&sk) {
        Some(p) => {
            // SAFETY: the socket's value in this program's map (an LRU may reuse it for
            // another socket at worst: one event too many or too few, never a fault).
            let v = unsafe { *p };
            if v >= H2_CLIENT {
                // HTTP/2: its frames are followed below.
                h2 = v;
            } else if v >= TLS_PLAIN {
                on_tls_send(sk, p, v, &l);
                return;
            } else if v >= ANSWERED {
                // The server's end of a request connection: its first send after a traced
                // request answers that request (nothing is read).
                if v == SERVING {
                    // SAFETY: as above.
                    unsafe { *p = ANSWERED };
                    emit(sk, None, &l, side::ANSWERED);
                }
                return;
            } else {
                state = p;
            }
        }
        None => {
            if read_kernel::<u64>(sk, l.bytes_sent).is_some_and(|sent| sent != 0) {
                return;
            }
            first_send = true;
        }
    }
    let Some(head) = HEAD.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the per-CPU scratch buffer is this program's alone while it runs.
    let head = unsafe { &mut *head };
    let Some((src, count, total)) = user_data(msg, &l, l.iter_iovec, &mut head.iter) else {
        return;
    };
    if h2 == 0 && count < 16 {
        return;
    }
    if first_send {
        // Most first sends are no request: 4 bytes tell.
        // SAFETY: bpf_probe_read_user validates the address.
        let Ok(first) = (unsafe { bpf_probe_read_user(src as *const u32) }) else {
            return;
        };
        if first == http2::PREFACE {
            // An HTTP/2 client's connection: its frames are followed from here.
            let _ = HTTP_SOCKETS.insert(&sk, &H2_CLIENT, 0);
            http2::start(sk);
            h2 = H2_CLIENT;
        } else if !METHODS.contains(&first) {
            // A full map only forgets its oldest socket: its later requests go unread.
            if first == PROXY {
                let _ = HTTP_SOCKETS.insert(&sk, &PLAIN, 0);
            } else if first as u16 == TLS_HANDSHAKE {
                let _ = HTTP_SOCKETS.insert(&sk, &TLS_PLAIN, 0);
            }
            return;
        }
    }
    if h2 != 0 {
        // A client's requests; a server's answers (two walks: each is simpler for the
        // verifier than one that asks which it is at every frame; one event code).
        let d = if h2 == H2_CLIENT {
            http2::follow::<true>(sk, src, count, total, side::H2_SENT)
        } else {
            http2::follow::<false>(sk, src, count, total, side::H2_SENT)
        };
        if let Some(d) = d {
            http2::emit(sk, &l, d);
        }
        return;
    }
    let n = clamp_len(count, HTTP_HEAD as u64) as usize;
    let Some(dst) = head.data.get_mut(..n) else {
        return;
    };
    // SAFETY: bpf_probe_read_user_buf validates the address.
    if unsafe { bpf_probe_read_user_buf(src as *const u8, dst) }.is_err() {
        return;
    }
    // A send on a request's connection: read at once (one call less per request), the
    // method checked in the copy. (A socket reusing a forgotten one's address gets here on
    // its first send too: a request is then read as on any first send, anything else left.)
    // SAFETY: within `data`, 8-byte aligned in `Head`.
    if !first_send && !METHODS.contains(&unsafe { *(head.data.as_ptr() as *const u32) }) {
        return;
    }
    // SAFETY: a field of the scratch value; volatile: read back from memory after the scan.
    unsafe { core::ptr::write_volatile(&mut head.len, n as u64) };
    let traced = has_traceparent(head);
    let now = if traced { TRACED } else { PLAIN };
    let mut before = PLAIN;
    if state.is_null() {
        let _ = HTTP_SOCKETS.insert(&sk, &now, 0);
    } else {
        // SAFETY: the socket's value in this program's map (an LRU may reuse it for another
        // socket at worst: one event too many or too few, never a fault).
        before = unsafe { *state };
        if before != now {
            // SAFETY: as above.
            unsafe { *state = now };
        }
    }
    // A request with trace context, or the one that ends the context of the one before.
    if traced || before == TRACED {
        emit(sk, Some(head), &l, side::SENT);
    }
}

/// A send on a TLS connection: the request head this thread last wrote through TLS, if any
/// (`ssl_write.rs`), is the request this send carries. As on a plaintext connection, it goes to
/// the agent when it has a `traceparent` or ends the context of the request before.
#[inline(always)]
fn on_tls_send(sk: u64, state: *mut u8, before: u8, l: &SendLayout) {
    if before == TLS_SERVING {
        // The server's first send after a traced request read through TLS answers it.
        // SAFETY: the socket's value in this program's map, as in `on_send`.
        unsafe { *state = TLS_PLAIN };
        emit(sk, None, l, side::ANSWERED);
        return;
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(pending) = TLS_HEADS.get_ptr(&tid) else {
        return;
    };
    // SAFETY: this thread's value in the uprobe's map (an LRU may reuse it for another
    // thread at worst: one event too many or too few, never a fault).
    let pending = unsafe { &*pending };
    let traced = pending.traced != 0;
    if traced || before == TLS_TRACED {
        emit(sk, Some(&pending.head), l, side::SENT);
    }
    let now = if traced { TLS_TRACED } else { TLS_PLAIN };
    if now != before {
        // SAFETY: the socket's value in this program's map, as in `on_send`.
        unsafe { *state = now };
    }
    let _ = TLS_HEADS.remove(&tid);
}
