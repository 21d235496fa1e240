//! Root e2e: `sched_process_exit` (probe-ebpf/src/sched_process_exit.rs): the outcome of a
//! core-dumping signal, from the exit status of its target.

use std::time::Duration;

use probe_tests::*;

const CRASHER: &str = env!("CARGO_BIN_EXE_crasher");

fn crash_and_collect(limit: &str) -> (u32, Value) {
    let mut probe = Probe::start(&[]);
    let mut child = crasher(CRASHER, "segv", Some(limit));
    let pid = child.id();
    child.wait().unwrap();
    probe
        .wait_for(Duration::from_secs(15), |r| {
            r["kind"] == "core_signal" && r["pid"] == pid
        })
        .expect("no core_signal record");
    let mine = core_signals_of(&probe.stop(), pid);
    assert_eq!(mine.len(), 1, "{mine:#?}");
    (pid, mine[0].clone())
}

#[test]
fn core_written_when_the_limit_allows_it() {
    if !require_root("sched_process_exit::core_written_when_the_limit_allows_it") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("probe-cores-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pattern = format!("{}/core.%p", dir.display());
    let guard = CorePattern::set(&pattern);
    let (pid, r) = crash_and_collect("unlimited");
    drop(guard);
    let core = dir.join(format!("core.{pid}"));
    let written = core.exists();
    let _ = std::fs::remove_dir_all(&dir);

    assert!(written, "the kernel wrote no core at {}", core.display());
    assert_eq!(r["core_dumped"], true);
    assert_eq!(r["core_suppressed_by"], Value::Null);
    assert_eq!(r["exit_code"], 11 | 0x80);
    assert_eq!(r["rlimit_core"], "unlimited");
    assert_eq!(r["core_pattern"], pattern);
    assert_eq!(r["core_uses_pid"], false);
    assert_eq!(r["dumpable"], 1);
}

#[test]
fn no_core_with_rlimit_zero() {
    if !require_root("sched_process_exit::no_core_with_rlimit_zero") {
        return;
    }
    let (_, r) = crash_and_collect("0");
    assert_eq!(r["core_dumped"], false);
    assert_eq!(r["core_suppressed_by"], "rlimit_core=0");
    assert_eq!(r["exit_code"], 11);
    assert_eq!(r["rlimit_core"], 0);
}
