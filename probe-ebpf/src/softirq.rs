//! `softirq_entry` / `softirq_exit` (raw tracepoints): a per-CPU flag telling the other hooks
//! that the CPU is serving a softirq, so events built there (a reset for a packet received on
//! loopback, a keepalive timer) are not blamed on the task that happened to be interrupted.
//! (The `common_flags` of a tracepoint record are not filled in on the BPF path.)

use aya_ebpf::{
    macros::{map, raw_tracepoint},
    maps::PerCpuArray,
    programs::RawTracePointContext,
};

#[map]
static IN_SOFTIRQ: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn set(value: u32) {
    if let Some(flag) = IN_SOFTIRQ.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; softirqs do not nest on one CPU.
        unsafe { *flag = value }
    }
}

/// True while this CPU serves a softirq, and when that is not known (the loader starts every
/// CPU at `SOFTIRQ_UNKNOWN`): naming no task is better than naming the wrong one.
#[inline(always)]
pub fn in_softirq() -> bool {
    IN_SOFTIRQ.get(0).is_none_or(|flag| *flag != 0)
}

#[raw_tracepoint(tracepoint = "softirq_entry")]
pub fn softirq_entry(_ctx: RawTracePointContext) -> i32 {
    set(1);
    0
}

#[raw_tracepoint(tracepoint = "softirq_exit")]
pub fn softirq_exit(_ctx: RawTracePointContext) -> i32 {
    set(0);
    0
}
