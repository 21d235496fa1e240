//! The clocks the agent reads: CLOCK_BOOTTIME (the kernel events' clock,
//! `bpf_ktime_get_boot_ns`) and CLOCK_REALTIME (wall time). A leaf: imports nothing of the crate.

/// Now on `clock`, in ns.
pub fn now_ns(clock: libc::clockid_t) -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; both clocks the agent reads always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// Now on the kernel's event clock (CLOCK_BOOTTIME).
pub fn boottime_ns() -> u64 {
    u64::try_from(now_ns(libc::CLOCK_BOOTTIME)).unwrap_or(0)
}

/// Now on the wall clock (CLOCK_REALTIME), in ns since the Unix epoch.
pub fn unix_nanos_now() -> u64 {
    u64::try_from(now_ns(libc::CLOCK_REALTIME)).unwrap_or(0)
}
