//! `tcp:tcp_receive_reset`: a RST received on an existing socket.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use probe_common::{TcpResetLayout, direction};

use crate::tcp_reset::emit;

#[unsafe(no_mangle)]
static RECEIVE_RESET_LAYOUT: TcpResetLayout = TcpResetLayout::ABSENT;

#[tracepoint]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    // SAFETY: plain read of a load-time global.
    let layout = unsafe { core::ptr::read_volatile(&RECEIVE_RESET_LAYOUT) };
    emit(&ctx, &layout, direction::RECEIVED, true);
    0
}
