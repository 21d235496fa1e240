//! Root e2e: the series cap of the event metrics in a large cluster. The kube fake holds 20,000
//! pods, 150 of them on this node (more than a node runs by default, 110); each of those 150
//! (cgroups named as the kubelet's systemd driver names them) receives one reset, with
//! `--metrics-max-series 100`: the series with pod labels stay at the cap, the family's
//! overflow series counts the rest exactly, no reset is lost from the totals, and the agent's
//! peak RSS stays within 64 MiB (it caches its node's pods only: a field selector).

use std::{
    os::unix::process::CommandExt as _,
    process::{Command, Stdio},
    time::Duration,
};

use probe_tests::*;

const NODE: &str = "node-series";
const PODS: usize = 20_000;
const RESETTING: usize = 150;
const CAP: usize = 100;
const WAIT: Duration = Duration::from_secs(120);

fn uid(n: usize) -> String {
    format!("{:08x}-{n:04x}-4c3d-9e8f-0a1b2c3d4e5f", std::process::id())
}

fn container_id(n: usize) -> String {
    format!("{:032x}{n:032x}", std::process::id())
}

/// Pod n: the first `RESETTING` on this node, the others spread over 200 other nodes.
fn pod(n: usize) -> Value {
    let node = if n < RESETTING {
        NODE.to_owned()
    } else {
        format!("node-{}", n % 200)
    };
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("web-{n}"), "namespace": "load", "uid": uid(n)},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "web:1"}]},
        "status": {"containerStatuses": [{"name": "app",
            "containerID": format!("containerd://{}", container_id(n)),
            "image": "web:1", "imageID": "", "ready": true, "restartCount": 0}]}
    })
}

#[test]
fn series_stay_at_the_cap_and_the_overflow_series_counts_the_rest() {
    if !require_root(
        "metric_series::series_stay_at_the_cap_and_the_overflow_series_counts_the_rest",
    ) {
        return;
    }
    let fake = KubeFake::start();
    fake.extend("pods", (0..PODS).map(pod).collect());
    let scopes: Vec<_> = (0..RESETTING)
        .map(|n| {
            make_cgroup(&format!(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{}.scope",
                uid(n).replace('-', "_"),
                container_id(n)
            ))
        })
        .collect();
    let kubeconfig = fake.kubeconfig(&std::env::temp_dir());
    let max_series = CAP.to_string();
    let probe = Probe::start_with_env(
        &[
            "--node-name",
            NODE,
            "--conntrack",
            "false",
            "--metrics-max-series",
            &max_series,
        ],
        &[("KUBECONFIG", kubeconfig.as_os_str())],
    );
    let agent = probe.http_addr();
    wait_synced(agent, RESETTING as u64, WAIT);

    // One refused connect from a process in each of the 150 pods' cgroups: its socket
    // receives the reset (the pod's series); the reset the host's kernel sends on loopback
    // belongs to no pod.
    let ip = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    let port = closed_port(ip);
    let to = format!("127.0.0.1:{port}");
    for (_, scope) in &scopes {
        let procs = scope.join("cgroup.procs");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_crasher"));
        cmd.args(["refuse", "1", &to])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        // SAFETY: only a write(2) of "0" into cgroup.procs between fork and exec.
        unsafe {
            cmd.pre_exec(move || std::fs::write(&procs, "0"));
        }
        assert!(cmd.status().expect("crasher").success());
    }

    let received = r#"direction="received""#;
    let in_pods = |body: &str| -> Vec<String> {
        body.lines()
            .filter(|l| l.starts_with("probe_tcp_resets_total{") && l.contains(received))
            .filter(|l| l.contains(r#"namespace="load""#))
            .map(str::to_owned)
            .collect()
    };
    // The pods' resets: their own series and the overflow series. Other processes of the node
    // (the kube fake and the agent on loopback) may receive resets too: the node's own series
    // (no pod labels), never capped, never in the overflow series.
    let pods_total = || {
        metric_sum(
            agent,
            "probe_tcp_resets_total",
            &[received, r#"namespace="load""#],
        ) + metric_sum(
            agent,
            "probe_tcp_resets_total",
            &[received, r#"pod="_overflow""#],
        )
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while pods_total() != RESETTING as u64 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, _, body) = http_get(agent, "/metrics");
    let series = in_pods(&body);
    assert_eq!(
        pods_total(),
        RESETTING as u64,
        "every reset in the totals: {series:#?}"
    );
    let in_pods = series.len();
    let overflow = metric_sum(
        agent,
        "probe_tcp_resets_total",
        &[received, r#"pod="_overflow""#],
    );
    let overflowed = metric_sum(
        agent,
        "probe_metric_series_overflow_total",
        &[r#"metric="tcp_resets""#],
    );
    let cap = metric_sum(agent, "probe_metric_series", &[]);
    assert_eq!(cap, CAP as u64, "series with pod labels: {series:#?}");
    assert!(in_pods <= CAP, "{in_pods} pod series over the cap of {CAP}");
    // Each pod series holds one reset; the overflow series the pods beyond the cap.
    assert_eq!(overflow, (RESETTING - in_pods) as u64, "{series:#?}");
    assert!(overflow >= (RESETTING - CAP) as u64);
    assert_eq!(
        overflowed,
        metric_sum(agent, "probe_tcp_resets_total", &[r#"pod="_overflow""#]),
        "the overflow counter counts what the overflow series holds"
    );
    let hwm_mib = status_kib(probe.pid(), "VmHWM") / 1024;
    eprintln!(
        "metric_series: {PODS} pods in the cluster, {RESETTING} on this node, {in_pods} pod series, {overflow} resets in the overflow series, peak RSS {hwm_mib} MiB"
    );
    assert!(hwm_mib <= 64, "peak RSS {hwm_mib} MiB");
    let node_own = metric_sum(
        agent,
        "probe_tcp_resets_total",
        &[received, r#"namespace="",pod="""#],
    );
    let records = probe.stop();
    let others: Vec<_> = records
        .iter()
        .filter(|r| r["kind"] == "tcp_reset" && r["direction"] == "received")
        .filter(|r| r["sport"] != port && r["dport"] != port)
        .collect();
    eprintln!("metric_series: {node_own} resets of the node's own processes: {others:#?}");
}
