//! `tcp:tcp_send_reset`: a RST this host sends (also for SYNs to closed ports, with no socket).

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use probe_common::{TcpResetLayout, direction};

use crate::tcp_reset::emit;

#[unsafe(no_mangle)]
static SEND_RESET_LAYOUT: TcpResetLayout = TcpResetLayout::ABSENT;

/// 1: report resets without a full socket here too; 0: a function hook reports them.
#[unsafe(no_mangle)]
static SEND_RESET_UNOWNED: u32 = 1;

#[tracepoint]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    // SAFETY: plain reads of load-time globals.
    let layout = unsafe { core::ptr::read_volatile(&SEND_RESET_LAYOUT) };
    let unowned = unsafe { core::ptr::read_volatile(&SEND_RESET_UNOWNED) } != 0;
    emit(&ctx, &layout, direction::SENT, unowned);
    0
}
