//! Exact event counts kept in the kernel per key (`maps::EVENT_COUNTS`), counted before the
//! event's record is written to the ring buffer: a full ring buffer loses a record's detail,
//! never its count. The agent reads the sums over CPUs and turns them into metrics per pod.

use core::mem::size_of;

/// Key of `maps::EVENT_COUNTS`. `a` and `b` depend on `kind`:
/// - [`crate::kind::TCP_RESET`]: `a` = [`crate::direction`], `b` = `enum sk_rst_reason` or
///   [`crate::REASON_NONE`];
/// - [`crate::kind::CORE_SIGNAL`]: `a` = the signal number, `b` = `si_code`;
/// - [`crate::kind::WASM_WRITE_RESULT`]: `a` = the fd (1 stdout, 2 stderr), `b` = 0;
/// - [`crate::kind::CONNECT_FAILURE`]: `a` = the socket's error, `b` = 0;
/// - [`crate::COUNTED_TCP_RETRANSMIT`] (counted only): `a` = the TCP state, `b` = 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CountKey {
    /// cgroup v2 id of the task or socket the event belongs to; 0 when none (softirq).
    pub cgroup_id: u64,
    /// Network namespace inode; 0 when unknown.
    pub netns: u32,
    /// One of [`crate::kind`], or [`crate::COUNTED_TCP_RETRANSMIT`].
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

/// Key of `maps::FOLDS`: a storm is folded per kind, detail, cgroup, network namespace and
/// service port, so a storm of one pod, or towards one port, never hides another's event.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FoldKey {
    pub count: CountKey,
    /// The lower of the two ports of a connection (the service's, where the other end is an
    /// ephemeral port).
    pub port: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<FoldKey>() == 32);

/// Value of `maps::FOLDS` (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FoldWindow {
    /// `bpf_ktime_get_boot_ns()` when the current window began (at its first record).
    pub start_ns: u64,
    /// Records sent in full in the current window.
    pub sent: u64,
    /// Records only counted (folded), since the entry was made.
    pub folded: u64,
    /// When the first record of the current window was folded (0: none yet).
    pub first_folded_ns: u64,
    /// When the last record was folded.
    pub last_folded_ns: u64,
}
const _: () = assert!(size_of::<FoldWindow>() == 40);

/// Keys `maps::FOLDS` holds; the least recently used is evicted (its window starts over).
pub const FOLD_KEYS: u32 = 8192;
