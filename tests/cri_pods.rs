//! Root e2e: a pod that a real node runtime runs. The test's own containerd (Debian's, CRI
//! plugin, runc, CNI bridge) gets the pod the way the kubelet would send it over the CRI
//! (cgroupfs driver: `/kubepods/besteffort/pod<uid>`), the kube fake describes the same pod
//! (name, namespace, UID, the container IDs containerd gave, the pod IP the CNI gave). Its
//! containers send and receive a reset, segfault, and run wasmtime writing to stdout: every
//! record carries the exact pod and container keys. A reset the kernel builds in softirq in
//! the pod's network namespace (no task, no socket) carries the pod, by its netns, and so does
//! a conntrack entry that expires in the pod's own table (the agent watches pods' namespaces).

use std::{
    io::Write as _,
    net::TcpListener,
    os::unix::fs::MetadataExt as _,
    path::Path,
    time::{Duration, Instant},
};

use probe_tests::{
    containerd::{BRIDGE, Containerd, GATEWAY, IMAGE},
    cri,
    redis_nat::SHORT_TIMEOUT,
    *,
};

const NODE: &str = "node-cri";
const POD: &str = "shop-api-5d8f7c-q9x2m";
const NAMESPACE: &str = "shop";
const WAIT: Duration = Duration::from_secs(60);
/// Nothing listens on it in the pod: a connection to it is answered with a reset.
const CLOSED_PORT: u16 = 47113;
const WASM_LINE: &str = "hello from a wasm container";

#[test]
fn a_containerd_pods_records_carry_its_pod_and_containers() {
    if !require_root("cri_pods::a_containerd_pods_records_carry_its_pod_and_containers") {
        return;
    }
    let mut ctd = Containerd::start("pods");
    let uid = format!("{:08x}-7d1e-4b6a-9c2f-5e8d3a1b0c4f", std::process::id());
    let sandbox_config = cri::pod_sandbox(POD, NAMESPACE, &uid, "shop-api", &ctd.dir.join("pods"));
    let cgroup_parent = sandbox_config.linux.as_ref().unwrap().cgroup_parent.clone();
    std::fs::create_dir_all(&sandbox_config.log_directory).unwrap();
    let sandbox = ctd.run_pod(&sandbox_config);
    let pod_ip = ctd.pod_ip(&sandbox);
    assert!(pod_ip.starts_with("10.244.250."), "pod IP {pod_ip:?}");
    let netns_path = ctd.pod_netns(&sandbox, &sandbox_config);
    let pod_netns = std::fs::metadata(&netns_path).unwrap().ino();

    // The peers on the host, at the pod network's gateway: one is reset by the pod, the other
    // resets the pod's connection.
    let reset_by_pod = TcpListener::bind((GATEWAY, 0)).unwrap();
    let resetting = TcpListener::bind((GATEWAY, 0)).unwrap();
    let (to_port, from_port) = (
        reset_by_pod.local_addr().unwrap().port(),
        resetting.local_addr().unwrap().port(),
    );
    let peers = std::thread::spawn(move || {
        let (first, _) = reset_by_pod.accept().unwrap();
        let (second, _) = resetting.accept().unwrap();
        let second = socket2::Socket::from(second);
        second.set_linger(Some(Duration::ZERO)).unwrap();
        drop(second);
        first
    });

    let programs = TempDir::new("cri-programs");
    std::fs::write(
        programs.0.join("hello.wat"),
        wat_writer(&[(1, format!("{WASM_LINE}\n").into_bytes())]),
    )
    .unwrap();
    let mounts = [
        cri::mount(Path::new("/usr"), "/usr"),
        cri::mount(Path::new(env!("CARGO_BIN_EXE_crasher")), "/probe/crasher"),
        cri::mount(&wasmtime_bin(), "/probe/wasmtime"),
        cri::mount(&programs.0.join("hello.wat"), "/probe/hello.wat"),
    ];
    let (to, from) = (
        format!("{GATEWAY}:{to_port}"),
        format!("{GATEWAY}:{from_port}"),
    );
    let specs = [
        ("resetter", vec!["/probe/crasher", "resets", &to, &from]),
        ("crasher", vec!["/probe/crasher", "segv"]),
        ("wasm", vec!["/probe/wasmtime", "run", "/probe/hello.wat"]),
    ];
    let ids: Vec<String> = specs
        .iter()
        .map(|(name, cmd)| {
            ctd.create(
                &sandbox,
                &sandbox_config,
                cri::container(name, IMAGE, cmd, &mounts),
            )
        })
        .collect();
    let id_of = |name: &str| ids[specs.iter().position(|(n, _)| *n == name).unwrap()].clone();

    // The API server's view of the same pod.
    let fake = KubeFake::start();
    let statuses: Vec<Value> = specs
        .iter()
        .map(|(name, _)| {
            serde_json::json!({"name": name, "containerID": format!("containerd://{}", id_of(name)),
                "image": IMAGE, "imageID": "", "ready": true, "restartCount": 0})
        })
        .collect();
    fake.apply(
        "pods",
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": POD, "namespace": NAMESPACE, "uid": uid,
                "labels": {"app": "shop-api", "pod-template-hash": "5d8f7c"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "shop-api-5d8f7c", "uid": "rs-cri", "controller": true}]},
            "spec": {"nodeName": NODE, "containers": specs.iter()
                .map(|(name, _)| serde_json::json!({"name": name, "image": IMAGE}))
                .collect::<Vec<_>>()},
            "status": {"podIP": pod_ip, "podIPs": [{"ip": pod_ip}], "containerStatuses": statuses}
        }),
    );
    let kubeconfig = fake.kubeconfig(&programs.0);
    let mut probe = Probe::start_with_env(
        &[
            "--node-name",
            NODE,
            "--conntrack",
            "false",
            "--conntrack-settings-interval",
            "500ms",
        ],
        &[("KUBECONFIG", kubeconfig.as_os_str())],
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, _, body) = http_get(probe.http_addr(), "/health/status");
        let doc: Value = serde_json::from_str(&body).unwrap();
        if doc["kubernetes"]["state"] == "synced" {
            assert_eq!(doc["kubernetes"]["pods"], 1);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the pod cache did not sync: {doc:#}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let pod_label = format!("pod {NAMESPACE}/{POD}");
    let (conntrack_port, _client, _server) =
        expire_in_the_pods_conntrack(&mut probe, &netns_path, &pod_ip, &pod_label);

    // The write hooks open at a runtime's exec; keep them open so the container's wasmtime
    // is captured from its first byte whatever the container's start costs (the cold start
    // has its own test in sched_process_exec).
    let warm = WarmRuntime::start(&probe);

    for (name, want) in [("resetter", 0), ("crasher", 128 + 11), ("wasm", 0)] {
        ctd.start_container(&id_of(name));
        let status = ctd.wait_exited(&id_of(name), WAIT);
        let output = std::fs::read_to_string(&status.log_path).unwrap_or_default();
        assert_eq!(
            status.exit_code,
            want,
            "{name}: {status:?}; its output:\n{output}\ncontainerd:\n{}",
            ctd.log()
        );
    }
    let _kept_open = peers.join().unwrap();
    // What `kubectl logs` shows: the runtime's log file of the container.
    let log = std::fs::read_to_string(Path::new(&sandbox_config.log_directory).join("wasm/0.log"))
        .unwrap();
    assert!(
        log.ends_with(&format!(" stdout F {WASM_LINE}\n")),
        "{log:?}"
    );

    // A reset built in softirq in the pod's netns: a SYN to a closed port on its loopback.
    let refused = in_netns(Path::new(&netns_path), || {
        std::net::TcpStream::connect(("127.0.0.1", CLOSED_PORT)).map(|_| ())
    });
    assert_eq!(
        refused.unwrap_err().kind(),
        std::io::ErrorKind::ConnectionRefused
    );

    let softirq_reset = |r: &Value| {
        r["kind"] == "tcp_reset"
            && r["direction"] == "sent"
            && r["sport"] == CLOSED_PORT
            && r["saddr"] == "127.0.0.1"
    };
    for (what, found) in [
        ("the softirq reset", probe.wait_for(WAIT, softirq_reset)),
        (
            "the Wasm line",
            probe.wait_for(WAIT, |r| {
                r["kind"] == "wasm_output" && r["text"] == WASM_LINE
            }),
        ),
        (
            "the crash",
            probe.wait_for(WAIT, |r| {
                r["kind"] == "core_signal"
                    && r["signal"] == 11
                    && r["container.id"] == id_of("crasher")
            }),
        ),
    ] {
        if found.is_none() {
            // What did arrive of the kinds waited for: a record without the expected keys
            // says which part (pod, container) was lost.
            let kinds = ["tcp_reset", "wasm_output", "core_signal"];
            let seen: Vec<&Value> = probe
                .seen()
                .iter()
                .filter(|r| kinds.iter().any(|k| r["kind"] == *k))
                .collect();
            panic!("{what} was not reported; records of those kinds: {seen:#?}");
        }
    }
    drop(warm);
    let records = probe.stop();

    let find = |what: &str, pred: &dyn Fn(&Value) -> bool| -> Value {
        records
            .iter()
            .find(|r| pred(r))
            .unwrap_or_else(|| panic!("no record of {what}"))
            .clone()
    };
    let sent = find("the reset sent", &|r| {
        r["kind"] == "tcp_reset"
            && r["direction"] == "sent"
            && r["dport"] == to_port
            && r["daddr"] == GATEWAY
    });
    let received = find("the reset received", &|r| {
        r["kind"] == "tcp_reset"
            && r["direction"] == "received"
            && r["dport"] == from_port
            && r["daddr"] == GATEWAY
    });
    let crash = find("the SIGSEGV", &|r| {
        r["kind"] == "core_signal" && r["signal"] == 11 && r["container.id"] == id_of("crasher")
    });
    let line = find("the Wasm line", &|r| {
        r["kind"] == "wasm_output" && r["text"] == WASM_LINE
    });
    let pod_keys = [
        ("k8s.pod.name", POD),
        ("k8s.namespace.name", NAMESPACE),
        ("k8s.pod.uid", uid.as_str()),
        ("k8s.deployment.name", "shop-api"),
        ("k8s.replicaset.name", "shop-api-5d8f7c"),
        ("k8s.node.name", NODE),
    ];
    for (r, name) in [
        (&sent, "resetter"),
        (&received, "resetter"),
        (&crash, "crasher"),
        (&line, "wasm"),
    ] {
        for (key, want) in pod_keys {
            assert_eq!(r[key], want, "{key} of {name}'s record: {r:#}");
        }
        assert_eq!(r["k8s.container.name"], name, "{r:#}");
        assert_eq!(r["container.id"], id_of(name), "{r:#}");
        assert_eq!(r["container.runtime"], "containerd", "{r:#}");
    }
    // The pod's network records carry its IP and netns.
    for r in [&sent, &received] {
        assert_eq!(r["saddr"], pod_ip.as_str(), "{r:#}");
        assert_eq!(r["netns"], pod_netns, "{r:#}");
    }
    assert_eq!(line["runtime"], "wasmtime");
    assert_eq!(line["stream"], "stdout");
    assert_eq!(crash["comm"], "crasher");

    // The pod's own conntrack table, watched because the pod exists.
    let x = find("the expiry in the pod's namespace", &|r| {
        r["kind"] == "conntrack_expiry" && r["orig_dport"] == conntrack_port
    });
    for (key, want) in [
        ("netns", Value::from(pod_netns)),
        ("netns_path", pod_label.as_str().into()),
        ("tcp_state", "ESTABLISHED".into()),
        ("orig_saddr", GATEWAY.into()),
        ("orig_daddr", pod_ip.as_str().into()),
        ("reply_saddr", pod_ip.as_str().into()),
        ("reply_sport", conntrack_port.into()),
        ("timeout_s", SHORT_TIMEOUT.into()),
    ] {
        assert_eq!(x[key], want, "{key} in {x:#}");
    }
    for (key, want) in pod_keys {
        assert_eq!(x[key], want, "{key} of the expiry: {x:#}");
    }

    // No task and no socket: the pod by its network namespace, no container.
    let r = find("the softirq reset", &softirq_reset);
    assert_eq!(r["netns"], pod_netns, "{r:#}");
    assert_eq!(r["pid"], Value::Null, "built in softirq: {r:#}");
    assert_eq!(r["cgroup_id"], Value::Null, "{r:#}");
    for (key, want) in pod_keys {
        assert_eq!(r[key], want, "{key} of the softirq reset: {r:#}");
    }
    assert_eq!(r["k8s.container.name"], Value::Null, "{r:#}");

    // Everything the test started is gone: daemon, shims, mounts, netns, bridge, cgroups.
    let dir = ctd.dir.clone();
    drop(ctd);
    let socket = dir.join("containerd.sock").display().to_string();
    let left = pids_with_cmdline(|args| args.iter().any(|a| a.contains(&socket)));
    assert!(
        left.is_empty(),
        "processes of the test's containerd left: {left:?}"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&dir.display().to_string()),
        "mounts left under {}",
        dir.display()
    );
    assert!(!dir.exists());
    assert!(
        !cgroup2_root()
            .join(cgroup_parent.trim_start_matches('/'))
            .exists()
    );
    assert!(!Path::new("/sys/class/net").join(BRIDGE).exists());
    assert!(
        std::fs::metadata(&netns_path).is_err(),
        "the pod's netns is gone"
    );
    let _ = writeln!(
        std::io::stderr(),
        "cri_pods: pod {POD} ({pod_ip}) proven on containerd"
    );
}
