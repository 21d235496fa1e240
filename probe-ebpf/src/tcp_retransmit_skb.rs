//! `tcp:tcp_retransmit_skb`: a TCP segment sent again. Counted per socket owner (cgroup,
//! network namespace) and TCP state in the kernel map, nothing else: no record, no ring
//! buffer, whatever the loss rate of a path.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use probe_common::{COUNTED_TCP_RETRANSMIT, CountKey, RetransmitLayout};

use crate::{
    common::{count_event, new_header, offsets, read_field},
    tcp_reset::socket_owner,
};

#[unsafe(no_mangle)]
static RETRANSMIT_LAYOUT: RetransmitLayout = RetransmitLayout::ABSENT;

#[tracepoint]
pub fn tcp_retransmit_skb(ctx: TracePointContext) -> u32 {
    // SAFETY: a plain read of a load-time global.
    let l = unsafe { core::ptr::read_volatile(&RETRANSMIT_LAYOUT) };
    let sk: u64 = read_field(&ctx, l.skaddr).unwrap_or(0);
    let state: i32 = read_field(&ctx, l.state).unwrap_or(-1);
    let off = offsets();
    // Timers retransmit in softirq: the owner is the socket's, never the current task's.
    let mut header = new_header(COUNTED_TCP_RETRANSMIT);
    socket_owner(sk, state as u8, &off, &mut header);
    count_event(
        &CountKey {
            cgroup_id: header.cgroup_id,
            netns: header.netns,
            kind: COUNTED_TCP_RETRANSMIT,
            a: state as u32,
            b: 0,
        },
        0,
    );
    0
}
