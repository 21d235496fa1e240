//! `tcp_v4_err` (fentry, else kprobe): an ICMP error for a TCP flow of this host (IPv4). Its
//! type and code are kept for the flow (`inet_sock_set_state.rs` reads them when the connect
//! fails): the socket itself keeps only an errno, which several codes share. Runs only for
//! ICMP errors, never per packet.

use aya_ebpf::{
    macros::{fentry, kprobe},
    programs::{FEntryContext, ProbeContext},
};
use probe_common::{IcmpFlow, family};

use crate::{
    common::{read_kernel, skb_offsets},
    inet_sock_set_state::remember_icmp,
};

#[fentry(function = "tcp_v4_err")]
pub fn tcp_v4_err_fentry(ctx: FEntryContext) -> u32 {
    // (struct sk_buff *skb, u32 info)
    let _ = icmp_v4(ctx.arg(0));
    0
}

#[kprobe(function = "tcp_v4_err")]
pub fn tcp_v4_err_kprobe(ctx: ProbeContext) -> u32 {
    if let Some(skb) = ctx.arg::<u64>(0) {
        let _ = icmp_v4(skb);
    }
    0
}

/// The ICMP header is at `head + transport_header`; `data` points at the IPv4 header of the
/// packet it quotes (one this host sent), then its TCP ports.
#[inline(always)]
fn icmp_v4(skb: u64) -> Option<()> {
    let o = skb_offsets();
    let head: u64 = read_kernel(skb, o.head)?;
    let transport: u16 = read_kernel(skb, o.transport_header)?;
    let data: u64 = read_kernel(skb, o.data)?;
    let icmp: [u8; 2] = read_kernel(head, u32::from(transport))?;
    let version_ihl: u8 = read_kernel(data, 0)?;
    let addrs: [u8; 8] = read_kernel(data, 12)?;
    let ports: [u8; 4] = read_kernel(data, u32::from(version_ihl & 0x0f) * 4)?;
    let mut flow = IcmpFlow {
        saddr: [0; 16],
        daddr: [0; 16],
        sport: u16::from_be_bytes([ports[0], ports[1]]),
        dport: u16::from_be_bytes([ports[2], ports[3]]),
        family: family::INET,
        _pad: 0,
    };
    flow.saddr[..4].copy_from_slice(&addrs[..4]);
    flow.daddr[..4].copy_from_slice(&addrs[4..]);
    remember_icmp(&flow, icmp[0], icmp[1]);
    Some(())
}
