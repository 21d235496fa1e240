//! Exact event counts kept in the kernel per key (`maps::EVENT_COUNTS`), counted before the
//! event's record is written to the ring buffer: a full ring buffer loses a record's detail,
//! never its count. The agent reads the sums over CPUs and turns them into metrics per pod.

use core::mem::size_of;

/// Key of `maps::EVENT_COUNTS`. `a` and `b` depend on `kind`:
/// - [`crate::kind::TCP_RESET`]: `a` = [`crate::direction`], `b` = `enum sk_rst_reason` or
///   [`crate::REASON_NONE`];
/// - [`crate::kind::CORE_SIGNAL`]: `a` = the signal number, `b` = `si_code`;
/// - [`crate::kind::WASM_WRITE_RESULT`]: `a` = the fd (1 stdout, 2 stderr), `b` = 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CountKey {
    /// cgroup v2 id of the task or socket the event belongs to; 0 when none (softirq).
    pub cgroup_id: u64,
    /// Network namespace inode; 0 when unknown.
    pub netns: u32,
    /// One of [`crate::kind`].
    pub kind: u32,
    pub a: u32,
    pub b: u32,
}
const _: () = assert!(size_of::<CountKey>() == 24);

/// Value of `maps::EVENT_COUNTS` (per CPU): events of the key on that CPU, and for Wasm output
/// the bytes written.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CountValue {
    pub events: u64,
    pub bytes: u64,
}
const _: () = assert!(size_of::<CountValue>() == 16);

/// Keys the kernel map holds; the least recently counted is evicted first (its count starts
/// again from zero, which the agent recognises).
pub const COUNT_KEYS: u32 = 4096;
