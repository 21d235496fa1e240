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
    SkbOffsets, family, kind,
};

use crate::common::{
    EVENTS, TaskContext, count_loss, fill_task, new_header, offsets, read_kernel, wakeup_flags,
};

#[map]
pub static DROP_FLOWS: LruPerCpuHashMap<DropKey, DropCount> =
    LruPerCpuHashMap::with_max_entries(8192, 0);

#[unsafe(no_mangle)]
static SKB_OFFSETS: SkbOffsets = SkbOffsets::ABSENT;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const IPPROTO_TCP: u8 = 6;
/// `network_header` value of an skb whose network header was never set.
const UNSET_HEADER: u16 = 0xffff;

#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn kfree_skb(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(struct sk_buff *skb, void *location, enum skb_drop_reason reason,
    //          struct sock *rx_sk)
    let skb: u64 = ctx.arg(0);
    let reason = ctx.arg::<u64>(2) as u32;
    // SAFETY: a plain read of a global; volatile so the loader's value is not constant-folded.
    let o = unsafe { core::ptr::read_volatile(&SKB_OFFSETS) };
    if reason == o.no_socket_reason {
        return 0;
    }
    let Some(proto_be) = read_kernel::<u16>(skb, o.protocol) else {
        return 0;
    };
    let proto = u16::from_be(proto_be);
    if proto != ETH_P_IP && proto != ETH_P_IPV6 {
        return 0;
    }
    if let Some(key) = flow_key(skb, &o, proto, reason) {
        count(&key);
    }
    0
}

#[inline(always)]
fn flow_key(skb: u64, o: &SkbOffsets, proto: u16, reason: u32) -> Option<DropKey> {
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
