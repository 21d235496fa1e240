//! Root e2e: HTTP/2 in clear text (probe-ebpf/src/http2.rs, probe-user/src/enrich/http2): a
//! real gRPC client and server (tonic, h2c) make three calls on one connection, each with its
//! own `traceparent` in the metadata (from the second on, the header's name is indexed in the
//! connection's HPACK table), and the server dies in the third, resetting the connection: the
//! client's received reset and the server's sent one carry the third call's trace exactly (not
//! the second's), a child of its span (JSON record and OTLP span). A third call without a
//! traceparent ends the connection's context: its reset is in no trace. A connection whose
//! first call carries none reaches the agent from its second call on (the kernel sends an
//! untraced connection's header blocks nowhere): the agent's table misses the first call's
//! entries, and the third call's trace is still read exactly. A connection whose first 16
//! calls carry none is taken as uninstrumented (counted once per end): its 17th call's trace
//! is not read.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::Duration,
};

use probe_tests::*;
use serde_json::Value;

const TRACES: [&str; 3] = [
    "4bf92f3577b34da6a3ce929d0e0e4736",
    "0af7651916cd43dd8448eb211c80319c",
    "5bf92f3577b34da6a3ce929d0e0e4737",
];
const PARENTS: [&str; 3] = ["00f067aa0ba902b7", "b7ad6b7169203331", "10f067aa0ba902b8"];

/// The gRPC server, dying in its third call (or its `die_in`th); its port.
struct GrpcServer {
    child: Child,
    port: u16,
}

impl GrpcServer {
    fn start() -> Self {
        Self::dying_in(3)
    }

    fn dying_in(call: usize) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_grpc_peer"))
            .args(["server", &call.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the gRPC server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the server's port");
        let port = line.trim().parse().expect("a port");
        Self { child, port }
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Calls on one connection to `port`, one per `traceparents` (`-`: none); each call's result.
fn calls(port: u16, traceparents: &[String]) -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_grpc_peer"))
        .arg("client")
        .arg(port.to_string())
        .args(traceparents)
        .stderr(Stdio::inherit())
        .output()
        .expect("the gRPC client");
    assert!(out.status.success(), "the gRPC client failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn traceparent(i: usize) -> String {
    format!("00-{}-{}-01", TRACES[i], PARENTS[i])
}

/// Whether both request hooks are there (loud when not).
fn hooks(probe: &Probe) -> bool {
    let sent = probe.hook("http_request_head").is_some();
    let received = probe.hook("http_request_received").is_some();
    sent && received
}

/// The client's received reset and the server's sent one, on the connection to `port`.
fn resets(probe: &mut Probe, port: u16) -> (Value, Value) {
    let client = probe
        .wait_for(Duration::from_secs(10), |r| {
            r["kind"] == "tcp_reset" && r["direction"] == "received" && r["dport"] == port
        })
        .expect("the client's received reset");
    let server = probe.reset_at("sent", port, "the server's sent reset");
    (client, server)
}

#[test]
fn a_reset_joins_the_trace_of_the_grpc_call_in_flight() {
    if !require_root("http2::a_reset_joins_the_trace_of_the_grpc_call_in_flight") {
        return;
    }
    let mut receiver = OtlpReceiver::start(env!("CARGO_BIN_EXE_otlp_receiver"), None);
    let mut probe = receiver.probe();
    if !hooks(&probe) {
        return;
    }
    let server = GrpcServer::start();
    let results = calls(
        server.port,
        &[traceparent(0), traceparent(1), traceparent(2)],
    );
    assert_eq!(results[..2], ["ok", "ok"], "{results:?}");
    assert_eq!(results.len(), 3, "{results:?}");
    assert_ne!(results[2], "ok", "the third call was answered");
    let (client, server_side) = resets(&mut probe, server.port);
    let span = receiver.wait_for("the client's reset span", |s| {
        s["name"] == "tcp.reset.received"
            && s["attributes"]["network.local.port"] == client["sport"]
    });
    let status: Value =
        serde_json::from_str(&http_get(probe.http_addr(), "/health/status").2).unwrap();
    probe.stop();

    assert_eq!(client["trace_id"], TRACES[2], "{client:#}");
    assert_eq!(client["parent_span_id"], PARENTS[2]);
    assert_eq!(client["trace_tie"], "connection");
    assert_eq!(server_side["trace_id"], TRACES[2], "{server_side:#}");
    assert_eq!(server_side["parent_span_id"], PARENTS[2]);
    assert_eq!(server_side["trace_tie"], "connection");
    assert_eq!(server_side["dport"], client["sport"]);
    assert_eq!(span["trace_id"], TRACES[2]);
    assert_eq!(span["parent_span_id"], PARENTS[2]);
    assert_eq!(span["attributes"]["probe.trace.tie"], "connection");
    // Both ends' three blocks at least (the receiver's own gRPC server decodes the agent's
    // exports too); no table lost.
    assert!(
        status["http2"]["header_blocks"].as_u64() >= Some(6),
        "{status:#}"
    );
    assert_eq!(status["http2"]["tables_lost"], 0, "{status:#}");
}

#[test]
fn a_call_without_a_traceparent_ends_the_connections_context() {
    if !require_root("http2::a_call_without_a_traceparent_ends_the_connections_context") {
        return;
    }
    let mut probe = Probe::start(&["--http-trace-context", "true"]);
    if !hooks(&probe) {
        return;
    }
    let server = GrpcServer::start();
    let results = calls(server.port, &[traceparent(0), traceparent(1), "-".into()]);
    assert_eq!(results[..2], ["ok", "ok"], "{results:?}");
    let (client, server_side) = resets(&mut probe, server.port);
    probe.stop();
    assert_eq!(client.get("trace_id"), None, "{client:#}");
    assert_eq!(server_side.get("trace_id"), None, "{server_side:#}");
}

#[test]
fn a_connection_traced_from_its_second_call_on_is_read_from_there() {
    if !require_root("http2::a_connection_traced_from_its_second_call_on_is_read_from_there") {
        return;
    }
    let mut probe = Probe::start(&["--http-trace-context", "true"]);
    if !hooks(&probe) {
        return;
    }
    let server = GrpcServer::start();
    let results = calls(server.port, &["-".into(), traceparent(1), traceparent(2)]);
    assert_eq!(results[..2], ["ok", "ok"], "{results:?}");
    let (client, server_side) = resets(&mut probe, server.port);
    let status: Value =
        serde_json::from_str(&http_get(probe.http_addr(), "/health/status").2).unwrap();
    probe.stop();
    assert_eq!(client["trace_id"], TRACES[2], "{client:#}");
    assert_eq!(client["parent_span_id"], PARENTS[2]);
    assert_eq!(server_side["trace_id"], TRACES[2], "{server_side:#}");
    assert_eq!(server_side["parent_span_id"], PARENTS[2]);
    // The second and third calls' blocks on both ends: the first call's reached no one.
    assert_eq!(status["http2"]["header_blocks"], 4, "{status:#}");
    assert_eq!(status["http2"]["tables_lost"], 0, "{status:#}");
}

#[test]
fn a_connection_untraced_for_its_first_16_calls_is_followed_no_more() {
    if !require_root("http2::a_connection_untraced_for_its_first_16_calls_is_followed_no_more") {
        return;
    }
    let mut probe = Probe::start(&["--http-trace-context", "true"]);
    if !hooks(&probe) {
        return;
    }
    let server = GrpcServer::dying_in(17);
    let mut traceparents = vec!["-".to_owned(); 16];
    traceparents.push(traceparent(2));
    let results = calls(server.port, &traceparents);
    assert_eq!(results[..16], ["ok"; 16], "{results:?}");
    let (client, server_side) = resets(&mut probe, server.port);
    let status: Value =
        serde_json::from_str(&http_get(probe.http_addr(), "/health/status").2).unwrap();
    probe.stop();
    assert_eq!(client.get("trace_id"), None, "{client:#}");
    assert_eq!(server_side.get("trace_id"), None, "{server_side:#}");
    // Both ends gave the connection up after its 16th block; no block reached the agent.
    assert_eq!(status["http2"]["connections_untraced"], 2, "{status:#}");
    assert_eq!(status["http2"]["header_blocks"], 0, "{status:#}");
    assert_eq!(status["http2"]["tables_lost"], 0, "{status:#}");
}
