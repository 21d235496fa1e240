//! `sched_process_exit` (raw tracepoint): reports the exit status of processes that
//! `signal_generate` put in CRASH_WATCH, so userspace learns whether a core was dumped (bit
//! 0x80 of the exit code), and the exit of selected Wasm runtimes (so partial output lines are
//! flushed), which it deselects. Every other exit costs two hash lookups.

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use probe_common::{ExitEvent, kind};

use crate::{
    common::{
        BPF_RB_FORCE_WAKEUP, EVENTS, count_loss, describe_task, new_header, offsets, read_kernel,
        task_offsets,
    },
    signal_generate::CRASH_WATCH,
    wasm_capture::WASM_PIDS,
};

#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_process_exit(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(struct task_struct *p, bool group_dead)
    let task: u64 = ctx.arg(0);
    let t = task_offsets();
    let Some(tgid) = read_kernel::<u32>(task, t.tgid) else {
        return 0;
    };
    // SAFETY: the values are copied out at once.
    let watched = unsafe { CRASH_WATCH.get(&tgid) }.copied();
    // SAFETY: as above.
    let wasm = unsafe { WASM_PIDS.get(&tgid) }.is_some();
    if watched.is_none() && !wasm {
        return 0;
    }
    let exit_code: u32 = read_kernel(task, t.exit_code).unwrap_or(0);
    let pid: u32 = read_kernel(task, t.pid).unwrap_or(0);
    // The first thread to die of a signal, or the leader, carries the group's exit code.
    if exit_code & 0x7f == 0 && pid != tgid {
        return 0;
    }
    // Removal decides which thread reports: only the first one succeeds.
    let crash_reported = watched.is_some() && CRASH_WATCH.remove(&tgid).is_ok();
    let wasm_reported = wasm && WASM_PIDS.remove(&tgid).is_ok();
    if !crash_reported && !wasm_reported {
        return 0;
    }
    let mut ev = ExitEvent {
        header: new_header(kind::PROCESS_EXIT),
        exit_code,
        watched_signal: if crash_reported {
            watched.unwrap_or(0)
        } else {
            0
        },
    };
    describe_task(&mut ev.header, task, &t, &offsets());
    // Read at once (a watched crash's outcome, a runtime's last line): the container's cgroup
    // may be removed within milliseconds of the exit.
    if EVENTS
        .output::<ExitEvent>(&ev, BPF_RB_FORCE_WAKEUP)
        .is_err()
    {
        count_loss(kind::PROCESS_EXIT);
    }
    0
}
