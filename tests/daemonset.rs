//! The manifests, run for real: `kubectl kustomize` of deploy/ (privileged) and of
//! deploy/least-privilege renders the DaemonSet; its pod template runs in podman (runc) from the
//! image `cargo xtask image` builds (PROBE_IMAGE, loaded from PROBE_IMAGE_ARCHIVE), with the
//! manifest's securityContext, hostPID/hostNetwork, hostPath and ConfigMap volumes, env and
//! memory limit (harness/podman.rs). Inside that container the agent gets ready, the HTTP probes
//! the manifest declares answer at the node's address and the declared port, a reset and a
//! core signal made by host processes come out as JSON records with their host pid and netns,
//! and the container stops within its grace period with exit 0.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::{Command, Stdio},
    sync::{Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

use probe_tests::*;

const CRASHER: &str = env!("CARGO_BIN_EXE_crasher");
const NODE: &str = "podman-node";
/// Both tests use the manifest's fixed port: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
const TIMESTAMP_SYSCTL: &str = "/proc/sys/net/netfilter/nf_conntrack_timestamp";

#[test]
fn privileged_daemonset_runs_in_podman() {
    run_daemonset("daemonset::privileged_daemonset_runs_in_podman", "");
}

#[test]
fn least_privilege_daemonset_runs_in_podman() {
    run_daemonset(
        "daemonset::least_privilege_daemonset_runs_in_podman",
        "least-privilege",
    );
}

/// A loud line and false when a peer of this test is missing.
fn require(test: &str, what: &str, ok: bool) -> bool {
    if !ok {
        // Past libtest's capture: the summary table counts it (S).
        let _ = writeln!(std::io::stderr(), "\n!!!!! {test}: skipped: {what} !!!!!\n");
    }
    ok
}

fn kustomize(overlay: &str) -> Vec<Value> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(overlay);
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(&dir)
        .output()
        .expect("kubectl");
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_norway::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("a YAML document"))
        .collect()
}

/// The address the kubelet probes a hostNetwork pod at: the node's (source address of its
/// default route), loopback where the node has none (a VM without network).
fn node_address() -> IpAddr {
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("192.0.2.1:9").map(|()| s))
        .and_then(|s| s.local_addr())
        .map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |a| a.ip())
}

/// Puts back what running the pod changed on the host.
struct HostState {
    timestamps: Option<String>,
    created: Vec<PathBuf>,
}

impl Drop for HostState {
    fn drop(&mut self) {
        if let Some(v) = &self.timestamps {
            let _ = std::fs::write(TIMESTAMP_SYSCTL, v);
        }
        for dir in &self.created {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn run_daemonset(test: &str, overlay: &str) {
    if !require_root(test) {
        return;
    }
    let (Ok(image), Ok(archive)) = (
        std::env::var("PROBE_IMAGE"),
        std::env::var("PROBE_IMAGE_ARCHIVE"),
    ) else {
        require(
            test,
            "no image: run it with `cargo xtask test` (builds the image)",
            false,
        );
        return;
    };
    let have_kubectl = Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !require(test, "kubectl is not installed", have_kubectl)
        || !require(test, "podman is not installed", have("podman"))
    {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let docs = kustomize(overlay);
    let ds = docs
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("a DaemonSet");
    let name = if overlay.is_empty() { "base" } else { overlay };
    let podman = Podman::new(name);
    podman.run(&["load", "--quiet", "--input", &archive]);
    let pod = pod_run(ds, &docs, &podman.dir, NODE, &format!("node-probe-{name}"));
    let _host = HostState {
        timestamps: std::fs::read_to_string(TIMESTAMP_SYSCTL).ok(),
        created: pod.created.clone(),
    };
    assert_eq!(
        pod.image, image,
        "the manifests name the image `cargo xtask image` builds"
    );

    let mut child = podman
        .cmd()
        .arg("run")
        .args(&pod.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("podman run");
    let log = stderr_of(&mut child);
    let (tx, rx) = mpsc::channel::<Value>();
    let stdout = child.stdout.take().unwrap();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let v = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
            if tx.send(v).is_err() {
                break;
            }
        }
    });

    // Every probe the manifest declares, where the kubelet asks it: all 200 once ready.
    let node = node_address();
    let deadline = Instant::now() + Duration::from_secs(240);
    for (kind, path, port) in &pod.probes {
        let addr = SocketAddr::new(node, *port);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "the container exited ({status}) before {kind} answered:\n{}",
                    log.join().unwrap()
                );
            }
            if std::net::TcpStream::connect(addr).is_ok() && http_get(addr, path).0 == 200 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{kind} {path} at {addr} never answered 200"
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    // Nothing the kernel offers this node is lost in the container (the least-privilege
    // variant's capabilities are enough, or the failure names the capability and why).
    let status: Value = serde_json::from_str(
        &http_get(
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), pod.probes[0].2),
            "/health/status",
        )
        .2,
    )
    .expect("/health/status is JSON");
    let lost: Vec<(String, String)> = status["capabilities"]
        .as_array()
        .expect("capabilities")
        .iter()
        .filter(|c| c["hook"].is_null())
        .map(|c| {
            (
                c["capability"].as_str().unwrap().to_owned(),
                c["error"].to_string(),
            )
        })
        .collect();
    if !lost.is_empty() {
        let host = run_probe(&["--check-kernel"]);
        let table = String::from_utf8_lossy(&host.stdout);
        for (capability, error) in &lost {
            let on_host = table
                .lines()
                .find(|l| l.split_whitespace().next() == Some(capability.as_str()))
                .and_then(|l| l.split_whitespace().nth(1))
                .unwrap_or("NONE");
            assert!(
                on_host == "NONE" || on_host == "-",
                "{capability} works on this node ({on_host}) but not in the container: {error}"
            );
        }
    }

    // A reset and a core signal made by host processes.
    let pair = LingerPair::connect();
    let client_port = pair.client_port;
    let (tid, comm) = current_thread();
    let accepted = pair.reset();
    let mut crash = crasher(CRASHER, "segv", Some("0"));
    let crash_pid = crash.id();
    crash.wait().unwrap();
    let mut records = Vec::new();
    let wait = Instant::now() + Duration::from_secs(120);
    while Instant::now() < wait
        && (resets(&records, client_port, "sent").is_empty()
            || core_signals_of(&records, crash_pid).is_empty())
    {
        if let Ok(r) = rx.recv_timeout(Duration::from_millis(200)) {
            records.push(r);
        }
    }
    drop(accepted);

    // Stopped as the kubelet stops it: SIGTERM, SIGKILL after the grace period.
    let stopping = Instant::now();
    podman.run(&[
        "stop",
        "--time",
        &pod.grace_seconds.to_string(),
        &format!("node-probe-{name}"),
    ]);
    let (status, _) = wait_child_exit(&mut child, Duration::from_secs(60));
    let took = stopping.elapsed();
    let log = log.join().unwrap();
    records.extend(rx.try_iter());
    assert!(status.success(), "the agent's exit: {status}\n{log}");
    assert!(
        took < Duration::from_secs(pod.grace_seconds),
        "stopping took {took:?}, the grace period is {} s:\n{log}",
        pod.grace_seconds
    );

    let sent = resets(&records, client_port, "sent");
    assert_eq!(sent.len(), 1, "one sent reset expected:\n{sent:#?}\n{log}");
    let r = &sent[0];
    assert_eq!(r["saddr"], "127.0.0.1");
    assert_eq!(r["sport"], client_port);
    assert_eq!(r["pid"], std::process::id(), "the host pid (hostPID)");
    assert_eq!(r["tid"], tid);
    assert_eq!(r["comm"], comm);
    assert_eq!(r["netns"], own_netns());
    assert_eq!(r["node"], NODE, "NODE_NAME from spec.nodeName");
    let signals = core_signals_of(&records, crash_pid);
    assert_eq!(signals.len(), 1, "{signals:#?}\n{log}");
    let s = &signals[0];
    assert_eq!(s["signal"], 11);
    assert_eq!(s["signal_name"], "SIGSEGV");
    assert_eq!(s["comm"], "crasher");
    assert_eq!(s["netns"], own_netns());
    assert_eq!(s["core_dumped"], false);
    assert_eq!(s["node"], NODE);
    let losses: Vec<&Value> = records.iter().filter(|r| r["kind"] == "loss").collect();
    assert!(losses.is_empty(), "{losses:#?}");
    eprintln!(
        "{test}: image {image}, probes {:?} at {node}, stopped in {took:?}",
        pod.probes
    );
}
