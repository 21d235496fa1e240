//! `tcp_v6_send_reset` (fentry, else kprobe): an IPv6 RST this host sends without a full
//! socket (a segment to a closed port, a TIME_WAIT answer). Kernels before 6.10 do not call
//! `tcp:tcp_send_reset` for those; the loader attaches this hook only where the tracepoint's
//! format says it is not the all-resets event (no `reason` field).

use aya_ebpf::{
    macros::{fentry, kprobe},
    programs::{FEntryContext, ProbeContext},
};

use crate::tcp_reset::emit_unowned;

#[fentry(function = "tcp_v6_send_reset")]
pub fn tcp_v6_send_reset_fentry(ctx: FEntryContext) -> u32 {
    // (const struct sock *sk, struct sk_buff *skb, ...)
    emit_unowned(ctx.arg(0), ctx.arg(1));
    0
}

#[kprobe(function = "tcp_v6_send_reset")]
pub fn tcp_v6_send_reset_kprobe(ctx: ProbeContext) -> u32 {
    if let (Some(sk), Some(skb)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) {
        emit_unowned(sk, skb);
    }
    0
}
