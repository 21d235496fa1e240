//! The event ABI shared by the kernel programs (`probe-ebpf`) and the agent (`probe-user`).
//!
//! Rules: `#[repr(C)]`, fixed-size integer fields only (no `bool`, no enums), no implicit
//! padding (every struct has a size assertion), every event starts with [`EventHeader`], kinds
//! and other enumerations are `u32`/`u16` constants that userspace decodes with `TryFrom`.
#![no_std]

use core::mem::size_of;

/// Map names, shared so the loader never spells them differently from the kernel side.
pub mod maps {
    /// LRU hash: socket address -> 1, TCP sockets whose first send was an HTTP/1.x request
    /// (or a PROXY protocol line): the only ones whose later sends are read.
    pub const HTTP_SOCKETS: &str = "HTTP_SOCKETS";
    /// BPF ring buffer carrying every event.
    pub const EVENTS: &str = "EVENTS";
    /// Array of one `u32`: 1 while the agent reads the ring buffer on a timer (records keep
    /// coming): the programs then write records without waking it (`BPF_RB_NO_WAKEUP`)
    /// until a sixteenth of the buffer waits unread; 0 when it waits to be woken.
    pub const READER_POLLING: &str = "READER_POLLING";
    /// Per-CPU `u64` counters of events lost in the kernel, indexed by [`crate::LossIndex`].
    pub const LOSSES: &str = "LOSSES";
    /// LRU hash: thread group id -> signal number, for processes a fatal core-dumping signal
    /// was generated for; the exit hook reports their exit status and removes them.
    pub const CRASH_WATCH: &str = "CRASH_WATCH";
    /// Hash: thread group id -> runtime index, the processes whose stdout/stderr is captured.
    pub const WASM_PIDS: &str = "WASM_PIDS";
    /// Hash: cgroup id -> runtime index, cgroups whose processes are captured (fed by
    /// Kubernetes enrichment for Wasm pods).
    pub const WASM_CGROUPS: &str = "WASM_CGROUPS";
    /// Array of one `u32`: how many cgroups WASM_CGROUPS holds (the write hooks look up the
    /// writer's cgroup only while it is not 0; an array read costs next to nothing).
    pub const WASM_CGROUP_COUNT: &str = "WASM_CGROUP_COUNT";
    /// LPM trie: executable basename (prefix) -> runtime index, the runtimes recognised at exec.
    pub const WASM_RUNTIMES: &str = "WASM_RUNTIMES";
    /// Hash: thread id -> fd, writes whose result the exit hook reports.
    pub const WASM_INFLIGHT: &str = "WASM_INFLIGHT";
    /// Per-CPU `u32` at index 0: 1 while the CPU serves a softirq, 0 when not (set by the
    /// softirq_entry/exit hooks, where the preempt count cannot be located), [`crate::SOFTIRQ_UNKNOWN`] until those hooks first ran there.
    pub const IN_SOFTIRQ: &str = "IN_SOFTIRQ";
    /// Per-CPU LRU hash: [`crate::DropKey`] -> [`crate::DropCount`], the in-kernel aggregation
    /// of packet drops.
    pub const DROP_FLOWS: &str = "DROP_FLOWS";
    /// Per-CPU LRU hash: [`crate::CountKey`] -> [`crate::CountValue`], exact counts of the
    /// events per kind, detail and cgroup.
    pub const EVENT_COUNTS: &str = "EVENT_COUNTS";
    /// Per-CPU LRU hash: [`crate::FoldKey`] -> [`crate::FoldWindow`], the records of a key
    /// sent in full in the current window and those only counted.
    pub const FOLDS: &str = "FOLDS";
    /// Ring buffer of [`crate::Selection`]: a process was selected for capture at exec. Each
    /// record wakes the agent at once, so it attaches the write hooks (detached while nothing
    /// is selected) before the runtime's first write.
    pub const SELECTIONS: &str = "SELECTIONS";
    /// LRU hash: [`crate::IcmpFlow`] -> `u32` (as [`crate::ConnectFailureEvent::icmp`]): the
    /// last ICMP error TCP was handed for a flow, read when its connect fails.
    pub const CONNECT_ICMP: &str = "CONNECT_ICMP";
}

/// Names of the read-only globals the loader sets before the programs are loaded.
pub mod globals {
    /// [`crate::AgentConfig`].
    pub const AGENT: &str = "AGENT";
    /// [`crate::KernelOffsets`].
    pub const KERNEL_OFFSETS: &str = "KERNEL_OFFSETS";
    /// [`crate::TcpResetLayout`] of `tcp:tcp_send_reset`.
    pub const SEND_RESET_LAYOUT: &str = "SEND_RESET_LAYOUT";
    /// `u32`: 1 when `tcp:tcp_send_reset` reports resets without a full socket too (where the
    /// kernel passes them to it, 6.10+), 0 when a function hook of `reset_sent_unowned`
    /// (`--hooks reset_sent_unowned=fentry|kprobe`) reports them instead: never twice.
    pub const SEND_RESET_UNOWNED: &str = "SEND_RESET_UNOWNED";
    /// [`crate::TcpResetLayout`] of `tcp:tcp_receive_reset`.
    pub const RECEIVE_RESET_LAYOUT: &str = "RECEIVE_RESET_LAYOUT";
    /// [`crate::ConnectLayout`] of `sock:inet_sock_set_state`.
    pub const CONNECT_LAYOUT: &str = "CONNECT_LAYOUT";
    /// [`crate::RetransmitLayout`] of `tcp:tcp_retransmit_skb`.
    pub const RETRANSMIT_LAYOUT: &str = "RETRANSMIT_LAYOUT";
    /// [`crate::TaskOffsets`].
    pub const TASK_OFFSETS: &str = "TASK_OFFSETS";
    /// [`crate::WriteLayout`] of `syscalls:sys_enter_write`.
    pub const WRITE_LAYOUT: &str = "WRITE_LAYOUT";
    /// [`crate::WriteLayout`] of `syscalls:sys_enter_writev`.
    pub const WRITEV_LAYOUT: &str = "WRITEV_LAYOUT";
    /// [`crate::SkbOffsets`].
    pub const SKB_OFFSETS: &str = "SKB_OFFSETS";
    /// [`crate::SendLayout`].
    pub const SEND_LAYOUT: &str = "SEND_LAYOUT";
    /// [`crate::RecvLayout`].
    pub const RECV_LAYOUT: &str = "RECV_LAYOUT";
    /// [`crate::PreemptLayout`].
    pub const PREEMPT_LAYOUT: &str = "PREEMPT_LAYOUT";
}

/// Value the loader puts in every CPU's `IN_SOFTIRQ` slot before attaching: until the softirq
/// hooks have run on a CPU (or if they could not be attached), the context is unknown and no
/// task is named.
pub const SOFTIRQ_UNKNOWN: u32 = 2;

/// Declares every kernel event kind once: its number (`kind::` constant), its name (loss
/// records, metrics and errors name kinds this way), its event struct, and its [`Kind`]
/// variant (decoded from the header with `TryFrom<u32>`).
macro_rules! kinds {
    ($( $(#[$doc:meta])* $konst:ident = $n:literal, $name:literal, $variant:ident($event:ty); )*) => {
        /// Event kinds, the first field after the header's timestamps (`EventHeader::kind`).
        pub mod kind {
            $( $(#[$doc])* pub const $konst: u32 = $n; )*

            /// Every kind with its name.
            pub const NAMES: [(u32, &str); [$($n),*].len()] = [$( ($konst, $name) ),*];

            /// The name of `kind`, if it is one.
            pub fn name(kind: u32) -> Option<&'static str> {
                match super::Kind::try_from(kind) {
                    Ok(k) => Some(k.name()),
                    Err(_) => None,
                }
            }
        }

        /// A kernel event kind.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Kind {
            $( $variant ),*
        }

        impl Kind {
            pub const fn number(self) -> u32 {
                match self { $( Self::$variant => $n ),* }
            }
            pub const fn name(self) -> &'static str {
                match self { $( Self::$variant => $name ),* }
            }
            /// The size of its event struct (what a record of this kind holds at least).
            pub const fn size(self) -> usize {
                match self { $( Self::$variant => core::mem::size_of::<$event>() ),* }
            }
        }

        /// An unknown kind is returned as the number it was.
        impl TryFrom<u32> for Kind {
            type Error = u32;
            fn try_from(v: u32) -> Result<Self, u32> {
                match v {
                    $( $n => Ok(Self::$variant), )*
                    other => Err(other),
                }
            }
        }
    };
}

/// The one table of kernel event kinds: each line is the kind's number (its `kind::` constant),
/// its name, its [`Kind`] variant and its event struct. `for_each_kind!(m)` hands the table to
/// macro `m`: this crate builds `kind` and [`Kind`] from it, the agent its decode dispatch, so
/// a kind is added here and nowhere else in the ABI.
#[macro_export]
macro_rules! for_each_kind {
    ($callback:ident) => {
        $callback! {
            /// A TCP reset sent or received ([`crate::TcpResetEvent`]).
            TCP_RESET = 1, "tcp_reset", TcpReset($crate::TcpResetEvent);
            /// A core-dumping signal was generated for a task ([`crate::SignalEvent`]).
            CORE_SIGNAL = 2, "core_signal", CoreSignal($crate::SignalEvent);
            /// A task that had a fatal core-dumping signal pending, or a selected Wasm runtime,
            /// exited ([`crate::ExitEvent`]).
            PROCESS_EXIT = 3, "process_exit", ProcessExit($crate::ExitEvent);
            /// A chunk of bytes a selected process passed to write/writev on fd 1 or 2
            /// ([`crate::WriteEvent`]).
            WASM_WRITE = 4, "wasm_write", WasmWrite($crate::WriteEvent);
            /// The result of that write ([`crate::WriteResultEvent`]).
            WASM_WRITE_RESULT = 5, "wasm_write_result", WasmWriteResult($crate::WriteResultEvent);
            /// TCP packets dropped by the kernel, per flow and drop reason ([`crate::PacketDropEvent`]).
            PACKET_DROP = 6, "packet_drop", PacketDrop($crate::PacketDropEvent);
            /// The head of an HTTP/1.x request sent or received on a TCP socket, or the answer to a
            /// traced one ([`crate::HttpRequestEvent`]).
            HTTP_REQUEST = 7, "http_request", HttpRequest($crate::HttpRequestEvent);
            /// An active open that ended without reaching ESTABLISHED: refused, timed out,
            /// unreachable or given up ([`crate::ConnectFailureEvent`]).
            CONNECT_FAILURE = 8, "connect_failure", ConnectFailure($crate::ConnectFailureEvent);
        }
    };
}

for_each_kind!(kinds);

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
    /// Bytes per captured chunk of a write (1..=[`WRITE_CHUNK`]); 0 disables capture.
    pub capture_bytes: u32,
    /// Signals to report: bit `n` set for signal number `n` (1..=63).
    pub signal_mask: u64,
    /// Unread ring-buffer bytes at which a submit wakes the reader (it also polls).
    pub wakeup_bytes: u32,
    /// Records per fold key, CPU and window sent in full; the rest of the window is only
    /// counted ([`crate::FoldWindow`]). 0: every record is sent.
    pub fold_first: u32,
    /// The fold window, ns.
    pub fold_window_ns: u64,
}
const _: () = assert!(size_of::<AgentConfig>() == 32);

impl AgentConfig {
    pub const DEFAULT: Self = Self {
        agent_tgid: 0,
        capture_bytes: 0,
        signal_mask: 0,
        wakeup_bytes: 0,
        fold_first: 0,
        fold_window_ns: 0,
    };
}

/// `SignalEvent::flags`: `sender_*` name the task that generated the signal.
pub const SIG_SENDER: u32 = 1 << 0;
/// `SignalEvent::flags`: `rlimit_core` is known.
pub const SIG_RLIMIT: u32 = 1 << 1;
/// `SignalEvent::flags`: `handler` is known.
pub const SIG_HANDLER: u32 = 1 << 2;
/// `SignalEvent::flags`: `dumpable` is known.
pub const SIG_DUMPABLE: u32 = 1 << 3;

/// A signal of the reported set was generated. The header describes the TARGET task.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignalEvent {
    pub header: EventHeader,
    pub sender_pid: u32,
    pub sender_tid: u32,
    pub sender_comm: [u8; TASK_COMM_LEN],
    pub signal: u32,
    /// `si_code` (SI_USER = 0, SI_TKILL = -6, SEGV_MAPERR = 1, ...).
    pub si_code: i32,
    /// `enum trace_signal_result` (delivered, ignored, already pending, ...).
    pub result: u32,
    /// `SIG_*` bits.
    pub flags: u32,
    /// The target's RLIMIT_CORE soft limit (u64::MAX = unlimited).
    pub rlimit_core: u64,
    /// The target's `sa_handler` for this signal: 0 = SIG_DFL, 1 = SIG_IGN, else a handler.
    pub handler: u64,
    /// The target's dumpable mode (`mm->flags & 3`: 0 = not dumpable).
    pub dumpable: u32,
    /// Whether the signal was sent to the whole thread group.
    pub group: u32,
}
const _: () = assert!(size_of::<SignalEvent>() == 120);

/// A watched process exited; the header describes the exiting task.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitEvent {
    pub header: EventHeader,
    /// `task->exit_code`: terminating signal in bits 0-6, 0x80 when a core was dumped.
    pub exit_code: u32,
    /// The signal the watch entry was made for.
    pub watched_signal: u32,
}
const _: () = assert!(size_of::<ExitEvent>() == 64);

/// Largest chunk of a write carried by one [`WriteEvent`].
pub const WRITE_CHUNK: usize = 4096;
/// Chunks per write at most: bytes beyond `MAX_WRITE_CHUNKS * capture_bytes` are not copied
/// and the write is flagged truncated.
pub const MAX_WRITE_CHUNKS: u32 = 16;
/// Longest executable basename the runtime matcher compares.
pub const EXE_NAME_LEN: usize = 32;
/// `WASM_PIDS` value for processes selected through their cgroup, not their executable.
pub const RUNTIME_BY_CGROUP: u32 = u32::MAX;

/// `WriteEvent::flags`: bytes beyond this chunk were not copied (over the hard cap).
pub const WRITE_TRUNCATED: u32 = 1 << 0;
/// `WriteEvent::flags`: the bytes could not be read from the writer's memory.
pub const WRITE_UNREADABLE: u32 = 1 << 1;

/// A chunk of a write to fd 1/2 by a selected process. The header's pid/tid/comm are the
/// writer (comm: the process, i.e. the thread group leader).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteEvent {
    pub header: EventHeader,
    pub fd: u32,
    /// `WRITE_*` bits.
    pub flags: u32,
    /// Bytes the write asked for (count, or the sum of the iovec lengths seen).
    pub total_len: u64,
    /// Offset of this chunk within the write.
    pub offset: u64,
    /// Valid bytes in `data`.
    pub chunk_len: u32,
    /// Index of the runtime pattern that selected the process ([`RUNTIME_BY_CGROUP`]).
    pub runtime: u32,
    pub data: [u8; WRITE_CHUNK],
}
const _: () = assert!(size_of::<WriteEvent>() == 88 + WRITE_CHUNK);

/// The return value of a captured write, and what the fd was when the write returned.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteResultEvent {
    pub header: EventHeader,
    pub fd: u32,
    /// `i_mode` of the fd's inode (file type in the S_IFMT bits); 0 when the fd is closed or
    /// unknown.
    pub file_mode: u32,
    /// Bytes written, or a negative errno.
    pub result: i64,
    /// `i_rdev` of the inode (kernel dev_t: major << 20 | minor) for device files.
    pub file_rdev: u32,
    pub _reserved: u32,
}
const _: () = assert!(size_of::<WriteResultEvent>() == 80);

mod connect;
mod counts;
mod drops;
mod http;
mod layouts;
mod retransmit;
pub use connect::*;
pub use counts::*;
pub use drops::*;
pub use http::*;
pub use layouts::*;
pub use retransmit::*;

/// A process selected for capture at exec (in [`maps::SELECTIONS`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Selection {
    /// `bpf_ktime_get_boot_ns` at the exec.
    pub ktime_ns: u64,
    pub tgid: u32,
    /// Index of the runtime pattern.
    pub runtime: u32,
}
const _: () = assert!(size_of::<Selection>() == 16);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type below is `repr(C)`, made only of integers and integer arrays, and has
    // no padding (asserted above), so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::AgentConfig {}
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::TcpResetLayout {}
    unsafe impl aya::Pod for super::EventHeader {}
    unsafe impl aya::Pod for super::TcpResetEvent {}
    unsafe impl aya::Pod for super::SignalEvent {}
    unsafe impl aya::Pod for super::ExitEvent {}
    unsafe impl aya::Pod for super::Selection {}
    unsafe impl aya::Pod for super::TaskOffsets {}
    unsafe impl aya::Pod for super::WriteEvent {}
    unsafe impl aya::Pod for super::WriteResultEvent {}
    unsafe impl aya::Pod for super::WriteLayout {}
    unsafe impl aya::Pod for super::CountKey {}
    unsafe impl aya::Pod for super::CountValue {}
    unsafe impl aya::Pod for super::FoldKey {}
    unsafe impl aya::Pod for super::FoldWindow {}
    unsafe impl aya::Pod for super::DropKey {}
    unsafe impl aya::Pod for super::DropCount {}
    unsafe impl aya::Pod for super::PacketDropEvent {}
    unsafe impl aya::Pod for super::SkbOffsets {}
    unsafe impl aya::Pod for super::HttpRequestEvent {}
    unsafe impl aya::Pod for super::SendLayout {}
    unsafe impl aya::Pod for super::RecvLayout {}
    unsafe impl aya::Pod for super::PreemptLayout {}
    unsafe impl aya::Pod for super::ConnectLayout {}
    unsafe impl aya::Pod for super::ConnectFailureEvent {}
    unsafe impl aya::Pod for super::RetransmitLayout {}
    unsafe impl aya::Pod for super::IcmpFlow {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each kind declared once: its number, name, variant and struct agree everywhere.
    #[test]
    fn every_kind_is_declared_once_and_round_trips() {
        assert_eq!(kind::NAMES.len(), 8);
        for (number, name) in kind::NAMES {
            let k = Kind::try_from(number).expect("a declared kind");
            assert_eq!((k.number(), k.name()), (number, name));
            assert_eq!(kind::name(number), Some(name));
            assert!(k.size() >= core::mem::size_of::<EventHeader>());
        }
        assert_eq!(Kind::try_from(0), Err(0));
        assert_eq!(kind::name(99), None);
        assert_eq!(Kind::TcpReset.size(), core::mem::size_of::<TcpResetEvent>());
        assert_eq!(kind::HTTP_REQUEST, Kind::HttpRequest.number());
    }
}
