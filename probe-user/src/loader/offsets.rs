//! Kernel layouts handed to the programs as globals: struct member offsets from BTF,
//! tracepoint record offsets from tracefs formats. Nothing here is hard-coded per kernel.

use probe_common::{
    ABSENT, ConnectLayout, KernelOffsets, PreemptLayout, RecvLayout, RetransmitLayout, SendLayout,
    SkbOffsets, TaskOffsets, TcpResetLayout, WriteLayout,
};

use super::{btf::Btf, tracefs::Format};

/// `RLIMIT_CORE` (uapi).
const RLIMIT_CORE: u32 = 4;

fn off(value: Option<u32>) -> u32 {
    value.unwrap_or(ABSENT)
}

/// Struct member offsets the programs need, from kernel BTF.
pub fn kernel_offsets(btf: &Btf) -> KernelOffsets {
    let mask = |names: &[&str]| -> u32 {
        names
            .iter()
            .filter_map(|n| btf.enumerator(n))
            .filter(|v| (0..32).contains(v))
            .fold(0, |m, v| m | (1 << v))
    };
    let sum = |a: Option<u32>, b: Option<u32>| a.zip(b).map(|(a, b)| a + b);
    KernelOffsets {
        sk_state: off(btf.member_offset("sock", "__sk_common.skc_state")),
        sk_net: off(btf.member_offset("sock", "__sk_common.skc_net")),
        sk_cookie: off(btf.member_offset("sock", "__sk_common.skc_cookie")),
        sk_cgroup: off(sum(
            btf.member_offset("sock", "sk_cgrp_data"),
            btf.member_offset("sock_cgroup_data", "cgroup"),
        )),
        cgroup_kn: off(btf.member_offset("cgroup", "kn")),
        kn_id: off(btf.member_offset("kernfs_node", "id")),
        net_inum: off(btf.member_offset("net", "ns.inum")),
        skb_dev: off(btf.member_offset("sk_buff", "dev")),
        dev_net: off(btf.member_offset("net_device", "nd_net.net")),
        mini_sock_states: mask(&["TCP_TIME_WAIT", "TCP_NEW_SYN_RECV"]),
        task_mm: off(btf.member_offset("task_struct", "mm")),
        sk_family: off(btf.member_offset("sock", "__sk_common.skc_family")),
    }
}

/// Why the preempt count cannot stand for the softirq hooks (a report: each candidate that
/// needs it carries it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PreemptError {
    #[error("no kernel BTF")]
    NoBtf,
    #[error("avoided by --avoid-hooks or --hooks")]
    Avoided,
    #[error("BTF has no {0}")]
    NoMember(&'static str),
    #[error(
        "neither BTF nor /proc/kallsyms locates the per-CPU variables runqueues and \
         __preempt_count (or pcpu_hot)"
    )]
    NoPerCpuVariables,
}

/// Where this CPU's preempt count lies (see [`PreemptLayout`]); Err names what is missing.
/// The per-CPU variables' offsets come from BTF's `.data..percpu` section, else (kernels
/// whose BTF has no variables, e.g. Debian's 5.10) from `symbol`: their per-CPU addresses in
/// /proc/kallsyms, which differ by as much.
pub fn preempt_layout(
    btf: &Btf,
    symbol: impl Fn(&str) -> Option<u64>,
) -> Result<PreemptLayout, PreemptError> {
    const PERCPU: &str = ".data..percpu";
    let need = |value: Option<u32>, what| value.ok_or(PreemptError::NoMember(what));
    let task_cfs_rq = need(
        btf.member_offset("task_struct", "se.cfs_rq"),
        "task_struct.se.cfs_rq (CONFIG_FAIR_GROUP_SCHED)",
    )?;
    let cfs_rq_rq = need(btf.member_offset("cfs_rq", "rq"), "cfs_rq.rq")?;
    let hot_count = btf.member_offset("pcpu_hot", "preempt_count");
    // `__preempt_count` (x86 before 6.2 and since 6.15), else `pcpu_hot.preempt_count`.
    let distance = |var: &dyn Fn(&str) -> Option<i64>| -> Option<i64> {
        let count =
            var("__preempt_count").or_else(|| Some(var("pcpu_hot")? + i64::from(hot_count?)))?;
        Some(count - var("runqueues")?)
    };
    let from_btf = |name: &str| btf.section_offset(PERCPU, name).map(i64::from);
    let from_symbols = |name: &str| symbol(name).and_then(|a| i64::try_from(a).ok());
    let rq_to_preempt_count = distance(&from_btf)
        .or_else(|| distance(&from_symbols))
        .ok_or(PreemptError::NoPerCpuVariables)?;
    Ok(PreemptLayout {
        task_cfs_rq,
        cfs_rq_rq,
        rq_to_preempt_count,
    })
}

/// [`preempt_layout`] of the running kernel (/proc/kallsyms read only if BTF falls short).
pub fn running_preempt_layout(btf: &Btf) -> Result<PreemptLayout, PreemptError> {
    let symbols = std::cell::OnceCell::new();
    preempt_layout(btf, |name| {
        let all = symbols.get_or_init(|| kallsyms(&["runqueues", "__preempt_count", "pcpu_hot"]));
        all.get(name).copied()
    })
}

/// Addresses of `names` in /proc/kallsyms (absent, or hidden as 0 by kptr_restrict: None).
pub fn kallsyms(names: &[&str]) -> std::collections::HashMap<String, u64> {
    let Ok(text) = std::fs::read_to_string("/proc/kallsyms") else {
        return Default::default();
    };
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_ascii_whitespace();
            let (addr, _, name) = (fields.next()?, fields.next()?, fields.next()?);
            let addr = u64::from_str_radix(addr, 16).ok().filter(|a| *a != 0)?;
            names.contains(&name).then(|| (name.to_owned(), addr))
        })
        .collect()
}

/// `struct msghdr` / `iov_iter` / `sock_common` members for the send hook.
pub fn send_layout(btf: &Btf) -> SendLayout {
    let m = |s: &str, path: &str| off(btf.member_offset(s, path));
    let e = |name: &str| btf.enumerator(name).and_then(|v| u32::try_from(v).ok());
    let first = |paths: &[&str]| {
        paths
            .iter()
            .map(|p| m("iov_iter", p))
            .find(|&o| o != ABSENT)
            .unwrap_or(ABSENT)
    };
    // Before 5.14 `iov_iter` has `unsigned int type` = ITER_* bit | direction (WRITE = 1 on
    // the send path; `include/linux/fs.h`), and no `ubuf`; the first byte holds both.
    let (iter_type, iter_iovec) = match m("iov_iter", "iter_type") {
        ABSENT => (
            m("iov_iter", "type"),
            e("ITER_IOVEC").map_or(ABSENT, |v| v | 1),
        ),
        at => (at, e("ITER_IOVEC").unwrap_or(ABSENT)),
    };
    let layout = SendLayout {
        msg_iter: m("msghdr", "msg_iter"),
        iter_type,
        iov_offset: m("iov_iter", "iov_offset"),
        iter_ptr: first(&["ubuf", "__iov", "iov"]),
        count: m("iov_iter", "count"),
        iter_ubuf: e("ITER_UBUF").unwrap_or(ABSENT),
        iter_iovec,
        skc_family: m("sock_common", "skc_family"),
        skc_rcv_saddr: m("sock_common", "skc_rcv_saddr"),
        skc_daddr: m("sock_common", "skc_daddr"),
        skc_num: m("sock_common", "skc_num"),
        skc_dport: m("sock_common", "skc_dport"),
        skc_v6_rcv_saddr: m("sock_common", "skc_v6_rcv_saddr"),
        skc_v6_daddr: m("sock_common", "skc_v6_daddr"),
        bytes_sent: m("tcp_sock", "bytes_sent"),
        _reserved: 0,
    };
    if iter_window_holds(&layout) {
        layout
    } else {
        SendLayout {
            msg_iter: ABSENT,
            ..layout
        }
    }
}

/// Where the receive hooks find a read's buffer and whether it is a connection's first: the
/// syscall registers (x86-64's `pt_regs`; absent elsewhere, where the tracepoint candidate then
/// reads nothing), this architecture's syscall numbers, and `sock`/`tcp_sock`/`socket` members.
pub fn recv_layout(btf: &Btf) -> RecvLayout {
    let m = |s: &str, path: &str| off(btf.member_offset(s, path));
    let nr = |n: libc::c_long| u32::try_from(n).unwrap_or(ABSENT);
    RecvLayout {
        regs_nr: m("pt_regs", "orig_ax"),
        regs_arg1: m("pt_regs", "si"),
        nr_read: nr(libc::SYS_read),
        nr_recvfrom: nr(libc::SYS_recvfrom),
        nr_readv: nr(libc::SYS_readv),
        nr_recvmsg: nr(libc::SYS_recvmsg),
        sk_protocol: m("sock", "sk_protocol"),
        bytes_received: m("tcp_sock", "bytes_received"),
        rcv_nxt: m("tcp_sock", "rcv_nxt"),
        copied_seq: m("tcp_sock", "copied_seq"),
        // The READ direction is 0: before 5.14's `iter_type` the type byte is ITER_IOVEC alone.
        iter_iovec: btf
            .enumerator("ITER_IOVEC")
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(ABSENT),
        socket_sk: m("socket", "sk"),
    }
}

/// Whether the `iov_iter` fields the send hook reads lie in the window it reads at once
/// ([`probe_common::ITER_WINDOW`]), the 8-byte ones 8-byte aligned (it reads them as words).
pub fn iter_window_holds(l: &SendLayout) -> bool {
    let words = [l.iov_offset, l.iter_ptr, l.count];
    l.iter_type != ABSENT
        && (l.iter_type as usize) < probe_common::ITER_WINDOW
        && words
            .iter()
            .all(|&o| o != ABSENT && o % 8 == 0 && o as usize + 8 <= probe_common::ITER_WINDOW)
}

/// `struct sk_buff` members for the drop hook.
pub fn skb_offsets(btf: &Btf) -> SkbOffsets {
    let m = |path: &str| off(btf.member_offset("sk_buff", path));
    SkbOffsets {
        head: m("head"),
        network_header: m("network_header"),
        protocol: m("protocol"),
        sk: m("sk"),
        no_socket_reason: btf
            .enumerator("SKB_DROP_REASON_NO_SOCKET")
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(ABSENT),
        transport_header: m("transport_header"),
        data: m("data"),
        _reserved: 0,
    }
}

/// Field offsets of the `tcp:tcp_retransmit_skb` record: the socket and its state.
pub fn retransmit_layout(format: &Format) -> RetransmitLayout {
    RetransmitLayout {
        skaddr: off(format.offset("skaddr")),
        state: off(format.offset("state")),
    }
}

/// Field offsets of a TCP reset tracepoint record.
pub fn reset_layout(format: &Format) -> TcpResetLayout {
    let f = |name: &str| off(format.offset(name));
    // Newer kernels store sockaddr_in/sockaddr_in6 (28 bytes) in saddr/daddr.
    let sockaddr = format.fields.get("saddr").is_some_and(|f| f.size == 28);
    TcpResetLayout {
        skbaddr: f("skbaddr"),
        skaddr: f("skaddr"),
        state: f("state"),
        reason: f("reason"),
        src_sockaddr: if sockaddr { f("saddr") } else { ABSENT },
        dst_sockaddr: if sockaddr { f("daddr") } else { ABSENT },
        sport: f("sport"),
        dport: f("dport"),
        family: f("family"),
        saddr: if sockaddr { ABSENT } else { f("saddr") },
        daddr: if sockaddr { ABSENT } else { f("daddr") },
        saddr_v6: f("saddr_v6"),
        daddr_v6: f("daddr_v6"),
        sock_cookie: f("sock_cookie"),
        _reserved: [0; 2],
    }
}

/// Offsets of the connect-failure hook: the `sock:inet_sock_set_state` record's fields, the
/// socket's error and retransmit members (BTF), and the two TCP states it compares, from the
/// record's own print format (a number, or an enumerator BTF resolves), else BTF.
pub fn connect_layout(format: &Format, btf: Option<&Btf>) -> ConnectLayout {
    let f = |name: &str| off(format.offset(name));
    let m = |s: &str, path: &str| off(btf.and_then(|b| b.member_offset(s, path)));
    let state = |name: &str| {
        let printed = format
            .symbols
            .get("oldstate")
            .and_then(|pairs| pairs.iter().find(|(_, printed)| printed == name))
            .and_then(|(value, _)| {
                value
                    .parse::<i64>()
                    .ok()
                    .or_else(|| btf.and_then(|b| b.enumerator(value)))
            });
        printed
            .or_else(|| btf.and_then(|b| b.enumerator(name)))
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(ABSENT)
    };
    ConnectLayout {
        skaddr: f("skaddr"),
        oldstate: f("oldstate"),
        newstate: f("newstate"),
        sport: f("sport"),
        dport: f("dport"),
        family: f("family"),
        protocol: f("protocol"),
        saddr: f("saddr"),
        daddr: f("daddr"),
        saddr_v6: f("saddr_v6"),
        daddr_v6: f("daddr_v6"),
        sk_err: m("sock", "sk_err"),
        sk_err_soft: m("sock", "sk_err_soft"),
        total_retrans: m("tcp_sock", "total_retrans"),
        syn_sent: state("TCP_SYN_SENT"),
        close: state("TCP_CLOSE"),
    }
}

/// `task_struct` and friends, for the signal and exit hooks.
pub fn task_offsets(btf: &Btf) -> TaskOffsets {
    let m = |s: &str, path: &str| off(btf.member_offset(s, path));
    // rlim[RLIMIT_CORE].rlim_cur inside signal_struct.
    let rlimit_core = btf
        .member_offset("signal_struct", "rlim")
        .zip(btf.struct_size("rlimit"))
        .zip(btf.member_offset("rlimit", "rlim_cur"))
        .map(|((base, size), cur)| base + RLIMIT_CORE * size + cur);
    let k_sigaction_size = btf.struct_size("k_sigaction");
    TaskOffsets {
        pid: m("task_struct", "pid"),
        tgid: m("task_struct", "tgid"),
        comm: m("task_struct", "comm"),
        exit_code: m("task_struct", "exit_code"),
        cgroups: m("task_struct", "cgroups"),
        css_set_dfl_cgrp: m("css_set", "dfl_cgrp"),
        nsproxy: m("task_struct", "nsproxy"),
        nsproxy_net: m("nsproxy", "net_ns"),
        signal: m("task_struct", "signal"),
        rlimit_core: off(rlimit_core),
        sighand: m("task_struct", "sighand"),
        sighand_action: if k_sigaction_size.is_some() {
            m("sighand_struct", "action")
        } else {
            ABSENT
        },
        k_sigaction_size: k_sigaction_size.unwrap_or(0),
        sa_handler: m("k_sigaction", "sa.sa_handler"),
        mm: m("task_struct", "mm"),
        mm_flags: m("mm_struct", "flags"),
        si_code: m("kernel_siginfo", "si_code"),
        result_ignored: btf
            .enumerator("TRACE_SIGNAL_IGNORED")
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(1),
        group_leader: m("task_struct", "group_leader"),
        bprm_file: m("linux_binprm", "file"),
        file_dentry: m("file", "f_path.dentry"),
        dentry_name: m("dentry", "d_name.name"),
        files: m("task_struct", "files"),
        files_fdt: m("files_struct", "fdt"),
        fdt_fd: m("fdtable", "fd"),
        file_inode: m("file", "f_inode"),
        inode_mode: m("inode", "i_mode"),
        inode_rdev: m("inode", "i_rdev"),
    }
}

/// Offsets of a `syscalls:sys_enter_write` / `sys_enter_writev` record, plus `ret` of the
/// matching `sys_exit_*` record.
pub fn write_layout(enter: &Format, exit: Option<&Format>, buf: &str, count: &str) -> WriteLayout {
    WriteLayout {
        fd: off(enter.offset("fd")),
        buf: off(enter.offset(buf)),
        count: off(enter.offset(count)),
        exit_ret: off(exit.and_then(|f| f.offset("ret"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(iter_type: u32, iov_offset: u32, iter_ptr: u32, count: u32) -> SendLayout {
        SendLayout {
            msg_iter: 16,
            iter_type,
            iov_offset,
            iter_ptr,
            count,
            ..SendLayout::ABSENT
        }
    }

    #[test]
    fn the_iter_window_holds_on_the_kernels_of_the_matrix_and_not_beyond() {
        // 5.10 (`unsigned int type`), 6.1 (`u8 iter_type`, `iov` before `count`), 6.12 on
        // (`ubuf` in the union before `count`).
        assert!(iter_window_holds(&layout(0, 8, 24, 16)));
        assert!(iter_window_holds(&layout(0, 8, 16, 24)));
        // A field beyond the window, or unaligned, or missing: not read (the hook then says
        // nothing rather than read the wrong bytes).
        assert!(!iter_window_holds(&layout(0, 8, 48, 16)));
        assert!(!iter_window_holds(&layout(0, 12, 24, 16)));
        assert!(!iter_window_holds(&layout(0, 8, ABSENT, 16)));
        assert!(!iter_window_holds(&layout(48, 8, 24, 16)));
    }

    #[test]
    fn this_kernels_send_layout_is_complete() {
        let path = std::path::Path::new("/sys/kernel/btf/vmlinux");
        let Ok(btf) = Btf::from_file(path) else {
            eprintln!("skipped: no kernel BTF at {}", path.display());
            return;
        };
        let l = send_layout(&btf);
        assert_ne!(l.msg_iter, ABSENT, "{l:?}");
        assert!(iter_window_holds(&l), "{l:?}");
        assert_ne!(l.bytes_sent, ABSENT);
        let r = recv_layout(&btf);
        for (name, o) in [
            ("regs_nr", r.regs_nr),
            ("regs_arg1", r.regs_arg1),
            ("sk_protocol", r.sk_protocol),
            ("bytes_received", r.bytes_received),
            ("rcv_nxt", r.rcv_nxt),
            ("copied_seq", r.copied_seq),
            ("iter_iovec", r.iter_iovec),
            ("socket_sk", r.socket_sk),
        ] {
            assert_ne!(o, ABSENT, "{name}: {r:?}");
        }
    }
}
