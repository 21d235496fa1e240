//! Maps, load-time globals and helpers shared by every program.

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_kernel,
    },
    macros::map,
    maps::{Array, LruPerCpuHashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use probe_common::{
    ABSENT, AgentConfig, COUNT_KEYS, CountKey, CountValue, DropKey, EventHeader, FOLD_KEYS,
    FoldKey, FoldWindow, HDR_CGROUP, HDR_NETNS, HDR_TASK, KernelOffsets, LOSS_SLOTS, SkbOffsets,
    TaskOffsets, family,
};

use crate::softirq::in_softirq;

/// Every event goes through this ring buffer. The loader resizes it (`--ringbuf-bytes`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// `maps::READER_POLLING`: 1 while the agent reads on a timer.
#[map]
static READER_POLLING: Array<u32> = Array::with_max_entries(1, 0);

/// Failed ring-buffer writes, per CPU, per event kind.
#[map]
pub static LOSSES: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOSS_SLOTS, 0);

/// Exact counts per kind, detail and cgroup (`probe_common::CountKey`), per CPU.
#[map]
pub static EVENT_COUNTS: LruPerCpuHashMap<CountKey, CountValue> =
    LruPerCpuHashMap::with_max_entries(COUNT_KEYS, 0);

/// Storm folding per key (`probe_common::FoldKey`), per CPU.
#[map]
pub static FOLDS: LruPerCpuHashMap<FoldKey, FoldWindow> =
    LruPerCpuHashMap::with_max_entries(FOLD_KEYS, 0);

#[unsafe(no_mangle)]
static AGENT: AgentConfig = AgentConfig::DEFAULT;

#[unsafe(no_mangle)]
static KERNEL_OFFSETS: KernelOffsets = KernelOffsets::ABSENT;

#[unsafe(no_mangle)]
static TASK_OFFSETS: TaskOffsets = TaskOffsets::ABSENT;

#[unsafe(no_mangle)]
static SKB_OFFSETS: SkbOffsets = SkbOffsets::ABSENT;

#[inline(always)]
pub fn skb_offsets() -> SkbOffsets {
    // SAFETY: a plain read of a global; volatile so the loader's value is not constant-folded.
    unsafe { core::ptr::read_volatile(&SKB_OFFSETS) }
}

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const IPPROTO_TCP: u8 = 6;
/// `network_header` value of an skb whose network header was never set.
const UNSET_HEADER: u16 = 0xffff;

/// The TCP/IP 4-tuple of the packet in `skb` as it travels (source first), with `reason` and
/// the network namespace of its device (else of its socket). `None` for non-TCP packets, an
/// unset network header, or IPv6 with extension headers before TCP.
#[inline(always)]
pub fn skb_flow(skb: u64, o: &SkbOffsets, reason: u32) -> Option<DropKey> {
    let proto = u16::from_be(read_kernel::<u16>(skb, o.protocol)?);
    if proto != ETH_P_IP && proto != ETH_P_IPV6 {
        return None;
    }
    let head: u64 = read_kernel(skb, o.head)?;
    let nh: u16 = read_kernel(skb, o.network_header)?;
    if head == 0 || nh == UNSET_HEADER {
        return None;
    }
    let ip = head + u64::from(nh);
    let mut key = DropKey {
        saddr: [0; 16],
        daddr: [0; 16],
        sport: 0,
        dport: 0,
        family: 0,
        _pad: 0,
        reason,
        netns: 0,
    };
    let l4 = if proto == ETH_P_IP {
        let version_ihl: u8 = read_kernel(ip, 0)?;
        if version_ihl >> 4 != 4 || read_kernel::<u8>(ip, 9)? != IPPROTO_TCP {
            return None;
        }
        let s: [u8; 4] = read_kernel(ip, 12)?;
        let d: [u8; 4] = read_kernel(ip, 16)?;
        key.saddr[..4].copy_from_slice(&s);
        key.daddr[..4].copy_from_slice(&d);
        key.family = family::INET;
        ip + u64::from(version_ihl & 0xf) * 4
    } else {
        // Only TCP right after the fixed header: extension headers are not followed.
        let version: u8 = read_kernel(ip, 0)?;
        if version >> 4 != 6 || read_kernel::<u8>(ip, 6)? != IPPROTO_TCP {
            return None;
        }
        key.saddr = read_kernel(ip, 8)?;
        key.daddr = read_kernel(ip, 24)?;
        key.family = family::INET6;
        ip + 40
    };
    let ports: [u8; 4] = read_kernel(l4, 0)?;
    key.sport = u16::from_be_bytes([ports[0], ports[1]]);
    key.dport = u16::from_be_bytes([ports[2], ports[3]]);

    let k = offsets();
    let dev: u64 = read_kernel(skb, k.skb_dev).unwrap_or(0);
    let mut net: u64 = read_kernel(dev, k.dev_net).unwrap_or(0);
    if net == 0 {
        let sk: u64 = read_kernel(skb, o.sk).unwrap_or(0);
        net = read_kernel(sk, k.sk_net).unwrap_or(0);
    }
    key.netns = read_kernel(net, k.net_inum).unwrap_or(0);
    Some(key)
}

#[inline(always)]
pub fn task_offsets() -> TaskOffsets {
    // SAFETY: a plain read of a global; volatile so the loader's value is not constant-folded.
    unsafe { core::ptr::read_volatile(&TASK_OFFSETS) }
}

/// An empty header of `kind`, stamped now.
#[inline(always)]
pub fn new_header(kind: u32) -> EventHeader {
    EventHeader {
        kind,
        flags: 0,
        // SAFETY: helper without preconditions.
        ktime_ns: unsafe { aya_ebpf::helpers::bpf_ktime_get_boot_ns() },
        pid: 0,
        tid: 0,
        netns: 0,
        _reserved: 0,
        cgroup_id: 0,
        comm: [0; 16],
    }
}

/// Fills the header with `task`'s identity: pid/tid/comm, cgroup v2 id, network namespace.
#[inline(always)]
pub fn describe_task(header: &mut EventHeader, task: u64, t: &TaskOffsets, k: &KernelOffsets) {
    if let (Some(tgid), Some(pid)) = (
        read_kernel::<u32>(task, t.tgid),
        read_kernel::<u32>(task, t.pid),
    ) {
        header.pid = tgid;
        header.tid = pid;
        header.comm = read_kernel(task, t.comm).unwrap_or([0; 16]);
        header.flags |= HDR_TASK;
    }
    let css_set: u64 = read_kernel(task, t.cgroups).unwrap_or(0);
    let cgroup: u64 = read_kernel(css_set, t.css_set_dfl_cgrp).unwrap_or(0);
    let kn: u64 = read_kernel(cgroup, k.cgroup_kn).unwrap_or(0);
    if let Some(id) = read_kernel::<u64>(kn, k.kn_id) {
        header.cgroup_id = id;
        header.flags |= HDR_CGROUP;
    }
    let nsproxy: u64 = read_kernel(task, t.nsproxy).unwrap_or(0);
    let net: u64 = read_kernel(nsproxy, t.nsproxy_net).unwrap_or(0);
    if let Some(inum) = read_kernel::<u32>(net, k.net_inum) {
        header.netns = inum;
        header.flags |= HDR_NETNS;
    }
}

#[inline(always)]
pub fn agent() -> AgentConfig {
    // SAFETY: a plain read of a global; volatile so the loader's value is not constant-folded.
    unsafe { core::ptr::read_volatile(&AGENT) }
}

#[inline(always)]
pub fn offsets() -> KernelOffsets {
    // SAFETY: as for `agent`.
    unsafe { core::ptr::read_volatile(&KERNEL_OFFSETS) }
}

/// `bpf_ringbuf_output`/`submit` flags (uapi): the kernel's adaptive wake-up (0), none, or a
/// forced one.
const BPF_RB_ADAPTIVE_WAKEUP: u64 = 0;
const BPF_RB_NO_WAKEUP: u64 = 1;
pub const BPF_RB_FORCE_WAKEUP: u64 = 2;
/// `bpf_ringbuf_query`: bytes not yet consumed.
const BPF_RB_AVAIL_DATA: u64 = 0;

/// The kernel's adaptive wake-up: it wakes the reader only for a record the reader has
/// caught up to (the first one after it emptied the buffer), so a quiet node costs the
/// reader nothing and a busy one one wake-up per batch (the reader gathers a batch before it
/// drains, `pipeline::Gather`). While records keep coming the reader reads on its own timer
/// (`READER_POLLING`): no wake-up at all. Once WAKEUP_BYTES wait unread the reader is woken
/// whatever it is doing.
#[inline(always)]
pub fn wakeup_flags() -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA) >= u64::from(agent().wakeup_bytes) {
        BPF_RB_FORCE_WAKEUP
    } else if READER_POLLING.get(0).is_some_and(|on| *on == 1) {
        BPF_RB_NO_WAKEUP
    } else {
        BPF_RB_ADAPTIVE_WAKEUP
    }
}

/// Counts one event of `key` (and `bytes`) on this CPU, before its record is written: the
/// count stays exact when the ring buffer is full.
#[inline(always)]
pub fn count_event(key: &CountKey, bytes: u64) {
    if let Some(value) = EVENT_COUNTS.get_ptr_mut(key) {
        // SAFETY: this CPU's value; programs do not migrate while running.
        unsafe {
            (*value).events += 1;
            (*value).bytes += bytes;
        }
        return;
    }
    let first = CountValue { events: 1, bytes };
    // BPF_NOEXIST: another program on this CPU cannot have inserted it meanwhile (no
    // preemption inside a program); another CPU may have, and its insert sets only its value.
    if EVENT_COUNTS.insert(key, &first, 1).is_err()
        && let Some(value) = EVENT_COUNTS.get_ptr_mut(key)
    {
        // SAFETY: as above.
        unsafe {
            (*value).events += 1;
            (*value).bytes += bytes;
        }
    }
}

/// Whether the record of `key` at `now` goes out in full: the first `fold_first` of each key's
/// window on this CPU do; the others are counted as folded (the agent reads the counts and
/// writes one summary for them).
#[inline(always)]
pub fn admit(key: &FoldKey, now: u64) -> bool {
    let config = agent();
    if config.fold_first == 0 {
        return true;
    }
    let Some(window) = FOLDS.get_ptr_mut(key) else {
        let first = FoldWindow {
            start_ns: now,
            sent: 1,
            folded: 0,
            first_folded_ns: 0,
            last_folded_ns: 0,
        };
        let _ = FOLDS.insert(key, &first, 0);
        return true;
    };
    // SAFETY: this CPU's value; programs do not migrate while running.
    let w = unsafe { &mut *window };
    if now.wrapping_sub(w.start_ns) >= config.fold_window_ns {
        w.start_ns = now;
        w.sent = 0;
        w.first_folded_ns = 0;
    }
    if w.sent < u64::from(config.fold_first) {
        w.sent += 1;
        return true;
    }
    if w.first_folded_ns == 0 {
        w.first_folded_ns = now;
    }
    w.folded += 1;
    w.last_folded_ns = now;
    false
}

/// Counts one event of `kind` that could not be written to the ring buffer.
#[inline(always)]
pub fn count_loss(kind: u32) {
    if let Some(slot) = LOSSES.get_ptr_mut(kind) {
        // SAFETY: per-CPU slot, programs do not migrate while running.
        unsafe { *slot += 1 }
    }
}

/// `n` limited to `0..=max`. The compiler may fold a plain `min` into arithmetic whose range
/// older verifiers (5.10, 6.1) track as possibly negative ("R2 min value is negative"); a
/// volatile reload hides what the compiler knows, so the mask and the comparison stay in the
/// program. Used for the HTTP request head, which every kernel of the matrix accepted this way;
/// it is not enough everywhere: in the Wasm chunk copy 6.1 lost the comparison's bound across
/// a stack spill, so `wasm_write_chunk` bounds its length by a mask alone.
#[inline(always)]
pub fn clamp_len(n: u64, max: u64) -> u64 {
    // SAFETY: a read of a local.
    let v = unsafe { core::ptr::read_volatile(&n) } & (max.next_power_of_two() * 2 - 1);
    if v > max { max } else { v }
}

/// Reads a `T` at `base + off` in kernel memory; `None` when the offset is unknown on this
/// kernel, the base pointer is null, or the read faults.
#[inline(always)]
pub fn read_kernel<T>(base: u64, off: u32) -> Option<T> {
    if off == ABSENT || base == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel validates the address and fails instead of faulting.
    unsafe { bpf_probe_read_kernel((base + u64::from(off)) as *const T) }.ok()
}

/// Reads a tracepoint record field at a load-time offset.
#[inline(always)]
pub fn read_field<T>(ctx: &TracePointContext, off: u32) -> Option<T> {
    if off == ABSENT {
        return None;
    }
    // SAFETY: the offset comes from the tracepoint's format file; the read is checked.
    unsafe { ctx.read_at::<T>(off as usize) }.ok()
}

/// What to do with an event given the current task.
pub enum TaskContext {
    /// The agent itself: drop the event.
    Agent,
    /// Filled in.
    Task,
    /// Softirq or kernel thread: the current task is unrelated to the event.
    NotOwner,
}

/// Fills pid/tid/comm when the hook runs in the context of a user task, so a reset built in
/// softirq (or by a kernel thread such as threaded NAPI) is never blamed on whichever task was
/// on the CPU.
#[inline(always)]
pub fn fill_task(header: &mut EventHeader, off: &KernelOffsets) -> TaskContext {
    if in_softirq() {
        return TaskContext::NotOwner;
    }
    // SAFETY: helper without preconditions.
    let task = unsafe { bpf_get_current_task() };
    if off.task_mm != ABSENT && read_kernel::<u64>(task, off.task_mm).unwrap_or(0) == 0 {
        return TaskContext::NotOwner;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if tgid == agent().agent_tgid {
        return TaskContext::Agent;
    }
    header.pid = tgid;
    header.tid = pid_tgid as u32;
    header.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    header.flags |= HDR_TASK;
    TaskContext::Task
}
