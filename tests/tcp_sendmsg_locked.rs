//! Root e2e: `tcp_sendmsg_locked` (probe-ebpf/src/tcp_sendmsg_locked.rs), the horizontal tie. A
//! client sends an HTTP/1.1 request carrying a known traceparent to a loopback server that
//! answers by resetting (SO_LINGER 0): the received reset is in that trace, a child of the
//! client's span, in the JSON record and in the OTLP span. Without a traceparent, the reset
//! starts a trace of its own.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    time::Duration,
};

use probe_tests::*;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";
const NO_CONTENT: &[u8] = b"HTTP/1.1 204 No Content\r\n\r\n";

/// One connection to a loopback server: optionally a first message and the server's answer,
/// then `then`, a request the server answers by resetting (SO_LINGER 0). Returns the client
/// port once the client got the reset.
fn exchange(first: Option<(&'static [u8], &'static [u8])>, then: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 2048];
        if let Some((message, reply)) = first {
            let n = conn.read(&mut buf).unwrap();
            assert_eq!(&buf[..n], message);
            conn.write_all(reply).unwrap();
        }
        let n = conn.read(&mut buf).unwrap();
        assert!(buf[..n].starts_with(b"GET /checkout HTTP/1.1"));
        socket2::SockRef::from(&conn)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(conn);
    });
    let mut client = TcpStream::connect(addr).unwrap();
    let port = client.local_addr().unwrap().port();
    let mut buf = vec![0u8; 64];
    if let Some((message, reply)) = first {
        client.write_all(message).unwrap();
        client.read_exact(&mut buf[..reply.len()]).unwrap();
        assert_eq!(&buf[..reply.len()], reply);
    }
    client.write_all(then.as_bytes()).unwrap();
    server.join().unwrap();
    let err = client.read(&mut buf).expect_err("the server resets");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    port
}

#[test]
fn a_reset_joins_the_trace_of_the_request_it_broke() {
    if !require_root("tcp_sendmsg_locked::a_reset_joins_the_trace_of_the_request_it_broke") {
        return;
    }
    let mut receiver = OtlpReceiver::start(env!("CARGO_BIN_EXE_otlp_receiver"), None);
    let mut probe = receiver.probe();
    let traced = exchange(
        None,
        concat!(
            "GET /checkout HTTP/1.1\r\nHost: shop\r\n",
            "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n"
        ),
    );
    let plain = exchange(None, "GET /checkout HTTP/1.1\r\nHost: shop\r\n\r\n");
    let record = probe.reset_at("received", traced, "the traced reset");
    let server_side = probe
        .wait_for(Duration::from_secs(10), |r| {
            r["kind"] == "tcp_reset" && r["direction"] == "sent" && r["dport"] == traced
        })
        .expect("the server's sent reset");
    let untraced = probe.reset_at("received", plain, "the untraced reset");
    let span = receiver.wait_for("the traced reset span", |s| {
        s["name"] == "tcp.reset.received" && s["attributes"]["network.local.port"] == traced
    });
    let own = receiver.wait_for("the untraced reset span", |s| {
        s["name"] == "tcp.reset.received" && s["attributes"]["network.local.port"] == plain
    });
    probe.stop();

    assert_eq!(record["trace_id"], TRACE);
    assert_eq!(record["parent_span_id"], PARENT);
    assert_eq!(span["trace_id"], TRACE);
    assert_eq!(span["parent_span_id"], PARENT);
    // The server's reset is on the same connection: in the same trace.
    assert_eq!(server_side["trace_id"], TRACE);
    assert_eq!(untraced.get("trace_id"), None, "{untraced:#}");
    assert_ne!(own["trace_id"], TRACE);
    assert_eq!(own["parent_span_id"], "");
}

/// Only a connection's first send is read unless it was a request: the second request of a
/// keep-alive connection is read (its reset joins that request's trace); a request after
/// another protocol's first message on the same connection is not (one read of the socket's
/// `bytes_sent` and a map lookup per send on every non-HTTP connection).
#[test]
fn keep_alive_requests_are_read_other_protocols_are_left_at_once() {
    if !require_root(
        "tcp_sendmsg_locked::keep_alive_requests_are_read_other_protocols_are_left_at_once",
    ) {
        return;
    }
    let mut probe = Probe::start(&["--http-trace-context", "true"]);
    let with = |trace: &str| {
        format!(
            "GET /checkout HTTP/1.1\r\nHost: shop\r\ntraceparent: 00-{trace}-{PARENT}-01\r\n\r\n"
        )
    };
    let second = "0af7651916cd43dd8448eb211c80319c";
    let other = "5c1f0a86b2a25d3d4b4ae1e1c2a0d1b8";
    let keep_alive = exchange(
        Some((with(TRACE).leak().as_bytes(), NO_CONTENT)),
        with(second).leak(),
    );
    let redis_first = exchange(
        Some((b"*1\r\n$4\r\nPING\r\n", b"+PONG\r\n")),
        with(other).leak(),
    );
    let kept = probe.reset_at("received", keep_alive, "the keep-alive connection's reset");
    let left = probe.reset_at("received", redis_first, "the other connection's reset");
    probe.stop();
    assert_eq!(kept["trace_id"], second, "{kept:#}");
    assert_eq!(kept["parent_span_id"], PARENT);
    assert_eq!(left.get("trace_id"), None, "{left:#}");
}

/// The kernel sends a request to the agent only when it carries a `traceparent` or ends one on
/// its connection. On one keep-alive connection: a request with context, then one without (it
/// ends the trace: the reset that follows starts a trace of its own); on another, two plain
/// requests, which never reach the agent. So exactly two `http_request` events.
#[test]
fn only_requests_that_carry_or_end_a_trace_reach_the_agent() {
    if !require_root("tcp_sendmsg_locked::only_requests_that_carry_or_end_a_trace_reach_the_agent")
    {
        return;
    }
    let mut probe = Probe::start(&["--http-trace-context", "true"]);
    let addr = probe.http_addr();
    let requests = || {
        let status: Value = serde_json::from_str(&http_get(addr, "/health/status").2).unwrap();
        status["http_requests"].as_u64().unwrap()
    };
    let before = requests();
    let plain = "GET /checkout HTTP/1.1\r\nHost: shop\r\n\r\n";
    let traced = format!(
        "GET /checkout HTTP/1.1\r\nHost: shop\r\nTraceParent: 00-{TRACE}-{PARENT}-01\r\n\r\n"
    );
    let ended = exchange(Some((traced.leak().as_bytes(), NO_CONTENT)), plain);
    let untraced = exchange(Some((plain.as_bytes(), NO_CONTENT)), plain);
    let after_end = probe.reset_at(
        "received",
        ended,
        "the reset after the request without context",
    );
    let plain_reset = probe.reset_at("received", untraced, "the plain connection's reset");
    let counted = requests() - before;
    // Where the receive hook is attached the server's end counts too: the traced request it
    // read and its answer (the plain one after the answer ends nothing).
    let status: Value = serde_json::from_str(&http_get(addr, "/health/status").2).unwrap();
    let receives = status["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["capability"] == "http_request_received" && !c["hook"].is_null());
    probe.stop();
    assert_eq!(after_end.get("trace_id"), None, "{after_end:#}");
    assert_eq!(plain_reset.get("trace_id"), None, "{plain_reset:#}");
    let want = if receives { 4 } else { 2 };
    assert_eq!(
        counted, want,
        "http_request events: the traced request sent and the one ending it (and, read by the server, the traced one and its answer: receive hook {receives})"
    );
}
