//! `tcp:tcp_send_reset`: a RST this host sends (also for SYNs to closed ports, with no socket).

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use probe_common::{TcpResetLayout, direction};

use crate::tcp_reset::emit;

#[unsafe(no_mangle)]
static SEND_RESET_LAYOUT: TcpResetLayout = TcpResetLayout::ABSENT;

#[tracepoint]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    // SAFETY: plain read of a load-time global.
    let layout = unsafe { core::ptr::read_volatile(&SEND_RESET_LAYOUT) };
    emit(&ctx, &layout, direction::SENT);
    0
}
