//! Whether this CPU serves an interrupt, so events built there (a reset for a packet received
//! on loopback, a keepalive timer) are not blamed on the task that happened to be interrupted.
//! (The `common_flags` of a tracepoint record are not filled in on the BPF path.)
//!
//! First choice, no program at all: the kernel's own preempt count, read only when an event
//! fires, located through BTF (see [`PreemptLayout`]). Where BTF cannot locate it, the
//! `softirq_entry` / `softirq_exit` raw tracepoints keep a per-CPU flag (a program per softirq
//! of the node).

use aya_ebpf::{
    helpers::{bpf_get_current_task, bpf_probe_read_kernel},
    macros::{map, raw_tracepoint},
    maps::PerCpuArray,
    programs::RawTracePointContext,
};
use probe_common::{ABSENT, PREEMPT_IN_INTERRUPT, PreemptLayout};

use crate::common::read_kernel;

#[unsafe(no_mangle)]
static PREEMPT_LAYOUT: PreemptLayout = PreemptLayout::ABSENT;

#[map]
static IN_SOFTIRQ: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn set(value: u32) {
    if let Some(flag) = IN_SOFTIRQ.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; softirqs do not nest on one CPU.
        unsafe { *flag = value }
    }
}

/// This CPU's preempt count: current's `se.cfs_rq->rq` is this CPU's `runqueues`, the count
/// lies at a fixed distance from it in the same per-CPU area.
#[inline(always)]
fn preempt_count(l: &PreemptLayout) -> Option<u32> {
    // SAFETY: helper without preconditions.
    let task = unsafe { bpf_get_current_task() };
    let cfs_rq: u64 = read_kernel(task, l.task_cfs_rq)?;
    let rq: u64 = read_kernel(cfs_rq, l.cfs_rq_rq)?;
    if rq == 0 {
        return None;
    }
    let at = rq.wrapping_add(l.rq_to_preempt_count as u64);
    // SAFETY: bpf_probe_read_kernel validates the address and fails instead of faulting.
    unsafe { bpf_probe_read_kernel(at as *const u32) }.ok()
}

/// True while this CPU serves a softirq (or a hard interrupt), and when that is not known
/// (the preempt count unreadable; the loader starts every CPU's flag at `SOFTIRQ_UNKNOWN`):
/// naming no task is better than naming the wrong one.
#[inline(always)]
pub fn in_softirq() -> bool {
    // SAFETY: a plain read of a global; volatile so the loader's value is not constant-folded.
    let l = unsafe { core::ptr::read_volatile(&PREEMPT_LAYOUT) };
    if l.task_cfs_rq != ABSENT {
        return preempt_count(&l).is_none_or(|count| count & PREEMPT_IN_INTERRUPT != 0);
    }
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
