//! `do_writev` (fexit, else kprobe/kretprobe): the kernel's writev(2) path, where the
//! kernel allows it; the syscall tracepoints are the fallback. See ksys_write.rs.

use aya_ebpf::{
    macros::{fexit, kprobe, kretprobe},
    programs::{FExitContext, ProbeContext, RetProbeContext},
};

use crate::wasm_capture::{capture_args, capture_with_result, result_of};

// ssize_t do_writev(unsigned long fd, const struct iovec __user *vec, unsigned long vlen,
//                   rwf_t flags)

#[fexit(function = "do_writev")]
pub fn do_writev_fexit(ctx: FExitContext) -> u32 {
    // Arguments and result in one program; the return value follows the four arguments
    // (bpf_get_func_ret needs 5.17).
    capture_with_result(ctx.arg(0), ctx.arg(1), ctx.arg(2), true, ctx.arg(4));
    0
}

#[kprobe(function = "do_writev")]
pub fn do_writev_kprobe(ctx: ProbeContext) -> u32 {
    if let (Some(fd), Some(vec), Some(vlen)) =
        (ctx.arg::<u64>(0), ctx.arg::<u64>(1), ctx.arg::<u64>(2))
    {
        capture_args(fd, vec, vlen, true);
    }
    0
}

#[kretprobe(function = "do_writev")]
pub fn do_writev_kretprobe(ctx: RetProbeContext) -> u32 {
    result_of(ctx.ret());
    0
}
