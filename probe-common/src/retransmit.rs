//! TCP retransmits (`tcp:tcp_retransmit_skb`): counted in the kernel per socket owner and TCP
//! state (`maps::EVENT_COUNTS`), never one record each: a lossy path retransmits thousands of
//! segments a second.

use core::mem::size_of;

use crate::ABSENT;

/// [`crate::CountKey::kind`] of retransmit counts: `a` = the socket's TCP state, `b` = 0. A
/// counted-only key: no event of this kind is written to the ring buffer, so it is not a
/// [`crate::kind`] (it lies past the loss slots, [`crate::LOSS_SLOTS`]).
pub const COUNTED_TCP_RETRANSMIT: u32 = 32;
const _: () = assert!(COUNTED_TCP_RETRANSMIT >= crate::LOSS_SLOTS);

/// Offsets in the `tcp:tcp_retransmit_skb` record (tracefs `format`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetransmitLayout {
    /// `const void * skaddr`.
    pub skaddr: u32,
    /// `int state`.
    pub state: u32,
}
const _: () = assert!(size_of::<RetransmitLayout>() == 8);

impl RetransmitLayout {
    pub const ABSENT: Self = Self {
        skaddr: ABSENT,
        state: ABSENT,
    };
}
