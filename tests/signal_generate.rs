//! Root e2e: `signal_generate` (probe-ebpf/src/signal_generate.rs): who got which signal,
//! raised by whom, and how.

use std::{process::Command, time::Duration};

use probe_tests::*;

const CRASHER: &str = env!("CARGO_BIN_EXE_crasher");

const WAIT: Duration = Duration::from_secs(15);

fn one_signal_record(mut probe: Probe, pid: u32) -> (Value, Vec<Value>) {
    probe
        .wait_for(WAIT, |r| r["kind"] == "core_signal" && r["pid"] == pid)
        .expect("no core_signal record for the target");
    let records = probe.stop();
    let mine = core_signals_of(&records, pid);
    assert_eq!(mine.len(), 1, "exactly one record per signal: {mine:#?}");
    (mine[0].clone(), records)
}

#[test]
fn null_pointer_read_is_a_kernel_segv_of_the_child() {
    if !require_root("signal_generate::null_pointer_read_is_a_kernel_segv_of_the_child") {
        return;
    }
    let mut probe = Probe::start(&[]);
    let mut child = crasher(CRASHER, "segv", Some("0"));
    let pid = child.id();
    let status = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(11)
    );
    probe
        .wait_for(WAIT, |r| r["kind"] == "core_signal" && r["pid"] == pid)
        .expect("no core_signal record for the target");
    // Counted in the kernel, and by outcome in the agent (no pod here: empty pod labels).
    let segv = ["signal=\"SIGSEGV\"", "origin=\"kernel\"", "pod=\"\""];
    let counted = wait_metric(probe.http_addr(), "probe_core_signals_total", &segv, 1);
    assert_eq!(counted, 1, "probe_core_signals_total");
    let no_core = ["signal=\"SIGSEGV\"", "outcome=\"no_core\""];
    let outcomes = wait_metric(
        probe.http_addr(),
        "probe_core_signal_outcomes_total",
        &no_core,
        1,
    );
    assert_eq!(outcomes, 1, "probe_core_signal_outcomes_total");
    let (r, _) = one_signal_record(probe, pid);
    assert_eq!(r["signal"], 11);
    assert_eq!(r["signal_name"], "SIGSEGV");
    assert_eq!(r["origin"], "kernel");
    assert_eq!(r["si_code"], "SEGV_MAPERR");
    assert_eq!(r["pid"], pid);
    assert_eq!(r["tid"], pid);
    assert_eq!(r["comm"], "crasher");
    assert_eq!(
        r["sender_pid"], pid,
        "a fault is raised in the faulting task itself"
    );
    assert_eq!(r["sender_comm"], "crasher");
    assert_eq!(r["result"], "delivered");
    assert_eq!(r["handler"], "default");
    assert_eq!(r["rlimit_core"], 0);
    assert_eq!(r["core_dumped"], false);
    assert_eq!(r["core_suppressed_by"], "rlimit_core=0");
    assert_eq!(r["exit_code"], 11);
    assert_eq!(r["cgroup_id"], own_cgroup_id());
    assert_eq!(r["netns"], own_netns());
    let pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap();
    assert_eq!(r["core_pattern"], pattern.trim_end_matches('\n'));
}

#[test]
fn abort_is_raised_by_the_child_itself() {
    if !require_root("signal_generate::abort_is_raised_by_the_child_itself") {
        return;
    }
    let probe = Probe::start(&[]);
    let mut child = crasher(CRASHER, "abort", Some("0"));
    let pid = child.id();
    child.wait().unwrap();
    let (r, _) = one_signal_record(probe, pid);
    assert_eq!(r["signal"], 6);
    assert_eq!(r["signal_name"], "SIGABRT");
    assert_eq!(r["origin"], "user");
    assert_eq!(r["si_code"], "SI_TKILL");
    assert_eq!(r["sender_pid"], pid);
    assert_eq!(r["sender_comm"], "crasher");
    assert_eq!(r["core_dumped"], false);
    assert_eq!(r["core_suppressed_by"], "rlimit_core=0");
    assert_eq!(r["exit_code"], 6);
}

#[test]
fn kill_from_another_process_names_sender_and_target() {
    if !require_root("signal_generate::kill_from_another_process_names_sender_and_target") {
        return;
    }
    let probe = Probe::start(&[]);
    let mut victim = crasher(CRASHER, "sleep", Some("0"));
    let pid = victim.id();
    let mut killer = Command::new("/bin/sh")
        .args(["-c", &format!("kill -SEGV {pid}")])
        .spawn()
        .unwrap();
    let killer_pid = killer.id();
    assert!(killer.wait().unwrap().success());
    victim.wait().unwrap();
    let (r, _) = one_signal_record(probe, pid);
    assert_eq!(r["signal"], 11);
    assert_eq!(r["origin"], "user");
    assert_eq!(r["si_code"], "SI_USER");
    assert_eq!(r["comm"], "crasher");
    assert_eq!(r["sender_pid"], killer_pid);
    assert_eq!(r["sender_comm"], "sh");
    assert_eq!(r["core_suppressed_by"], "rlimit_core=0");
}

#[test]
fn sigterm_and_sigkill_are_not_reported() {
    if !require_root("signal_generate::sigterm_and_sigkill_are_not_reported") {
        return;
    }
    let probe = Probe::start(&[]);
    let mut terminated = crasher(CRASHER, "sleep", None);
    let mut killed = crasher(CRASHER, "sleep", None);
    terminated.kill().unwrap(); // SIGKILL
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(killed.id() as i32, libc::SIGTERM) };
    terminated.wait().unwrap();
    killed.wait().unwrap();
    // A reported crash afterwards proves the stream is flowing.
    let mut marker = crasher(CRASHER, "segv", Some("0"));
    let marker_pid = marker.id();
    marker.wait().unwrap();
    let (_, records) = one_signal_record(probe, marker_pid);
    assert_eq!(
        core_signals_of(&records, terminated.id()),
        Vec::<Value>::new()
    );
    assert_eq!(core_signals_of(&records, killed.id()), Vec::<Value>::new());
}

#[test]
fn handled_segv_is_reported_as_handled() {
    if !require_root("signal_generate::handled_segv_is_reported_as_handled") {
        return;
    }
    let probe = Probe::start(&[]);
    let mut child = crasher(CRASHER, "handle-segv", None);
    let pid = child.id();
    assert!(
        child.wait().unwrap().success(),
        "the handler lets the process survive"
    );
    let (r, _) = one_signal_record(probe, pid);
    assert_eq!(r["signal"], 11);
    assert_eq!(r["handler"], "handled");
    assert_eq!(r["core_dumped"], false);
    assert_eq!(r["core_suppressed_by"], "handled");
    assert_eq!(r["exit_code"], Value::Null);
}
