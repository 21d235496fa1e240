//! `syscalls:sys_exit_writev`: the result (bytes written or -errno) of a captured write.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

use crate::{sys_enter_writev::WRITEV_LAYOUT, wasm_capture::result};

#[tracepoint]
pub fn sys_exit_writev(ctx: TracePointContext) -> u32 {
    // SAFETY: plain read of a load-time global.
    let layout = unsafe { core::ptr::read_volatile(&WRITEV_LAYOUT) };
    result(&ctx, &layout);
    0
}
