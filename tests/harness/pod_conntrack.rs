//! Conntrack in a pod's own network namespace, for the real-pod test.

use std::{
    io::{Read as _, Write as _},
    net::TcpListener,
    path::Path,
    time::{Duration, Instant},
};

use crate::{
    Probe, Value, http_get, in_netns,
    redis_nat::{SHORT_TIMEOUT, TIMEOUT_SYSCTL},
    run_ok,
};

const WAIT: Duration = Duration::from_secs(60);

/// Conntrack in the pod's namespace (a rule that uses it, as a sidecar's would) with a short
/// established timeout, once the agent watches that namespace; a connection from the host
/// idles past it and its next packet finds the entry expired. Returns the pod's port and the
/// connection's two ends (client, server), still open.
pub fn expire_in_the_pods_conntrack(
    probe: &mut Probe,
    netns: &str,
    pod_ip: &str,
    label: &str,
) -> (u16, std::net::TcpStream, std::net::TcpStream) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, _, body) = http_get(probe.http_addr(), "/health/status");
        let doc: Value = serde_json::from_str(&body).unwrap();
        let watches = doc["conntrack"]["watches"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if let Some(w) = watches.iter().find(|w| w["netns"] == label) {
            assert_eq!(w["subscribed"], true, "{w:#}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the pod's namespace is not watched: {doc:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let nsenter = |args: &[&str]| {
        run_ok(
            std::process::Command::new("nsenter")
                .arg(format!("--net={netns}"))
                .args(args),
        )
    };
    nsenter(&[
        "iptables",
        "-A",
        "INPUT",
        "-m",
        "conntrack",
        "--ctstate",
        "ESTABLISHED",
        "-j",
        "ACCEPT",
    ]);
    nsenter(&[
        "sysctl",
        "-qw",
        &format!("{TIMEOUT_SYSCTL}={SHORT_TIMEOUT}"),
    ]);
    probe
        .wait_for(WAIT, |r| {
            r["kind"] == "conntrack_settings"
                && r["netns_path"] == label
                && r[TIMEOUT_SYSCTL] == SHORT_TIMEOUT
        })
        .expect("the pod namespace's settings with the short timeout");
    let listener = in_netns(Path::new(netns), || TcpListener::bind("0.0.0.0:0").unwrap());
    let port = listener.local_addr().unwrap().port();
    let mut client = std::net::TcpStream::connect((pod_ip, port)).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    client.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).unwrap();
    server.write_all(b"pong").unwrap();
    client.read_exact(&mut buf).unwrap();
    std::thread::sleep(Duration::from_secs(SHORT_TIMEOUT + 2));
    // Loose pickup lets this packet through on a new entry; the old one is destroyed.
    client.write_all(b"ping").unwrap();
    probe
        .wait_for(WAIT, |r| {
            r["kind"] == "conntrack_expiry" && r["orig_dport"] == port
        })
        .expect("no expiry in the pod's namespace");
    (port, client, server)
}
