//! `syscalls:sys_enter_writev`: copies what selected processes (Wasm runtimes) write to fd 1
//! and 2. Every other process: one field read, or a field read and one or two map lookups.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use probe_common::WriteLayout;

use crate::wasm_capture::capture;

#[unsafe(no_mangle)]
pub static WRITEV_LAYOUT: WriteLayout = WriteLayout::ABSENT;

#[tracepoint]
pub fn sys_enter_writev(ctx: TracePointContext) -> u32 {
    // SAFETY: plain read of a load-time global.
    let layout = unsafe { core::ptr::read_volatile(&WRITEV_LAYOUT) };
    capture(&ctx, &layout, true);
    0
}
