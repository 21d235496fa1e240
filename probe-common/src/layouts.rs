//! Load-time layouts: field offsets of tracepoint records (from tracefs `format` files) and
//! kernel struct member offsets (from BTF) that the loader hands to the programs as read-only
//! globals. Same rules as the events: `repr(C)`, `u32` fields, sizes asserted.

use core::mem::size_of;

use crate::ABSENT;

/// Offsets in a `syscalls:sys_enter_write(v)` record: fd, buffer (or iovec array), count
/// (or iovec count).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteLayout {
    pub fd: u32,
    pub buf: u32,
    pub count: u32,
    /// `sys_exit_*`: offset of `ret`.
    pub exit_ret: u32,
}
const _: () = assert!(size_of::<WriteLayout>() == 16);

impl WriteLayout {
    pub const ABSENT: Self = Self {
        fd: ABSENT,
        buf: ABSENT,
        count: ABSENT,
        exit_ret: ABSENT,
    };
}

/// `task_struct` and related member offsets, from BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskOffsets {
    pub pid: u32,
    pub tgid: u32,
    pub comm: u32,
    pub exit_code: u32,
    /// `task_struct::cgroups` -> `css_set::dfl_cgrp`.
    pub cgroups: u32,
    pub css_set_dfl_cgrp: u32,
    /// `task_struct::nsproxy` -> `nsproxy::net_ns`.
    pub nsproxy: u32,
    pub nsproxy_net: u32,
    /// `task_struct::signal` -> `signal_struct::rlim[RLIMIT_CORE].rlim_cur`.
    pub signal: u32,
    pub rlimit_core: u32,
    /// `task_struct::sighand` -> `sighand_struct::action` (array of `k_sigaction`).
    pub sighand: u32,
    pub sighand_action: u32,
    /// `sizeof(struct k_sigaction)` and the offset of `sa.sa_handler` in it.
    pub k_sigaction_size: u32,
    pub sa_handler: u32,
    /// `task_struct::mm` -> `mm_struct::flags` (first word).
    pub mm: u32,
    pub mm_flags: u32,
    /// `kernel_siginfo::si_code`.
    pub si_code: u32,
    /// Value of `TRACE_SIGNAL_IGNORED` (`enum trace_signal_result`).
    pub result_ignored: u32,
    /// `task_struct::group_leader`.
    pub group_leader: u32,
    /// `linux_binprm::file` -> `file::f_path.dentry` -> `dentry::d_name.name`: the basename
    /// of the executable file.
    pub bprm_file: u32,
    pub file_dentry: u32,
    pub dentry_name: u32,
    /// `task_struct::files` -> `files_struct::fdt` -> `fdtable::fd` (a `struct file **`)
    /// -> `file::f_inode` -> `inode::i_mode` (u16) / `inode::i_rdev` (u32): what an fd is.
    pub files: u32,
    pub files_fdt: u32,
    pub fdt_fd: u32,
    pub file_inode: u32,
    pub inode_mode: u32,
    pub inode_rdev: u32,
}
const _: () = assert!(size_of::<TaskOffsets>() == 112);

impl TaskOffsets {
    pub const ABSENT: Self = Self {
        pid: ABSENT,
        tgid: ABSENT,
        comm: ABSENT,
        exit_code: ABSENT,
        cgroups: ABSENT,
        css_set_dfl_cgrp: ABSENT,
        nsproxy: ABSENT,
        nsproxy_net: ABSENT,
        signal: ABSENT,
        rlimit_core: ABSENT,
        sighand: ABSENT,
        sighand_action: ABSENT,
        k_sigaction_size: 0,
        sa_handler: ABSENT,
        mm: ABSENT,
        mm_flags: ABSENT,
        si_code: ABSENT,
        result_ignored: 1,
        group_leader: ABSENT,
        bprm_file: ABSENT,
        file_dentry: ABSENT,
        dentry_name: ABSENT,
        files: ABSENT,
        files_fdt: ABSENT,
        fdt_fd: ABSENT,
        file_inode: ABSENT,
        inode_mode: ABSENT,
        inode_rdev: ABSENT,
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
    /// `struct sock_common::skc_family` (u16): where a tracepoint record has no `family`.
    pub sk_family: u32,
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
        sk_family: ABSENT,
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

/// Where the kernel keeps this CPU's preempt count, from BTF (no program per softirq): the
/// current task's `se.cfs_rq->rq` is this CPU's `runqueues`, a per-CPU variable; the preempt
/// count (`__preempt_count`, or `pcpu_hot.preempt_count` on 6.2 to 6.14) lies in the same
/// per-CPU area at a distance both variables' offsets in BTF's `.data..percpu` section give.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PreemptLayout {
    /// `struct task_struct::se.cfs_rq` (a `struct cfs_rq *`); ABSENT: use the softirq hooks.
    pub task_cfs_rq: u32,
    /// `struct cfs_rq::rq` (a `struct rq *`).
    pub cfs_rq_rq: u32,
    /// Address of the preempt count minus that of `runqueues`, in the same per-CPU area.
    pub rq_to_preempt_count: i64,
}
const _: () = assert!(size_of::<PreemptLayout>() == 16);

impl PreemptLayout {
    pub const ABSENT: Self = Self {
        task_cfs_rq: ABSENT,
        cfs_rq_rq: ABSENT,
        rq_to_preempt_count: 0,
    };
}

/// Preempt count bits that say the CPU serves an interrupt: serving a softirq
/// (`SOFTIRQ_OFFSET`, not `SOFTIRQ_DISABLE_OFFSET`), a hard interrupt or an NMI
/// (`include/linux/preempt.h`, the same since 2.6; not in BTF: macros).
pub const PREEMPT_IN_INTERRUPT: u32 = 1 << 8 | 0xf << 16 | 0xf << 20;
