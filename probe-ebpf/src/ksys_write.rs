//! `ksys_write` (fexit, else kprobe/kretprobe): the kernel's write(2) path, where the
//! kernel allows it (the Debian kernels; not this host's). Unlike the syscall tracepoints
//! (sys_enter_write/sys_exit_write, the fallback), a function hook costs only the calls of
//! that function: it does not put every syscall of every task on the traced-syscall path.
//! Same capture and result as the tracepoints (wasm_capture.rs).

use aya_ebpf::{
    macros::{fexit, kprobe, kretprobe},
    programs::{FExitContext, ProbeContext, RetProbeContext},
};

use crate::wasm_capture::{capture_args, capture_with_result, result_of};

// ssize_t ksys_write(unsigned int fd, const char __user *buf, size_t count)

#[fexit(function = "ksys_write")]
pub fn ksys_write_fexit(ctx: FExitContext) -> u32 {
    // Arguments and result in one program; the return value follows the three arguments
    // (bpf_get_func_ret needs 5.17).
    capture_with_result(
        u64::from(ctx.arg::<u32>(0)),
        ctx.arg(1),
        ctx.arg(2),
        false,
        ctx.arg(3),
    );
    0
}

#[kprobe(function = "ksys_write")]
pub fn ksys_write_kprobe(ctx: ProbeContext) -> u32 {
    if let (Some(fd), Some(buf), Some(count)) =
        (ctx.arg::<u32>(0), ctx.arg::<u64>(1), ctx.arg::<u64>(2))
    {
        capture_args(u64::from(fd), buf, count, false);
    }
    0
}

#[kretprobe(function = "ksys_write")]
pub fn ksys_write_kretprobe(ctx: RetProbeContext) -> u32 {
    result_of(ctx.ret());
    0
}
