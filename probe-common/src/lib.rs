//! The event ABI shared by the kernel programs (`probe-ebpf`) and the agent (`probe-user`).
//!
//! Rules: `#[repr(C)]`, fixed-size integer fields only (no `bool`, no enums), no implicit
//! padding (every struct has a size assertion), every event starts with [`EventHeader`], kinds
//! and other enumerations are `u32`/`u16` constants that userspace decodes with `TryFrom`.
#![no_std]

use core::mem::size_of;

/// Map names, shared so the loader never spells them differently from the kernel side.
pub mod maps {
    /// BPF ring buffer carrying every event.
    pub const EVENTS: &str = "EVENTS";
    /// Per-CPU `u64` counters of events lost in the kernel, indexed by [`crate::LossIndex`].
    pub const LOSSES: &str = "LOSSES";
    /// Per-CPU `u32` at index 0: 1 while the CPU serves a softirq, 0 when not (set by the
    /// softirq_entry/exit hooks), [`crate::SOFTIRQ_UNKNOWN`] until those hooks first ran there.
    pub const IN_SOFTIRQ: &str = "IN_SOFTIRQ";
}

/// Names of the read-only globals the loader sets before the programs are loaded.
pub mod globals {
    /// [`crate::AgentConfig`].
    pub const AGENT: &str = "AGENT";
    /// [`crate::KernelOffsets`].
    pub const KERNEL_OFFSETS: &str = "KERNEL_OFFSETS";
    /// [`crate::TcpResetLayout`] of `tcp:tcp_send_reset`.
    pub const SEND_RESET_LAYOUT: &str = "SEND_RESET_LAYOUT";
    /// [`crate::TcpResetLayout`] of `tcp:tcp_receive_reset`.
    pub const RECEIVE_RESET_LAYOUT: &str = "RECEIVE_RESET_LAYOUT";
}

/// Value the loader puts in every CPU's `IN_SOFTIRQ` slot before attaching: until the softirq
/// hooks have run on a CPU (or if they could not be attached), the context is unknown and no
/// task is named.
pub const SOFTIRQ_UNKNOWN: u32 = 2;

/// Event kinds (the first field of every event).
pub mod kind {
    pub const TCP_RESET: u32 = 1;
}

/// Slots of the per-CPU loss counter map. One per event kind (index = kind).
pub type LossIndex = u32;
/// Number of slots in the loss map; larger than the highest kind.
pub const LOSS_SLOTS: u32 = 16;

/// `EventHeader::flags`: `pid`, `tid` and `comm` are the task that owns the event. Not set when
/// the hook ran in softirq context or in a kernel thread, where the current task is unrelated.
pub const HDR_TASK: u32 = 1 << 0;
/// `EventHeader::flags`: `cgroup_id` is valid.
pub const HDR_CGROUP: u32 = 1 << 1;
/// `EventHeader::flags`: `netns` is valid.
pub const HDR_NETNS: u32 = 1 << 2;

pub const TASK_COMM_LEN: usize = 16;

/// Common header of every event.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventHeader {
    /// One of [`kind`].
    pub kind: u32,
    /// `HDR_*` bits.
    pub flags: u32,
    /// `bpf_ktime_get_boot_ns()` (CLOCK_BOOTTIME) when the hook ran.
    pub ktime_ns: u64,
    /// Thread group id (the process id in the initial pid namespace).
    pub pid: u32,
    /// Thread id in the initial pid namespace.
    pub tid: u32,
    /// Network namespace inode number.
    pub netns: u32,
    pub _reserved: u32,
    /// cgroup v2 id (the cgroup directory's inode number).
    pub cgroup_id: u64,
    /// NUL-padded task name.
    pub comm: [u8; TASK_COMM_LEN],
}
const _: () = assert!(size_of::<EventHeader>() == 56);

/// `TcpResetEvent::direction`.
pub mod direction {
    pub const SENT: u16 = 1;
    pub const RECEIVED: u16 = 2;
}

/// Address families as the kernel numbers them (`AF_INET`, `AF_INET6`).
pub mod family {
    pub const INET: u16 = 2;
    pub const INET6: u16 = 10;
}

/// `TcpResetEvent::reason` when the tracepoint has no reason field.
pub const REASON_NONE: u32 = u32::MAX;

/// A TCP reset sent or received. Addresses and ports are as seen from the local socket:
/// `saddr:sport` is this host's end.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpResetEvent {
    pub header: EventHeader,
    /// Socket cookie; 0 when no socket exists or the kernel never assigned one.
    pub socket_cookie: u64,
    /// IPv4 addresses use the first 4 bytes.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Host byte order.
    pub sport: u16,
    pub dport: u16,
    /// [`family`].
    pub family: u16,
    /// [`direction`].
    pub direction: u16,
    /// Kernel TCP state number (`TCP_ESTABLISHED` = 1 ...); 0 when unknown.
    pub state: u32,
    /// `enum sk_rst_reason` value, or [`REASON_NONE`].
    pub reason: u32,
}
const _: () = assert!(size_of::<TcpResetEvent>() == 112);

/// Offset value meaning "this field does not exist on the running kernel".
pub const ABSENT: u32 = u32::MAX;

/// Agent-wide settings for the kernel programs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentConfig {
    /// The agent's own thread group id: its events are dropped in the kernel.
    pub agent_tgid: u32,
    pub _reserved: u32,
}
const _: () = assert!(size_of::<AgentConfig>() == 8);

impl AgentConfig {
    pub const DEFAULT: Self = Self {
        agent_tgid: 0,
        _reserved: 0,
    };
}

/// Kernel struct member offsets, resolved by the loader from /sys/kernel/btf/vmlinux. Each is a
/// byte offset or [`ABSENT`]; the programs skip what is absent.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `struct sock_common::skc_state` (u8).
    pub sk_state: u32,
    /// `struct sock_common::skc_net` (a `struct net *`).
    pub sk_net: u32,
    /// `struct sock_common::skc_cookie` (u64).
    pub sk_cookie: u32,
    /// `struct sock::sk_cgrp_data.cgroup` (a `struct cgroup *`).
    pub sk_cgroup: u32,
    /// `struct cgroup::kn` (a `struct kernfs_node *`).
    pub cgroup_kn: u32,
    /// `struct kernfs_node::id` (u64).
    pub kn_id: u32,
    /// `struct net::ns.inum` (u32).
    pub net_inum: u32,
    /// `struct sk_buff::dev` (a `struct net_device *`).
    pub skb_dev: u32,
    /// `struct net_device::nd_net.net` (a `struct net *`).
    pub dev_net: u32,
    /// Bit mask of TCP states whose socket is not a full `struct sock` (TIME_WAIT,
    /// NEW_SYN_RECV): `1 << state`.
    pub mini_sock_states: u32,
    /// `struct task_struct::mm`: NULL for kernel threads.
    pub task_mm: u32,
    pub _reserved: u32,
}
const _: () = assert!(size_of::<KernelOffsets>() == 48);

impl KernelOffsets {
    pub const ABSENT: Self = Self {
        sk_state: ABSENT,
        sk_net: ABSENT,
        sk_cookie: ABSENT,
        sk_cgroup: ABSENT,
        cgroup_kn: ABSENT,
        kn_id: ABSENT,
        net_inum: ABSENT,
        skb_dev: ABSENT,
        dev_net: ABSENT,
        mini_sock_states: 0,
        task_mm: ABSENT,
        _reserved: 0,
    };
}

/// Field offsets of a TCP reset tracepoint record, read by the loader from the tracepoint's
/// tracefs `format` file. Two layouts exist: newer kernels store the endpoints as
/// `struct sockaddr_in`/`sockaddr_in6` (`src_sockaddr`/`dst_sockaddr`), older ones as split
/// `sport`/`dport`/`family`/`saddr`/`daddr`/`saddr_v6`/`daddr_v6` fields.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpResetLayout {
    pub skbaddr: u32,
    pub skaddr: u32,
    pub state: u32,
    pub reason: u32,
    pub src_sockaddr: u32,
    pub dst_sockaddr: u32,
    pub sport: u32,
    pub dport: u32,
    pub family: u32,
    pub saddr: u32,
    pub daddr: u32,
    pub saddr_v6: u32,
    pub daddr_v6: u32,
    pub sock_cookie: u32,
    pub _reserved: [u32; 2],
}
const _: () = assert!(size_of::<TcpResetLayout>() == 64);

impl TcpResetLayout {
    pub const ABSENT: Self = Self {
        skbaddr: ABSENT,
        skaddr: ABSENT,
        state: ABSENT,
        reason: ABSENT,
        src_sockaddr: ABSENT,
        dst_sockaddr: ABSENT,
        sport: ABSENT,
        dport: ABSENT,
        family: ABSENT,
        saddr: ABSENT,
        daddr: ABSENT,
        saddr_v6: ABSENT,
        daddr_v6: ABSENT,
        sock_cookie: ABSENT,
        _reserved: [0; 2],
    };
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type below is `repr(C)`, made only of integers and integer arrays, and has
    // no padding (asserted above), so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::AgentConfig {}
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::TcpResetLayout {}
    unsafe impl aya::Pod for super::EventHeader {}
    unsafe impl aya::Pod for super::TcpResetEvent {}
}
