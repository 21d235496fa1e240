//! Root e2e: softirq context (probe-ebpf/src/softirq.rs): a reset built in softirq is never
//! blamed on the task that was interrupted, one built by a task names it. Both ways the
//! programs can tell: the kernel's preempt count located through BTF (no program; chosen
//! where it is found) and the `softirq_entry`/`softirq_exit` tracepoints (forced with
//! `--avoid-hooks preempt-count`).

use std::{
    io::Write as _,
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use probe_tests::*;

#[test]
fn softirq_resets_name_no_task_process_resets_do() {
    if !require_root("softirq::softirq_resets_name_no_task_process_resets_do") {
        return;
    }
    let probe = Probe::start(&[]);
    let hook = probe.hook("softirq_context");
    eprintln!("softirq_context on this kernel: {hook:?}");
    if hook.as_deref() != Some("preempt count (per-CPU, no program)") {
        let _ = writeln!(
            std::io::stderr(),
            "\n!!!!! softirq: unsupported: the preempt count is not located on this kernel ({hook:?}); the tracepoints are tested below !!!!!\n"
        );
    }
    resets_are_blamed_right(probe);
}

#[test]
fn softirq_tracepoints_where_the_preempt_count_is_avoided() {
    if !require_root("softirq::softirq_tracepoints_where_the_preempt_count_is_avoided") {
        return;
    }
    let probe = Probe::start(&["--avoid-hooks", "preempt-count"]);
    assert_eq!(
        probe.hook("softirq_context").as_deref(),
        Some("raw_tp softirq_entry + raw_tp softirq_exit")
    );
    resets_are_blamed_right(probe);
}

fn resets_are_blamed_right(mut probe: Probe) {
    let (tid, comm) = current_thread();

    // This thread sends the SYN; loopback delivers it in the NET_RX softirq that runs on this
    // very thread's CPU, interrupting it: the RST built there must not carry this thread.
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let port = closed_port(ip);
    let client = refused_connect(ip, port);

    // A close() with SO_LINGER {1, 0}: the reset is built by this thread, in the syscall.
    let pair = LingerPair::connect();
    let linger_port = pair.client_port;
    let _accepted = pair.reset();

    probe
        .wait_for(Duration::from_secs(10), |r| {
            r["direction"] == "received" && r["dport"] == linger_port
        })
        .expect("the linger reset was not reported");
    let records = probe.stop();

    let softirq: Vec<Value> = resets_on_port(&records, port)
        .into_iter()
        .filter(|r| r["direction"] == "sent" && r["dport"] == client)
        .collect();
    assert_eq!(softirq.len(), 1, "{softirq:#?}");
    assert_eq!(softirq[0]["pid"], Value::Null);
    assert_eq!(softirq[0]["tid"], Value::Null);
    assert_eq!(softirq[0]["comm"], Value::Null);

    let task = resets(&records, linger_port, "sent");
    assert_eq!(task.len(), 1, "{task:#?}");
    assert_eq!(task[0]["pid"], std::process::id());
    assert_eq!(task[0]["tid"], tid);
    assert_eq!(task[0]["comm"], comm);
}
