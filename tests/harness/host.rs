//! Small host helpers of the harness: commands run to success, processes by command line and
//! their exits, mounts left under a directory, free ports.

use std::{
    path::Path,
    process::{Child, Command},
    time::{Duration, Instant},
};

/// Runs `cmd` to success and returns its stdout (panics with its stderr otherwise).
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Pids of the processes whose argv `keep` accepts.
pub fn pids_with_cmdline(keep: impl Fn(&[&str]) -> bool) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let text = String::from_utf8_lossy(&raw);
            let args: Vec<&str> = text.split('\0').filter(|a| !a.is_empty()).collect();
            keep(&args)
        })
        .collect()
}

/// Lazily unmounts whatever is mounted under `dir`, innermost first.
pub fn umount_under(dir: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut under: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(dir))
        .collect();
    under.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in under {
        let _ = Command::new("umount").args(["-l", m]).status();
    }
}

/// Waits (up to `limit`, else panics) for `child` to exit; returns its status and how long
/// that took.
pub fn wait_child_exit(child: &mut Child, limit: Duration) -> (std::process::ExitStatus, Duration) {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("waiting for the probe") {
            return (status, start.elapsed());
        }
        assert!(
            start.elapsed() < limit,
            "the probe did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A loopback address with a port free at this moment (for an agent whose stderr, where it
/// names its port, is under test).
pub fn free_loopback_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}
