//! `tcp_v6_err` (fentry, else kprobe): an ICMPv6 error for a TCP flow of this host. As
//! `tcp_v4_err.rs`; here the type and code are arguments, and `data + offset` is the quoted
//! packet's TCP header.

use aya_ebpf::{
    macros::{fentry, kprobe},
    programs::{FEntryContext, ProbeContext},
};
use probe_common::{IcmpFlow, family};

use crate::{
    common::{read_kernel, skb_offsets},
    inet_sock_set_state::remember_icmp,
};

#[fentry(function = "tcp_v6_err")]
pub fn tcp_v6_err_fentry(ctx: FEntryContext) -> u32 {
    // (struct sk_buff *skb, struct inet6_skb_parm *opt, u8 type, u8 code, int offset,
    //  __be32 info)
    let _ = icmp_v6(
        ctx.arg(0),
        ctx.arg::<u64>(2) as u8,
        ctx.arg::<u64>(3) as u8,
        ctx.arg::<u64>(4) as u32,
    );
    0
}

#[kprobe(function = "tcp_v6_err")]
pub fn tcp_v6_err_kprobe(ctx: ProbeContext) -> u32 {
    if let (Some(skb), Some(t), Some(c), Some(offset)) = (
        ctx.arg::<u64>(0),
        ctx.arg::<u64>(2),
        ctx.arg::<u64>(3),
        ctx.arg::<u64>(4),
    ) {
        let _ = icmp_v6(skb, t as u8, c as u8, offset as u32);
    }
    0
}

/// `data` points at the IPv6 header of the quoted packet (one this host sent); its TCP
/// header is `offset` bytes further.
#[inline(always)]
fn icmp_v6(skb: u64, icmp_type: u8, code: u8, offset: u32) -> Option<()> {
    let o = skb_offsets();
    let data: u64 = read_kernel(skb, o.data)?;
    // Bounded: the verifier wants an offset it can reason about (an IPv6 header with
    // extension headers stays well within 1 KiB).
    if offset > 1024 {
        return None;
    }
    let saddr: [u8; 16] = read_kernel(data, 8)?;
    let daddr: [u8; 16] = read_kernel(data, 24)?;
    let ports: [u8; 4] = read_kernel(data, offset)?;
    remember_icmp(
        &IcmpFlow {
            saddr,
            daddr,
            sport: u16::from_be_bytes([ports[0], ports[1]]),
            dport: u16::from_be_bytes([ports[2], ports[3]]),
            family: family::INET6,
            _pad: 0,
        },
        icmp_type,
        code,
    );
    Some(())
}
