//! Enrichment: turns decoded kernel events into records with wall-clock time, the node name
//! and node settings that explain them (core_pattern); Kubernetes metadata (`k8s/`), the
//! conntrack joins, drop counts, core-signal and Wasm line assembly.

pub mod conntrack;
pub mod core_signal;
pub mod drops;
pub mod k8s;
pub mod own_traffic;
pub mod trace_context;
pub mod wasm_output;

use crate::{
    decode::{Common, Decoded},
    model::{Body, Record},
};

/// Adds node-level context to events.
#[derive(Debug, Clone)]
pub struct Enricher {
    node: String,
    /// CLOCK_REALTIME - CLOCK_BOOTTIME, in ns, sampled at start.
    boot_to_wall_ns: i128,
}

impl Enricher {
    pub fn new(node: String) -> Self {
        Self {
            node,
            boot_to_wall_ns: i128::from(clock_ns(libc::CLOCK_REALTIME))
                - i128::from(clock_ns(libc::CLOCK_BOOTTIME)),
        }
    }

    #[cfg(test)]
    pub fn fixed(node: &str, boot_to_wall_ns: i128) -> Self {
        Self {
            node: node.into(),
            boot_to_wall_ns,
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Wall-clock ns of a kernel `bpf_ktime_get_boot_ns()` timestamp.
    pub fn wall_time(&self, ktime_ns: u64) -> u64 {
        u64::try_from(i128::from(ktime_ns) + self.boot_to_wall_ns).unwrap_or(0)
    }

    pub fn kernel_event(&self, mut event: Decoded) -> Record {
        if let Body::CoreSignal(c) = &mut event.body {
            c.core_pattern = read_sysctl("kernel/core_pattern");
            c.core_uses_pid = read_sysctl("kernel/core_uses_pid").map(|v| v != "0");
        }
        Record {
            time_unix_nano: self.wall_time(event.common.ktime_ns),
            kind: event.body.kind(),
            node: self.node.clone(),
            common: event.common,
            body: event.body,
            k8s: None,
            trace: None,
        }
    }

    /// A record made by the agent itself (loss records), stamped now.
    pub fn agent_record(&self, body: Body) -> Record {
        Record {
            time_unix_nano: u64::try_from(clock_ns(libc::CLOCK_REALTIME)).unwrap_or(0),
            kind: body.kind(),
            node: self.node.clone(),
            common: Common::none(),
            body,
            k8s: None,
            trace: None,
        }
    }
}

/// A sysctl's value from /proc/sys, without the trailing newline.
pub fn read_sysctl(name: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/sys/{name}"))
        .ok()
        .map(|v| v.trim_end_matches('\n').to_owned())
}

/// Now on the kernel's event clock (CLOCK_BOOTTIME), for records made in userspace.
pub fn boottime_ns() -> u64 {
    u64::try_from(clock_ns(libc::CLOCK_BOOTTIME)).unwrap_or(0)
}

fn clock_ns(clock: libc::clockid_t) -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; both clocks always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// The node name: `--node-name`/NODE_NAME, else the kernel's hostname.
pub fn default_node_name() -> String {
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uname fills the struct it is given.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return "unknown".into();
    }
    let raw: Vec<u8> = uts
        .nodename
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&raw).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_time_to_wall_clock() {
        let e = Enricher::fixed("n1", 1_700_000_000_000_000_000);
        assert_eq!(e.wall_time(5), 1_700_000_000_000_000_005);
        let live = Enricher::new("n".into());
        let now = u64::try_from(clock_ns(libc::CLOCK_REALTIME)).unwrap();
        let t = live.wall_time(u64::try_from(clock_ns(libc::CLOCK_BOOTTIME)).unwrap());
        assert!(t.abs_diff(now) < 1_000_000_000, "{t} vs {now}");
    }
}
