//! Processes that crash on purpose, and the core dump settings around them.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use crate::Value;

/// Runs the `crasher` helper binary of this package (bin/crasher.rs); tests pass its path,
/// `env!("CARGO_BIN_EXE_crasher")`, which cargo defines for test targets only.
pub fn crasher(bin: &str, mode: &str, rlimit_core: Option<&str>) -> std::process::Child {
    let mut cmd = Command::new(bin);
    cmd.arg(mode)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(limit) = rlimit_core {
        cmd.env("CRASHER_RLIMIT_CORE", limit);
    }
    let mut child = cmd.spawn().expect("spawning crasher");
    if mode == "sleep" {
        // Wait until its signal dispositions are in place.
        let mut line = String::new();
        let stdout = child.stdout.as_mut().expect("crasher stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("crasher ready line");
        assert_eq!(line, "ready\n");
    }
    child
}

/// `core_signal` records whose target pid is `pid`.
pub fn core_signals_of(records: &[Value], pid: u32) -> Vec<Value> {
    records
        .iter()
        .filter(|r| r["kind"] == "core_signal" && r["pid"] == pid)
        .cloned()
        .collect()
}

/// Sets kernel.core_pattern (and core_uses_pid=0) and restores both when dropped.
pub struct CorePattern {
    old_pattern: String,
    old_uses_pid: String,
}

impl CorePattern {
    const PATTERN: &str = "/proc/sys/kernel/core_pattern";
    const USES_PID: &str = "/proc/sys/kernel/core_uses_pid";

    pub fn set(pattern: &str) -> Self {
        let guard = Self {
            old_pattern: std::fs::read_to_string(Self::PATTERN).expect("core_pattern"),
            old_uses_pid: std::fs::read_to_string(Self::USES_PID).expect("core_uses_pid"),
        };
        std::fs::write(Self::PATTERN, pattern).expect("setting core_pattern");
        std::fs::write(Self::USES_PID, "0").expect("setting core_uses_pid");
        guard
    }
}

impl Drop for CorePattern {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATTERN, self.old_pattern.trim_end_matches('\n'));
        let _ = std::fs::write(Self::USES_PID, self.old_uses_pid.trim_end_matches('\n'));
    }
}

/// What the agent's last WARN line says an output lost that no loss record written to it
/// carries (its final report did not get out before the shutdown deadline); 0 without one.
pub fn unreported_losses(log: &str, output: &str) -> u64 {
    let prefix = format!("output {output}: ");
    log.lines()
        .filter_map(|l| {
            let (_, rest) = l.split_once(&prefix)?;
            rest.split_once(" lost events are carried by no loss record")?
                .0
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// A field of /proc/PID/status in KiB (`VmRSS`, `VmHWM`: the peak resident set).
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}
