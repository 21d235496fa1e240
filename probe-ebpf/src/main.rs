//! The probe's kernel programs. One module per hook, each named after its hook; shared maps,
//! globals and helpers live in `common`.
#![no_std]
#![no_main]

mod common;
mod sched_process_exit;
mod signal_generate;
mod softirq;
mod tcp_receive_reset;
mod tcp_reset;
mod tcp_send_reset;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// GPL-compatible: `bpf_probe_read_kernel` is a GPL-only helper.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
