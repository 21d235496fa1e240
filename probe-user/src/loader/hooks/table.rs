//! The capabilities of the probe and their hooks, in order of preference (see
//! docs/kernels.md).

use super::{Attach, Candidate, Capability, Program, Requires, Switch, prog};

const SOFTIRQ_ENTRY: Program = prog("softirq_entry", Attach::RawTracepoint("softirq_entry"));
const SEND_RESET: Program = prog(
    "tcp_send_reset",
    Attach::Tracepoint("tcp", "tcp_send_reset"),
);
const KFREE_SKB: Program = prog("kfree_skb", Attach::RawTracepoint("kfree_skb"));
/// Forgets a freed socket's request state (both request hooks keep it): last in their
/// candidates, so a candidate's kind is its own hook's.
const DESTROY_SOCK: Program = prog(
    "tcp_destroy_sock",
    Attach::RawTracepoint("tcp_destroy_sock"),
);

/// Every capability, in attach order: softirq tracking before the programs that ask for it,
/// the exit hook before the signal hook that fills its watch list, write results before the
/// writes they complete.
pub const CAPABILITIES: &[Capability] = &[
    Capability {
        name: "softirq_context",
        lost: "resets and drops built in softirq cannot be told from the interrupted task: no task will be named on them",
        switch: Switch::Always,
        on_demand: false,
        candidates: &[
            Candidate {
                programs: &[],
                requires: Requires::PreemptCount,
            },
            Candidate {
                programs: &[
                    SOFTIRQ_ENTRY,
                    prog("softirq_exit", Attach::RawTracepoint("softirq_exit")),
                ],
                requires: Requires::Nothing,
            },
        ],
    },
    Capability {
        name: "process_exit",
        lost: "core signals will not say whether a core was written",
        switch: Switch::Always,
        on_demand: false,
        candidates: &[Candidate {
            programs: &[prog(
                "sched_process_exit",
                Attach::RawTracepoint("sched_process_exit"),
            )],
            requires: Requires::Nothing,
        }],
    },
    Capability {
        name: "process_fork",
        lost: "children of Wasm runtimes will not be captured",
        switch: Switch::Capture,
        on_demand: false,
        candidates: &[Candidate {
            programs: &[prog(
                "sched_process_fork",
                Attach::RawTracepoint("sched_process_fork"),
            )],
            requires: Requires::Nothing,
        }],
    },
    Capability {
        name: "process_exec",
        lost: "Wasm runtimes will not be recognised when they start",
        switch: Switch::Capture,
        on_demand: false,
        candidates: &[Candidate {
            programs: &[prog(
                "sched_process_exec",
                Attach::RawTracepoint("sched_process_exec"),
            )],
            requires: Requires::Nothing,
        }],
    },
    Capability {
        name: "core_signal",
        lost: "core-dumping signals will not be reported",
        switch: Switch::Always,
        on_demand: false,
        candidates: &[Candidate {
            programs: &[prog(
                "signal_generate",
                Attach::RawTracepoint("signal_generate"),
            )],
            requires: Requires::Nothing,
        }],
    },
    Capability {
        name: "reset_sent",
        lost: "TCP resets this node sends will not be reported",
        switch: Switch::Always,
        on_demand: false,
        candidates: &[Candidate {
            programs: &[SEND_RESET],
            requires: Requires::Nothing,
        }],
    },
    Capability {
        name: "reset_sent_unowned",
        lost: "TCP resets sent without a full socket (a SYN to a closed port, TIME_WAIT answers) will not be reported",
        switch: Switch::Always,
        on_demand: false,
        candidates: &[
            // The all-resets event (6.10+) carries the reason and is called without a socket.
            Candidate {
                programs: &[SEND_RESET],
                requires: Requires::Field("tcp", "tcp_send_reset", "reason"),
            },
            Candidate {
                programs: &[
                    prog(
                        "tcp_v4_send_reset_fentry",
                        Attach::FEntry("tcp_v4_send_reset"),
                    ),
                    prog(
                        "tcp_v6_send_reset_fentry",
                        Attach::FEntry("tcp_v6_send_reset"),
                    ),
                ],
                requires: Requires::Nothing,
            },
            Candidate {
                programs: &[
                    prog(
                        "tcp_v4_send_reset_kprobe",
                        Attach::KProbe("tcp_v4_send_reset"),
                    ),
                    prog(
                        "tcp_v6_send_reset_kprobe",
                        Attach::KProbe("tcp_v6_send_reset"),
                    ),
                ],
                requires: Requires::Nothing,
            },
        ],
    },
    Capability {
        name: "reset_reason",
        lost: "resets will carry no reason (reason: null)",
        switch: Switch::Always,
        on_demand: false,
        candidates: &[Candidate {
            programs: &[SEND_RESET],
            requires: Requires::Field("tcp", "tcp_send_reset", "reason"),
        }],
    },
    Capability {
        name: "reset_received",
        lost: "TCP resets this node receives will not be reported",
        switch: Switch::Always,
        on_demand: false,
        candidates: &[Candidate {
            programs: &[prog(
                "tcp_receive_reset",
                Attach::Tracepoint("tcp", "tcp_receive_reset"),
            )],
            requires: Requires::Nothing,
        }],
    },
    Capability {
        name: "connect_failure",
        lost: "connects that fail (timed out, unreachable, given up) will not be reported",
        switch: Switch::Always,
        on_demand: false,
        candidates: &[Candidate {
            programs: &[prog(
                "inet_sock_set_state",
                Attach::Tracepoint("sock", "inet_sock_set_state"),
            )],
            requires: Requires::Nothing,
        }],
    },
    Capability {
        name: "connect_icmp",
        lost: "a connect ended by an ICMP error will carry the errno only, not the ICMP type and code",
        switch: Switch::Always,
        on_demand: false,
        candidates: &[
            Candidate {
                programs: &[
                    prog("tcp_v4_err_fentry", Attach::FEntry("tcp_v4_err")),
                    prog("tcp_v6_err_fentry", Attach::FEntry("tcp_v6_err")),
                ],
                requires: Requires::Nothing,
            },
            Candidate {
                programs: &[
                    prog("tcp_v4_err_kprobe", Attach::KProbe("tcp_v4_err")),
                    prog("tcp_v6_err_kprobe", Attach::KProbe("tcp_v6_err")),
                ],
                requires: Requires::Nothing,
            },
        ],
    },
    Capability {
        name: "retransmits",
        lost: "TCP retransmits will not be counted (probe_tcp_retransmits_total)",
        switch: Switch::Always,
        on_demand: false,
        candidates: &[Candidate {
            programs: &[prog(
                "tcp_retransmit_skb",
                Attach::Tracepoint("tcp", "tcp_retransmit_skb"),
            )],
            requires: Requires::Nothing,
        }],
    },
    Capability {
        name: "drops",
        lost: "TCP packets the kernel drops will not be reported (no silent-drop findings)",
        switch: Switch::Always,
        on_demand: false,
        candidates: &[
            Candidate {
                programs: &[KFREE_SKB],
                requires: Requires::Nothing,
            },
            Candidate {
                programs: &[prog(
                    "kfree_skb_noreason",
                    Attach::RawTracepoint("kfree_skb"),
                )],
                requires: Requires::Nothing,
            },
        ],
    },
    Capability {
        name: "drop_reason",
        lost: "drops will carry no reason (reason: null)",
        switch: Switch::Always,
        on_demand: false,
        candidates: &[Candidate {
            programs: &[KFREE_SKB],
            requires: Requires::Nothing,
        }],
    },
    Capability {
        name: "http_request_head",
        lost: "kernel events will not join the traces of the HTTP/1.x requests on their connections",
        switch: Switch::HttpTraceContext,
        on_demand: false,
        candidates: &[
            Candidate {
                programs: &[
                    prog(
                        "tcp_sendmsg_locked",
                        Attach::RawTracepoint("tcp_sendmsg_locked"),
                    ),
                    DESTROY_SOCK,
                ],
                requires: Requires::Nothing,
            },
            Candidate {
                programs: &[
                    prog(
                        "tcp_sendmsg_locked_fentry",
                        Attach::FEntry("tcp_sendmsg_locked"),
                    ),
                    DESTROY_SOCK,
                ],
                requires: Requires::Nothing,
            },
            Candidate {
                programs: &[
                    prog(
                        "tcp_sendmsg_locked_kprobe",
                        Attach::KProbe("tcp_sendmsg_locked"),
                    ),
                    DESTROY_SOCK,
                ],
                requires: Requires::Nothing,
            },
        ],
    },
    Capability {
        name: "http_request_tls",
        lost: "kernel events will not join the traces of the HTTP/1.x requests sent over TLS (OpenSSL's libssl)",
        switch: Switch::HttpTraceContext,
        on_demand: false,
        candidates: &[Candidate {
            programs: &[
                prog("ssl_write", Attach::UProbe("SSL_write")),
                prog("ssl_write_ex", Attach::UProbe("SSL_write_ex")),
            ],
            requires: Requires::Capability("http_request_head"),
        }],
    },
    Capability {
        name: "http_request_received",
        lost: "kernel events of a server will not join the traces of the HTTP/1.x requests it serves",
        switch: Switch::HttpTraceContext,
        on_demand: false,
        candidates: &[
            // After the read, with the buffer from the syscall's registers (6.3+).
            Candidate {
                programs: &[
                    prog(
                        "sock_recv_length",
                        Attach::RawTracepoint("sock_recv_length"),
                    ),
                    DESTROY_SOCK,
                ],
                requires: Requires::Nothing,
            },
            Candidate {
                programs: &[
                    prog("inet_recvmsg_fentry", Attach::FEntry("inet_recvmsg")),
                    prog("inet6_recvmsg_fentry", Attach::FEntry("inet6_recvmsg")),
                    prog("inet_recvmsg_fexit", Attach::FExit("inet_recvmsg")),
                    prog("inet6_recvmsg_fexit", Attach::FExit("inet6_recvmsg")),
                    DESTROY_SOCK,
                ],
                requires: Requires::Nothing,
            },
            Candidate {
                programs: &[
                    prog("inet_recvmsg_kprobe", Attach::KProbe("inet_recvmsg")),
                    prog("inet6_recvmsg_kprobe", Attach::KProbe("inet6_recvmsg")),
                    prog("inet_recvmsg_kretprobe", Attach::KRetProbe("inet_recvmsg")),
                    prog(
                        "inet6_recvmsg_kretprobe",
                        Attach::KRetProbe("inet6_recvmsg"),
                    ),
                    DESTROY_SOCK,
                ],
                requires: Requires::Nothing,
            },
        ],
    },
    Capability {
        name: "http_request_tls_received",
        lost: "kernel events of a TLS server (OpenSSL's libssl) will not join the traces of the HTTP/1.x requests it serves",
        switch: Switch::HttpTraceContext,
        on_demand: false,
        candidates: &[Candidate {
            programs: &[
                prog("ssl_read", Attach::UProbe("SSL_read")),
                prog("ssl_read_ex", Attach::UProbe("SSL_read_ex")),
                prog("ssl_read_ret", Attach::URetProbe("SSL_read")),
                prog("ssl_read_ex_ret", Attach::URetProbe("SSL_read_ex")),
            ],
            requires: Requires::Capability("http_request_received"),
        }],
    },
    Capability {
        name: "write_result",
        lost: "captured Wasm output will not say how the write ended or where fd 1/2 pointed",
        switch: Switch::Capture,
        on_demand: true,
        candidates: &[
            // Function hooks first: they cost only the calls of the write path, where a
            // syscall tracepoint puts every syscall of the node on the traced-syscall path.
            Candidate {
                programs: &[
                    prog("ksys_write_fexit", Attach::FExit("ksys_write")),
                    prog("do_writev_fexit", Attach::FExit("do_writev")),
                ],
                requires: Requires::Nothing,
            },
            Candidate {
                programs: &[
                    prog("ksys_write_kretprobe", Attach::KRetProbe("ksys_write")),
                    prog("do_writev_kretprobe", Attach::KRetProbe("do_writev")),
                ],
                requires: Requires::Nothing,
            },
            Candidate {
                programs: &[
                    prog(
                        "sys_exit_write",
                        Attach::Tracepoint("syscalls", "sys_exit_write"),
                    ),
                    prog(
                        "sys_exit_writev",
                        Attach::Tracepoint("syscalls", "sys_exit_writev"),
                    ),
                ],
                requires: Requires::Nothing,
            },
        ],
    },
    Capability {
        name: "wasm_write",
        lost: "write() output of Wasm runtimes will not be captured",
        switch: Switch::Capture,
        on_demand: true,
        candidates: &[
            Candidate {
                // One program with the arguments and the result (shared with write_result).
                programs: &[prog("ksys_write_fexit", Attach::FExit("ksys_write"))],
                requires: Requires::Nothing,
            },
            Candidate {
                programs: &[prog("ksys_write_kprobe", Attach::KProbe("ksys_write"))],
                requires: Requires::Nothing,
            },
            Candidate {
                programs: &[prog(
                    "sys_enter_write",
                    Attach::Tracepoint("syscalls", "sys_enter_write"),
                )],
                requires: Requires::Nothing,
            },
        ],
    },
    Capability {
        name: "wasm_writev",
        lost: "writev() output of Wasm runtimes will not be captured",
        switch: Switch::Capture,
        on_demand: true,
        candidates: &[
            Candidate {
                programs: &[prog("do_writev_fexit", Attach::FExit("do_writev"))],
                requires: Requires::Nothing,
            },
            Candidate {
                programs: &[prog("do_writev_kprobe", Attach::KProbe("do_writev"))],
                requires: Requires::Nothing,
            },
            Candidate {
                programs: &[prog(
                    "sys_enter_writev",
                    Attach::Tracepoint("syscalls", "sys_enter_writev"),
                )],
                requires: Requires::Nothing,
            },
        ],
    },
];
