//! `sched_process_fork` (raw tracepoint): a child process of a selected Wasm runtime is
//! selected too (threads share their process's selection already).

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::raw_tracepoint, programs::RawTracePointContext,
};

use crate::{
    common::{read_kernel, task_offsets},
    wasm_capture::WASM_PIDS,
};

#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn sched_process_fork(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(struct task_struct *parent, struct task_struct *child); current is the parent.
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: the value is copied out at once.
    let Some(runtime) = (unsafe { WASM_PIDS.get(&tgid) }).copied() else {
        return 0;
    };
    let child: u64 = ctx.arg(1);
    if let Some(child_tgid) = read_kernel::<u32>(child, task_offsets().tgid)
        && child_tgid != tgid
    {
        let _ = WASM_PIDS.insert(&child_tgid, &runtime, 0);
    }
    0
}
