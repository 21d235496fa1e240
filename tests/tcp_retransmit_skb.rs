//! Root e2e: `tcp_retransmit_skb` (probe-ebpf/src/tcp_retransmit_skb.rs): retransmits of
//! established connections counted per pod, no record each. Two connections (IPv4, IPv6) of a
//! "pod" (a cgroup named like a containerd pod scope, known to the API fake) in a network
//! namespace of the test's, whose data an iptables rule drops once they are established: the
//! pod's `probe_tcp_retransmits_total{state="ESTABLISHED"}` is exactly what the namespace's
//! own counter (`/proc/net/snmp` `Tcp: RetransSegs`, counted where the tracepoint fires) says.

use std::{
    io::Write as _,
    net::{SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use probe_tests::{connect::tcp_info, *};

const NODE: &str = "node-retransmit";
const PORT: u16 = 7091;
const WAIT: Duration = Duration::from_secs(20);

/// The namespace's `Tcp: RetransSegs`.
fn retrans_segs(ns: &Netns) -> u64 {
    let out = ns.exec(&["cat", "/proc/net/snmp"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next().unwrap(), tcp.next().unwrap());
    let i = names
        .split_whitespace()
        .position(|n| n == "RetransSegs")
        .expect("RetransSegs");
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

fn total_retrans(s: &TcpStream) -> u32 {
    tcp_info(&socket2::SockRef::from(s)).tcpi_total_retrans
}

/// Runs `f` with this process in the cgroup `scope` (a socket belongs to the cgroup its
/// creator was in), then moves it back.
fn in_cgroup<T>(scope: &std::path::Path, f: impl FnOnce() -> T) -> T {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let own = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("cgroup v2")
        .trim_start_matches('/')
        .to_owned();
    let pid = std::process::id().to_string();
    std::fs::write(scope.join("cgroup.procs"), &pid).expect("into the pod's cgroup");
    let out = f();
    std::fs::write(cgroup2_root().join(own).join("cgroup.procs"), &pid).expect("back");
    out
}

#[test]
fn retransmits_of_a_pods_connections_are_counted_exactly() {
    if !require_root("tcp_retransmit_skb::retransmits_of_a_pods_connections_are_counted_exactly") {
        return;
    }
    assert!(
        have("iptables") && have("ip6tables"),
        "iptables is missing (`cargo xtask test` installs it)"
    );
    let pid = std::process::id();
    let uid = format!("{pid:08x}-7e7e-4c3d-9e8f-0a1b2c3d4e5f");
    let container_id = format!("{:064x}", u128::from(pid) << 8);
    let fake = KubeFake::start();
    fake.apply(
        "pods",
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "lossy-client", "namespace": "shop", "uid": uid},
            "spec": {"nodeName": NODE, "containers": [{"name": "app", "image": "app:1"}]},
            "status": {"containerStatuses": [{"name": "app",
                "containerID": format!("containerd://{container_id}"),
                "image": "app:1", "imageID": "", "ready": true, "restartCount": 0}]}
        }),
    );
    let (_cleanup, scope) = make_cgroup(&format!(
        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{container_id}.scope",
        uid.replace('-', "_")
    ));
    let kubeconfig = fake.kubeconfig(&std::env::temp_dir());
    let probe = Probe::start_with_env(
        &["--node-name", NODE, "--conntrack", "false"],
        &[("KUBECONFIG", kubeconfig.as_os_str())],
    );
    if probe.hook("retransmits").is_none() {
        return;
    }
    wait_synced(probe.http_addr(), 1, WAIT);

    let ns = Netns::new("retransmit");
    let addrs: [SocketAddr; 2] = [
        SocketAddr::from(([127, 0, 0, 1], PORT)),
        SocketAddr::new("::1".parse().unwrap(), PORT),
    ];
    let listeners: Vec<TcpListener> =
        ns.enter(move || addrs.map(|a| TcpListener::bind(a).expect("bind")).into());
    let clients: Vec<TcpStream> = in_cgroup(&scope, || {
        ns.enter(move || {
            addrs
                .map(|a| TcpStream::connect(a).expect("connect"))
                .into()
        })
    });
    let _servers: Vec<TcpStream> = listeners.iter().map(|l| l.accept().unwrap().0).collect();
    let before = retrans_segs(&ns);
    for tool in ["iptables", "ip6tables"] {
        ns.exec(&[
            tool,
            "-A",
            "INPUT",
            "-p",
            "tcp",
            "--dport",
            &PORT.to_string(),
            "-j",
            "DROP",
        ]);
    }
    // Unanswered data: the kernel sends it again (tail loss probe, then at each RTO).
    let deadline = Instant::now() + WAIT;
    for mut c in clients {
        c.write_all(&[b'x'; 100]).unwrap();
        while total_retrans(&c) < 2 {
            assert!(Instant::now() < deadline, "no retransmission");
            std::thread::sleep(Duration::from_millis(10));
        }
        // An abortive close: no more retransmits of this socket.
        socket2::SockRef::from(&c)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
    }
    let retransmitted = retrans_segs(&ns) - before;
    assert!(retransmitted >= 4, "{retransmitted}");
    let labels = [
        r#"state="ESTABLISHED""#,
        r#"namespace="shop""#,
        r#"pod="lossy-client""#,
        r#"container="app""#,
    ];
    let counted = wait_metric(
        probe.http_addr(),
        "probe_tcp_retransmits_total",
        &labels,
        retransmitted,
    );
    assert_eq!(
        counted, retransmitted,
        "probe_tcp_retransmits_total of the pod against the namespace's RetransSegs"
    );
    // Counted, never written as records.
    let records = probe.stop();
    assert!(
        records
            .iter()
            .all(|r| !r["kind"].as_str().unwrap_or("").contains("retrans")),
        "no record per retransmit"
    );
}
