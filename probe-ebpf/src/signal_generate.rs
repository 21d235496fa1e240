//! `signal_generate` (raw tracepoint): a signal of the reported set (core-dumping signals by
//! default) was generated for a task. The event describes the TARGET task; the sender is the
//! current task unless the signal was generated in softirq. Fatal ones (default action, not
//! ignored) are put in CRASH_WATCH so the exit hook reports whether a core was written.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid},
    macros::{map, raw_tracepoint},
    maps::LruHashMap,
    programs::RawTracePointContext,
};
use probe_common::{
    ABSENT, CountKey, SIG_DUMPABLE, SIG_HANDLER, SIG_RLIMIT, SIG_SENDER, SignalEvent, kind,
};

use crate::{
    common::{
        BPF_RB_FORCE_WAKEUP, EVENTS, agent, count_event, count_loss, describe_task, new_header,
        offsets, read_kernel, task_offsets,
    },
    softirq::in_softirq,
};

#[map]
pub static CRASH_WATCH: LruHashMap<u32, u32> = LruHashMap::with_max_entries(16384, 0);

/// `SEND_SIG_NOINFO` / `SEND_SIG_PRIV`: special `info` pointer values.
const SEND_SIG_NOINFO: u64 = 0;
const SEND_SIG_PRIV: u64 = 1;
const SI_USER: i32 = 0;
const SI_KERNEL: i32 = 0x80;

#[raw_tracepoint(tracepoint = "signal_generate")]
pub fn signal_generate(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(int sig, struct kernel_siginfo *info, struct task_struct *task, int group,
    //          int result)
    let sig: i32 = ctx.arg(0);
    let config = agent();
    if !(1..64).contains(&sig) || config.signal_mask & (1u64 << sig) == 0 {
        return 0;
    }
    emit(&ctx, sig as u32, config.agent_tgid);
    0
}

#[inline(always)]
fn emit(ctx: &RawTracePointContext, sig: u32, agent_tgid: u32) {
    let info: u64 = ctx.arg(1);
    let task: u64 = ctx.arg(2);
    let t = task_offsets();
    let k = offsets();
    let mut ev = SignalEvent {
        header: new_header(kind::CORE_SIGNAL),
        sender_pid: 0,
        sender_tid: 0,
        sender_comm: [0; 16],
        signal: sig,
        si_code: SI_USER,
        result: ctx.arg(4),
        flags: 0,
        rlimit_core: 0,
        handler: 0,
        dumpable: 0,
        group: ctx.arg(3),
    };
    describe_task(&mut ev.header, task, &t, &k);
    if ev.header.pid == agent_tgid {
        return;
    }
    ev.si_code = match info {
        SEND_SIG_NOINFO => SI_USER,
        SEND_SIG_PRIV => SI_KERNEL,
        _ => read_kernel(info, t.si_code).unwrap_or(SI_USER),
    };
    if !in_softirq() {
        let pid_tgid = bpf_get_current_pid_tgid();
        ev.sender_pid = (pid_tgid >> 32) as u32;
        ev.sender_tid = pid_tgid as u32;
        ev.sender_comm = bpf_get_current_comm().unwrap_or([0; 16]);
        ev.flags |= SIG_SENDER;
    }
    let signal: u64 = read_kernel(task, t.signal).unwrap_or(0);
    if let Some(limit) = read_kernel::<u64>(signal, t.rlimit_core) {
        ev.rlimit_core = limit;
        ev.flags |= SIG_RLIMIT;
    }
    let sighand: u64 = read_kernel(task, t.sighand).unwrap_or(0);
    if t.sighand_action != ABSENT && t.sa_handler != ABSENT && sighand != 0 {
        let slot = t.sighand_action + (sig - 1) * t.k_sigaction_size + t.sa_handler;
        if let Some(handler) = read_kernel::<u64>(sighand, slot) {
            ev.handler = handler;
            ev.flags |= SIG_HANDLER;
        }
    }
    let mm: u64 = read_kernel(task, t.mm).unwrap_or(0);
    if let Some(flags) = read_kernel::<u64>(mm, t.mm_flags) {
        ev.dumpable = (flags & 3) as u32;
        ev.flags |= SIG_DUMPABLE;
    }

    // Default action and not ignored: the process is going to die; watch its exit.
    if ev.flags & SIG_HANDLER != 0 && ev.handler == 0 && ev.result != t.result_ignored {
        let _ = CRASH_WATCH.insert(ev.header.pid, sig, 0);
    }
    let key = CountKey {
        cgroup_id: ev.header.cgroup_id,
        netns: ev.header.netns,
        kind: kind::CORE_SIGNAL,
        a: sig,
        b: ev.si_code as u32,
    };
    count_event(&key, 0);
    // Read at once, whatever batch the reader is gathering: the crashing process and its
    // container (whose cgroup names the pod) may be gone within milliseconds.
    if EVENTS
        .output::<SignalEvent>(&ev, BPF_RB_FORCE_WAKEUP)
        .is_err()
    {
        count_loss(kind::CORE_SIGNAL);
    }
}
