//! `tcp:tcp_destroy_sock` (raw tracepoint): a TCP socket is freed. Its entry in the map of
//! request connections (`http.rs`: the client's and the server's ends the send and receive
//! hooks read) goes with it: the kernel reuses a freed socket's address for a later socket,
//! which would otherwise inherit the old one's state (a server's end taken for a client's, or
//! the reverse, and never read). One map delete per TCP socket freed (two for an HTTP/2
//! connection: its frame state, `http2.rs`); attached with either request hook.

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};

use crate::{
    http::{H2_CLIENT, HTTP_SOCKETS},
    http2::H2_CONNS,
};

#[raw_tracepoint(tracepoint = "tcp_destroy_sock")]
pub fn tcp_destroy_sock(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(struct sock *sk)
    let sk: u64 = ctx.arg(0);
    // SAFETY: the socket's value, read before its entry is removed.
    if let Some(v) = HTTP_SOCKETS.get_ptr(&sk)
        && unsafe { *v } >= H2_CLIENT
    {
        let _ = H2_CONNS.remove(&sk);
    }
    let _ = HTTP_SOCKETS.remove(&sk);
    0
}
