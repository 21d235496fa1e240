//! Shared body of the two TCP reset hooks: builds a `TcpResetEvent` from a tracepoint record
//! whose field offsets the loader read from tracefs, and from the socket (BTF offsets).

use aya_ebpf::{macros::map, maps::PerCpuArray, programs::TracePointContext};
use probe_common::{
    ABSENT, CountKey, EventHeader, FoldKey, HDR_CGROUP, HDR_NETNS, KernelOffsets, REASON_NONE,
    TcpResetEvent, TcpResetLayout, direction, family, kind,
};

use crate::common::{
    EVENTS, TaskContext, admit, count_event, count_loss, fill_task, new_header, offsets,
    read_field, read_kernel, skb_flow, skb_offsets, wakeup_flags,
};

/// `unowned`: whether a reset without a full socket (none, TIME_WAIT, NEW_SYN_RECV) is
/// reported from this record (false where a function hook reports those).
#[inline(always)]
pub fn emit(ctx: &TracePointContext, layout: &TcpResetLayout, direction: u16, unowned: bool) {
    let off = offsets();
    if !unowned {
        let sk: u64 = read_field(ctx, layout.skaddr).unwrap_or(0);
        let sk_state: u8 = read_kernel(sk, off.sk_state).unwrap_or(0);
        if sk == 0 || !full_sock(sk_state, &off) {
            return;
        }
    }
    let mut ev = TcpResetEvent {
        header: new_header(kind::TCP_RESET),
        socket_cookie: 0,
        saddr: [0; 16],
        daddr: [0; 16],
        sport: 0,
        dport: 0,
        family: 0,
        direction,
        state: 0,
        reason: REASON_NONE,
    };
    if let TaskContext::Agent = fill_task(&mut ev.header, &off) {
        return;
    }

    if layout.src_sockaddr != ABSENT {
        read_sockaddr(
            ctx,
            layout.src_sockaddr,
            &mut ev.saddr,
            &mut ev.sport,
            &mut ev.family,
        );
        let mut dst_family = 0;
        read_sockaddr(
            ctx,
            layout.dst_sockaddr,
            &mut ev.daddr,
            &mut ev.dport,
            &mut dst_family,
        );
    } else {
        ev.family = match read_field(ctx, layout.family) {
            Some(family) => family,
            // 5.10 records have no family: the socket's (these records always have one).
            None => {
                read_kernel(read_field(ctx, layout.skaddr).unwrap_or(0), off.sk_family).unwrap_or(0)
            }
        };
        ev.sport = read_field(ctx, layout.sport).unwrap_or(0);
        ev.dport = read_field(ctx, layout.dport).unwrap_or(0);
        if ev.family == family::INET {
            let s: [u8; 4] = read_field(ctx, layout.saddr).unwrap_or([0; 4]);
            let d: [u8; 4] = read_field(ctx, layout.daddr).unwrap_or([0; 4]);
            ev.saddr[..4].copy_from_slice(&s);
            ev.daddr[..4].copy_from_slice(&d);
        } else {
            ev.saddr = read_field(ctx, layout.saddr_v6).unwrap_or([0; 16]);
            ev.daddr = read_field(ctx, layout.daddr_v6).unwrap_or([0; 16]);
        }
    }

    if let Some(reason) = read_field::<u32>(ctx, layout.reason) {
        ev.reason = reason;
    }

    let sk: u64 = read_field(ctx, layout.skaddr).unwrap_or(0);
    if let Some(state) = read_field::<i32>(ctx, layout.state) {
        ev.state = state as u32;
    }
    if sk != 0 {
        socket_details(sk, ctx, layout, &off, &mut ev);
    } else {
        // No socket (e.g. a SYN to a closed port): the namespace of the device the packet
        // arrived on.
        let skb: u64 = read_field(ctx, layout.skbaddr).unwrap_or(0);
        let dev: u64 = read_kernel(skb, off.skb_dev).unwrap_or(0);
        let net: u64 = read_kernel(dev, off.dev_net).unwrap_or(0);
        set_netns(&mut ev.header, net, &off);
    }

    output(&ev);
}

/// Counts the reset, then writes its record unless its key's window is folding.
#[inline(always)]
fn output(ev: &TcpResetEvent) {
    let key = CountKey {
        cgroup_id: ev.header.cgroup_id,
        netns: ev.header.netns,
        kind: kind::TCP_RESET,
        a: u32::from(ev.direction),
        b: ev.reason,
    };
    count_event(&key, 0);
    let fold = FoldKey {
        count: key,
        port: u32::from(if ev.sport < ev.dport {
            ev.sport
        } else {
            ev.dport
        }),
        _pad: 0,
    };
    if !admit(&fold, ev.header.ktime_ns) {
        return;
    }
    if EVENTS.output::<TcpResetEvent>(ev, wakeup_flags()).is_err() {
        count_loss(kind::TCP_RESET);
    }
}

/// Per CPU: the segment last answered with a reset for want of a socket (see `emit_unowned`).
#[map]
pub static RESET_SKB: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// A RST this host sends in answer to the segment in `skb`, for a socket `sk` that is NULL or
/// not a full socket (TIME_WAIT, NEW_SYN_RECV): the case kernels before 6.10 do not pass to
/// `tcp:tcp_send_reset`. Built from the segment's headers, reversed so the local end comes
/// first; full sockets are left to the tracepoint.
#[inline(always)]
pub fn emit_unowned(sk: u64, skb: u64) {
    let off = offsets();
    let sk_state: u8 = read_kernel(sk, off.sk_state).unwrap_or(0);
    if sk != 0 && (sk_state >= 32 || (1u32 << sk_state) & off.mini_sock_states == 0) {
        return;
    }
    let Some(flow) = skb_flow(skb, &skb_offsets(), REASON_NONE) else {
        return;
    };
    if sk == 0 {
        // The kernel frees this segment next, as a drop: kfree_skb without a reason argument
        // skips it, as NO_SOCKET drops are skipped where reasons exist.
        if let Some(slot) = RESET_SKB.get_ptr_mut(0) {
            // SAFETY: this CPU's slot; the free follows in the same softirq on this CPU.
            unsafe { *slot = skb }
        }
    }
    let mut ev = TcpResetEvent {
        header: new_header(kind::TCP_RESET),
        socket_cookie: 0,
        saddr: flow.daddr,
        daddr: flow.saddr,
        sport: flow.dport,
        dport: flow.sport,
        family: flow.family,
        direction: direction::SENT,
        state: u32::from(sk_state),
        reason: REASON_NONE,
    };
    if let TaskContext::Agent = fill_task(&mut ev.header, &off) {
        return;
    }
    if flow.netns != 0 {
        ev.header.netns = flow.netns;
        ev.header.flags |= HDR_NETNS;
    }
    output(&ev);
}

#[inline(always)]
fn socket_details(
    sk: u64,
    ctx: &TracePointContext,
    layout: &TcpResetLayout,
    off: &KernelOffsets,
    ev: &mut TcpResetEvent,
) {
    let sk_state: u8 = read_kernel(sk, off.sk_state).unwrap_or(0);
    if layout.state == ABSENT {
        ev.state = u32::from(sk_state);
    }
    ev.socket_cookie = match read_field::<u64>(ctx, layout.sock_cookie) {
        Some(cookie) => cookie,
        None => read_kernel(sk, off.sk_cookie).unwrap_or(0),
    };
    socket_owner(sk, sk_state, off, &mut ev.header);
}

/// The network namespace of socket `sk` (in `sk_state`) and, for a full socket, its cgroup
/// (the one its creator was in), into `header`.
#[inline(always)]
pub fn socket_owner(sk: u64, sk_state: u8, off: &KernelOffsets, header: &mut EventHeader) {
    let net: u64 = read_kernel(sk, off.sk_net).unwrap_or(0);
    set_netns(header, net, off);
    if full_sock(sk_state, off) {
        let cgroup: u64 = read_kernel(sk, off.sk_cgroup).unwrap_or(0);
        let kn: u64 = read_kernel(cgroup, off.cgroup_kn).unwrap_or(0);
        if let Some(id) = read_kernel::<u64>(kn, off.kn_id) {
            header.cgroup_id = id;
            header.flags |= HDR_CGROUP;
        }
    }
}

/// Whether a socket in `sk_state` is a full socket: TIME_WAIT and NEW_SYN_RECV sockets are
/// mini sockets (no `sk_cgrp_data`); an out-of-range state is not trusted as full either.
#[inline(always)]
fn full_sock(sk_state: u8, off: &KernelOffsets) -> bool {
    sk_state < 32 && (1u32 << sk_state) & off.mini_sock_states == 0
}

#[inline(always)]
fn set_netns(header: &mut EventHeader, net: u64, off: &KernelOffsets) {
    if let Some(inum) = read_kernel::<u32>(net, off.net_inum) {
        header.netns = inum;
        header.flags |= HDR_NETNS;
    }
}

/// Reads a `struct sockaddr_in` / `sockaddr_in6` (uapi layouts) stored in the record.
#[inline(always)]
fn read_sockaddr(
    ctx: &TracePointContext,
    off: u32,
    addr: &mut [u8; 16],
    port: &mut u16,
    fam: &mut u16,
) {
    if off == ABSENT {
        return;
    }
    *fam = read_field(ctx, off).unwrap_or(0);
    let port_be: [u8; 2] = read_field(ctx, off + 2).unwrap_or([0; 2]);
    *port = u16::from_be_bytes(port_be);
    if *fam == family::INET {
        let a: [u8; 4] = read_field(ctx, off + 4).unwrap_or([0; 4]);
        addr[..4].copy_from_slice(&a);
    } else if *fam == family::INET6 {
        *addr = read_field(ctx, off + 8).unwrap_or([0; 16]);
    }
}
