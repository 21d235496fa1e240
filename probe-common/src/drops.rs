//! Packet drops (`kfree_skb` with its drop reason), aggregated in the kernel per flow and
//! reason so a drop storm costs one ring-buffer record per flow and second, not one per packet.

use core::mem::size_of;

use crate::EventHeader;

/// The flow (as the dropped packet carried it: `saddr:sport` is the packet's source) and the
/// drop reason. Key of `maps::DROP_FLOWS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DropKey {
    /// IPv4 addresses use the first 4 bytes.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Host byte order.
    pub sport: u16,
    pub dport: u16,
    /// [`crate::family`].
    pub family: u16,
    pub _pad: u16,
    /// `enum skb_drop_reason` value.
    pub reason: u32,
    /// Network namespace inode of the device (or socket) the packet belonged to; 0 if unknown.
    pub netns: u32,
}
const _: () = assert!(size_of::<DropKey>() == 48);

/// Value of `maps::DROP_FLOWS` (per CPU): packets dropped so far on that CPU, and when a
/// record last went out from it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropCount {
    /// Drops of this key on this CPU since the entry was created.
    pub total: u64,
    /// `bpf_ktime_get_boot_ns()` of the last [`PacketDropEvent`] for this key.
    pub reported_ns: u64,
}
const _: () = assert!(size_of::<DropCount>() == 16);

/// A key has drops: sent at its first drop on a CPU and then at most once per
/// [`DROP_REPORT_INTERVAL_NS`] per CPU while drops continue. `total` is that CPU's count; the
/// agent reads the sum over CPUs from the map and turns totals into per-record counts (and
/// reads the map again for the tail after the last record).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketDropEvent {
    pub header: EventHeader,
    pub key: DropKey,
    /// This CPU's `DropCount::total` when the record was made.
    pub total: u64,
}
const _: () = assert!(size_of::<PacketDropEvent>() == 112);

/// Minimum time between two records of the same drop key.
pub const DROP_REPORT_INTERVAL_NS: u64 = 1_000_000_000;
/// `packet_drop` records per CPU and second at most (a flood of distinct flows); records over
/// the budget are counted as lost.
pub const DROP_RECORDS_PER_SEC: u64 = 2000;

/// `struct sk_buff` members the drop hook reads, from BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SkbOffsets {
    /// `head` (unsigned char *).
    pub head: u32,
    /// `network_header` (u16 offset from head).
    pub network_header: u32,
    /// `protocol` (__be16 ethertype).
    pub protocol: u32,
    /// `sk` (struct sock *), for the namespace when the skb has no device.
    pub sk: u32,
    /// `SKB_DROP_REASON_NO_SOCKET` on this kernel: not counted, because the kernel answers
    /// such packets with a reset, which `tcp_send_reset` reports with that reason.
    pub no_socket_reason: u32,
    /// `transport_header` (u16 offset from head): the ICMP header where an ICMP error is
    /// handed to TCP.
    pub transport_header: u32,
    /// `data` (unsigned char *): there, the header of the packet the ICMP error quotes.
    pub data: u32,
    pub _reserved: u32,
}
const _: () = assert!(size_of::<SkbOffsets>() == 32);

impl SkbOffsets {
    pub const ABSENT: Self = Self {
        head: crate::ABSENT,
        network_header: crate::ABSENT,
        protocol: crate::ABSENT,
        sk: crate::ABSENT,
        no_socket_reason: crate::ABSENT,
        transport_header: crate::ABSENT,
        data: crate::ABSENT,
        _reserved: 0,
    };
}
