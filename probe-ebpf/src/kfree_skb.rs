//! `kfree_skb` (raw tracepoint, with the drop reason): a TCP packet the kernel dropped. Drops are
//! counted in DROP_FLOWS per flow and reason, per CPU (no atomics needed; the BPF target has no
//! atomic read-modify-write in Rust's core); a record goes out at a key's first drop on a CPU
//! and then at most once per `DROP_REPORT_INTERVAL_NS`, so a drop storm cannot flood the ring
//! buffer. The agent reads the sum over CPUs. Non-IP and non-TCP packets leave after one read.

use aya_ebpf::{
    helpers::bpf_ktime_get_boot_ns,
    macros::{map, raw_tracepoint},
    maps::{LruPerCpuHashMap, PerCpuArray},
    programs::RawTracePointContext,
};
use probe_common::{
    DROP_RECORDS_PER_SEC, DROP_REPORT_INTERVAL_NS, DropCount, DropKey, HDR_NETNS, PacketDropEvent,
    REASON_NONE, SkbOffsets, kind,
};

use crate::{
    common::{
        EVENTS, TaskContext, count_loss, fill_task, new_header, offsets, skb_flow, skb_offsets,
        wakeup_flags,
    },
    tcp_reset::RESET_SKB,
};

#[map]
pub static DROP_FLOWS: LruPerCpuHashMap<DropKey, DropCount> =
    LruPerCpuHashMap::with_max_entries(8192, 0);

#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn kfree_skb(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(struct sk_buff *skb, void *location, enum skb_drop_reason reason, ...)
    let o = skb_offsets();
    let reason = ctx.arg::<u64>(2) as u32;
    if reason != o.no_socket_reason {
        drop_seen(ctx.arg(0), &o, reason);
    }
    0
}

/// The same tracepoint where it has no drop reason (`TP_PROTO(struct sk_buff *skb, void
/// *location)`): a raw tracepoint program may not read past the tracepoint's arguments, so
/// this one reads only the skb.
#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn kfree_skb_noreason(ctx: RawTracePointContext) -> i32 {
    let skb: u64 = ctx.arg(0);
    // A segment just answered with a reset (no socket): reported as that reset, not a drop.
    if let Some(slot) = RESET_SKB.get_ptr_mut(0) {
        // SAFETY: this CPU's slot.
        let answered = unsafe { &mut *slot };
        if *answered == skb {
            *answered = 0;
            return 0;
        }
    }
    drop_seen(skb, &skb_offsets(), REASON_NONE);
    0
}

#[inline(always)]
fn drop_seen(skb: u64, o: &SkbOffsets, reason: u32) {
    if let Some(key) = skb_flow(skb, o, reason) {
        count(&key);
    }
}

#[inline(always)]
fn count(key: &DropKey) {
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    if let Some(value) = DROP_FLOWS.get_ptr_mut(key) {
        // SAFETY: this CPU's slot of a per-CPU value, valid while the program runs; programs do
        // not migrate, so nothing else writes it meanwhile.
        let v = unsafe { &mut *value };
        v.total += 1;
        if v.total == 1 || now.wrapping_sub(v.reported_ns) >= DROP_REPORT_INTERVAL_NS {
            v.reported_ns = now;
            emit(key, v.total);
        }
        return;
    }
    let first = DropCount {
        total: 1,
        reported_ns: now,
    };
    // Sets this CPU's slot only (the others start at zero).
    if DROP_FLOWS.insert(key, &first, 0).is_ok() {
        emit(key, 1);
    }
}

/// Per CPU: start of the current second and records sent in it.
#[map]
static DROP_BUDGET: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

/// Whether this CPU may send another record this second.
#[inline(always)]
fn within_budget(now: u64) -> bool {
    let Some(slot) = DROP_BUDGET.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: this CPU's slot; programs do not migrate while running.
    let budget = unsafe { &mut *slot };
    if now.wrapping_sub(budget[0]) >= 1_000_000_000 {
        budget[0] = now;
        budget[1] = 0;
    }
    budget[1] += 1;
    budget[1] <= DROP_RECORDS_PER_SEC
}

#[inline(always)]
fn emit(key: &DropKey, total: u64) {
    let header = new_header(kind::PACKET_DROP);
    if !within_budget(header.ktime_ns) {
        count_loss(kind::PACKET_DROP);
        return;
    }
    let mut ev = PacketDropEvent {
        header,
        key: *key,
        total,
    };
    if let TaskContext::Agent = fill_task(&mut ev.header, &offsets()) {
        return;
    }
    if key.netns != 0 {
        ev.header.netns = key.netns;
        ev.header.flags |= HDR_NETNS;
    }
    if EVENTS
        .output::<PacketDropEvent>(&ev, wakeup_flags())
        .is_err()
    {
        count_loss(kind::PACKET_DROP);
    }
}
