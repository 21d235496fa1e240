//! The probe's kernel programs. One module per hook, each named after its hook; shared maps,
//! globals and helpers live in `common`.
#![no_std]
#![no_main]

mod common;
mod do_writev;
mod http;
mod http2;
mod inet_sock_set_state;
mod kfree_skb;
mod ksys_write;
mod sched_process_exec;
mod sched_process_exit;
mod sched_process_fork;
mod signal_generate;
mod sock_recv_length;
mod softirq;
mod ssl_read;
mod ssl_write;
mod sys_enter_write;
mod sys_enter_writev;
mod sys_exit_write;
mod sys_exit_writev;
mod tcp_destroy_sock;
mod tcp_receive_reset;
mod tcp_reset;
mod tcp_retransmit_skb;
mod tcp_send_reset;
mod tcp_sendmsg_locked;
mod tcp_v4_err;
mod tcp_v4_send_reset;
mod tcp_v6_err;
mod tcp_v6_send_reset;
mod wasm_capture;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// GPL-compatible: `bpf_probe_read_kernel` is a GPL-only helper.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
