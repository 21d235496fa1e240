//! Root e2e: Kubernetes enrichment. A cgroup named like a containerd pod scope under the real
//! cgroupfs, a fake API server that knows the pod, and a process in that cgroup that sends a
//! TCP reset and crashes: both records carry the pod's name, namespace, container and workload.

use std::{
    net::TcpListener,
    os::unix::process::CommandExt as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use probe_tests::*;

const NODE: &str = "node-e2e";
const WAIT: Duration = Duration::from_secs(15);

#[test]
fn pod_events_carry_their_pod_and_a_wasm_pods_output_is_captured() {
    if !require_root(
        "k8s_enrichment::pod_events_carry_their_pod_and_a_wasm_pods_output_is_captured",
    ) {
        return;
    }
    let pid = std::process::id();
    let uid = format!("{pid:08x}-1f2b-4c3d-9e8f-0a1b2c3d4e5f");
    let container_id = format!("{pid:064x}");
    let fake = KubeFake::start();
    fake.apply(
        "pods",
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "redis-client-7c9f-x2kq4", "namespace": "payments", "uid": uid,
                "labels": {"app": "redis-client", "pod-template-hash": "7c9f"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "redis-client-7c9f", "uid": "rs-1", "controller": true}]},
            "spec": {"nodeName": NODE, "containers": [{"name": "app", "image": "redis:7"}]},
            "status": {"podIP": "10.244.3.7", "podIPs": [{"ip": "10.244.3.7"}],
                "containerStatuses": [{"name": "app", "containerID": format!("containerd://{container_id}"),
                    "image": "redis:7", "imageID": "", "ready": true, "restartCount": 0}]}
        }),
    );
    let rel = format!(
        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{container_id}.scope",
        uid.replace('-', "_")
    );
    let (_cleanup, scope) = make_cgroup(&rel);
    let cgroup_id = {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(&scope).unwrap().ino()
    };

    // A Wasm pod (RuntimeClass wasmtime): whatever its container runs is captured.
    let wasm_uid = format!("{pid:08x}-aaaa-4c3d-9e8f-0a1b2c3d4e5f");
    let wasm_id = format!("{:064x}", u128::from(pid) << 64);
    fake.apply(
        "pods",
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "wasm-hello", "namespace": "edge", "uid": wasm_uid},
            "spec": {"nodeName": NODE, "runtimeClassName": "wasmtime",
                "containers": [{"name": "hello", "image": "ghcr.io/x/hello:wasm"}]},
            "status": {"containerStatuses": [{"name": "hello",
                "containerID": format!("containerd://{wasm_id}"),
                "image": "hello", "imageID": "", "ready": true, "restartCount": 0}]}
        }),
    );
    let (_wasm_cleanup, wasm_scope) = make_cgroup(&format!(
        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{wasm_id}.scope",
        wasm_uid.replace('-', "_")
    ));

    let kubeconfig = fake.kubeconfig(&std::env::temp_dir());
    let probe = Probe::start_with_env(
        &["--node-name", NODE, "--conntrack", "false"],
        &[("KUBECONFIG", kubeconfig.as_os_str())],
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, _, body) = http_get(probe.http_addr(), "/health/status");
        let doc: Value = serde_json::from_str(&body).unwrap();
        // The Wasm pod's cgroup also opens the write gate (hooks attached while one is there).
        if doc["kubernetes"]["state"] == "synced"
            && doc["kubernetes"]["wasm_cgroups"] == 1
            && doc["write_hooks"]["state"] == "attached"
        {
            assert_eq!(doc["kubernetes"]["pods"], 2);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the pod cache did not sync: {doc:#}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The process of the "container": in the pod's cgroup from before exec.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accept = std::thread::spawn(move || listener.accept().map(|(s, _)| s));
    let procs = scope.join("cgroup.procs");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_crasher"));
    cmd.args(["reset-then-segv", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only a write(2) of "0" into cgroup.procs between fork and exec.
    unsafe {
        cmd.pre_exec(move || std::fs::write(&procs, "0"));
    }
    let mut child = cmd.spawn().expect("crasher");
    let child_pid = child.id();
    let status = child.wait().unwrap();
    let _server_end = accept.join().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(11)
    );

    // The Wasm pod's container writes to stdout: not a runtime executable, captured by cgroup.
    let procs = wasm_scope.join("cgroup.procs");
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "echo from the wasm pod"])
        .stdout(Stdio::piped());
    // SAFETY: only a write(2) of "0" into cgroup.procs between fork and exec.
    unsafe {
        cmd.pre_exec(move || std::fs::write(&procs, "0"));
    }
    let out = cmd.output().expect("sh");
    assert_eq!(out.stdout, b"from the wasm pod\n");

    let mut probe = probe;
    probe
        .wait_for(WAIT, |r| {
            r["kind"] == "core_signal" && r["pid"] == child_pid
        })
        .expect("the crash was not reported");
    probe
        .wait_for(WAIT, |r| {
            r["kind"] == "wasm_output" && r["text"] == "from the wasm pod"
        })
        .expect("the Wasm pod's output was not captured");
    let records = probe.stop();

    let reset = records
        .iter()
        .find(|r| r["kind"] == "tcp_reset" && r["direction"] == "sent" && r["dport"] == port)
        .expect("the crasher's reset");
    let crash = records
        .iter()
        .find(|r| r["kind"] == "core_signal" && r["pid"] == child_pid && r["signal"] == 11)
        .expect("the crasher's SIGSEGV");
    for r in [reset, crash] {
        assert_eq!(r["cgroup_id"], cgroup_id, "{r:#}");
        for (key, want) in [
            ("k8s.pod.name", "redis-client-7c9f-x2kq4"),
            ("k8s.pod.uid", uid.as_str()),
            ("k8s.namespace.name", "payments"),
            ("k8s.container.name", "app"),
            ("container.id", container_id.as_str()),
            ("container.runtime", "containerd"),
            ("k8s.deployment.name", "redis-client"),
            ("k8s.replicaset.name", "redis-client-7c9f"),
            ("k8s.node.name", NODE),
        ] {
            assert_eq!(r[key], want, "{key} in {r:#}");
        }
        assert_eq!(r["k8s.pod.labels"]["app"], "redis-client", "{r:#}");
    }
    assert_eq!(crash["pid"], child_pid);
    let line = records
        .iter()
        .find(|r| r["kind"] == "wasm_output" && r["text"] == "from the wasm pod")
        .unwrap();
    assert_eq!(line["runtime"], "cgroup");
    assert_eq!(line["stream"], "stdout");
    assert_eq!(line["k8s.pod.name"], "wasm-hello");
    assert_eq!(line["k8s.namespace.name"], "edge");
    assert_eq!(line["k8s.container.name"], "hello");
    // Events of processes outside any pod carry no Kubernetes keys.
    assert!(
        records
            .iter()
            .filter(|r| r["kind"] == "tcp_reset" && r["sport"] == port)
            .all(|r| r.get("k8s.pod.name").is_none()),
        "the test's own (accepting) socket is not the pod's"
    );
}
