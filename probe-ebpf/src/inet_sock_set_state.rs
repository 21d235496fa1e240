//! `sock:inet_sock_set_state`: a TCP active open that ends without reaching ESTABLISHED
//! (`SYN_SENT` -> `CLOSE`). The socket's `sk_err` says how: `ECONNREFUSED` (a reset, also
//! reported as one), `ETIMEDOUT` (the SYN retransmits ran out), an ICMP error's errno
//! (`EHOSTUNREACH`...), or 0 (the application closed it first, e.g. its dial timeout). Every
//! other state change returns after two reads of the record.

use aya_ebpf::{
    macros::{map, tracepoint},
    maps::LruHashMap,
    programs::TracePointContext,
};
use probe_common::{
    CONNECT_ICMP_FLOWS, ConnectFailureEvent, ConnectLayout, CountKey, FoldKey, ICMP_SEEN,
    IPPROTO_TCP, IcmpFlow, UNKNOWN, family, kind,
};

use crate::{
    common::{
        EVENTS, TaskContext, admit, count_event, count_loss, fill_task, new_header, offsets,
        read_field, read_kernel, wakeup_flags,
    },
    tcp_reset::socket_owner,
};

#[unsafe(no_mangle)]
static CONNECT_LAYOUT: ConnectLayout = ConnectLayout::ABSENT;

/// `maps::CONNECT_ICMP`: the last ICMP error of a flow (`tcp_v4_err.rs`, `tcp_v6_err.rs`).
#[map]
pub static CONNECT_ICMP: LruHashMap<IcmpFlow, u32> =
    LruHashMap::with_max_entries(CONNECT_ICMP_FLOWS, 0);

/// Keeps the ICMP error (`icmp_type`, `code`) TCP was handed for `flow`, for its connect.
#[inline(always)]
pub fn remember_icmp(flow: &IcmpFlow, icmp_type: u8, code: u8) {
    let value = ICMP_SEEN | (u32::from(icmp_type) << 8) | u32::from(code);
    let _ = CONNECT_ICMP.insert(flow, &value, 0);
}

/// The ICMP error kept for the failed connect's flow (taken out), 0 when none.
#[inline(always)]
fn take_icmp(ev: &ConnectFailureEvent) -> u32 {
    let flow = IcmpFlow {
        saddr: ev.saddr,
        daddr: ev.daddr,
        sport: ev.sport,
        dport: ev.dport,
        family: ev.family,
        _pad: 0,
    };
    // SAFETY: a copy out of the map value; a concurrent update can only replace it whole.
    let Some(value) = (unsafe { CONNECT_ICMP.get(&flow) }).copied() else {
        return 0;
    };
    let _ = CONNECT_ICMP.remove(&flow);
    value
}

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    // SAFETY: a plain read of a load-time global.
    let l = unsafe { core::ptr::read_volatile(&CONNECT_LAYOUT) };
    let old: i32 = read_field(&ctx, l.oldstate).unwrap_or(-1);
    let new: i32 = read_field(&ctx, l.newstate).unwrap_or(-1);
    if old as u32 != l.syn_sent || new as u32 != l.close {
        return 0;
    }
    if read_field::<u16>(&ctx, l.protocol) != Some(IPPROTO_TCP) {
        return 0;
    }
    emit(&ctx, &l);
    0
}

#[inline(always)]
fn emit(ctx: &TracePointContext, l: &ConnectLayout) {
    let off = offsets();
    let mut ev = ConnectFailureEvent {
        header: new_header(kind::CONNECT_FAILURE),
        socket_cookie: 0,
        saddr: [0; 16],
        daddr: [0; 16],
        sport: read_field(ctx, l.sport).unwrap_or(0),
        dport: read_field(ctx, l.dport).unwrap_or(0),
        family: read_field(ctx, l.family).unwrap_or(0),
        _pad: 0,
        error: 0,
        soft_error: 0,
        retransmits: 0,
        icmp: 0,
    };
    if let TaskContext::Agent = fill_task(&mut ev.header, &off) {
        return;
    }
    if ev.family == family::INET {
        let s: [u8; 4] = read_field(ctx, l.saddr).unwrap_or([0; 4]);
        let d: [u8; 4] = read_field(ctx, l.daddr).unwrap_or([0; 4]);
        ev.saddr[..4].copy_from_slice(&s);
        ev.daddr[..4].copy_from_slice(&d);
    } else {
        ev.saddr = read_field(ctx, l.saddr_v6).unwrap_or([0; 16]);
        ev.daddr = read_field(ctx, l.daddr_v6).unwrap_or([0; 16]);
    }
    let sk: u64 = read_field(ctx, l.skaddr).unwrap_or(0);
    ev.error = read_kernel::<i32>(sk, l.sk_err).map_or(UNKNOWN, |e| e as u32);
    ev.soft_error = read_kernel::<i32>(sk, l.sk_err_soft).map_or(UNKNOWN, |e| e as u32);
    ev.retransmits = read_kernel(sk, l.total_retrans).unwrap_or(UNKNOWN);
    ev.socket_cookie = read_kernel(sk, off.sk_cookie).unwrap_or(0);
    // A SYN_SENT socket is a full one: its cgroup is its creator's.
    socket_owner(sk, l.syn_sent as u8, &off, &mut ev.header);
    ev.icmp = take_icmp(&ev);
    let key = CountKey {
        cgroup_id: ev.header.cgroup_id,
        netns: ev.header.netns,
        kind: kind::CONNECT_FAILURE,
        a: ev.error,
        b: 0,
    };
    count_event(&key, 0);
    let fold = FoldKey {
        count: key,
        port: u32::from(ev.dport),
        _pad: 0,
    };
    if !admit(&fold, ev.header.ktime_ns) {
        return;
    }
    if EVENTS
        .output::<ConnectFailureEvent>(&ev, wakeup_flags())
        .is_err()
    {
        count_loss(kind::CONNECT_FAILURE);
    }
}
