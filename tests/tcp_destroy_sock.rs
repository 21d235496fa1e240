//! Root e2e: `tcp_destroy_sock` (probe-ebpf/src/tcp_destroy_sock.rs). The kernel reuses a freed
//! socket's address for later sockets; the request hooks keep state per socket address, so a
//! freed socket's state must go with it. On loopback, HTTP client connections (whose sockets
//! the send hook marks as a client's end) are opened and closed, each followed by a server
//! connection that reads a traced request (sent with sendfile(2), which the send hook does not
//! read) and aborts it: every one of those resets joins its request's trace, whichever freed
//! socket's address the server's end got.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    time::Duration,
};

use probe_tests::*;

const ROUNDS: u8 = 40;

#[test]
fn a_freed_sockets_state_does_not_pass_to_the_next_socket_at_its_address() {
    if !require_root(
        "tcp_destroy_sock::a_freed_sockets_state_does_not_pass_to_the_next_socket_at_its_address",
    ) {
        return;
    }
    // Every reset in full (no storm folding of the server's resets).
    let mut probe = Probe::start(&["--http-trace-context", "true", "--fold-first", "0"]);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut ports = Vec::new();
    for round in 0..ROUNDS {
        // An HTTP client connection, closed: its socket is freed.
        let mut client = TcpStream::connect(addr).unwrap();
        client
            .write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let (mut served, _) = listener.accept().unwrap();
        let mut buf = [0u8; 256];
        assert!(served.read(&mut buf).unwrap() > 0);
        drop((client, served));
        // A traced request, read by the server's end, which aborts the connection.
        let traced = TcpStream::connect(addr).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let trace = format!("4bf92f3577b34da6a3ce929d0e0e47{round:02x}");
        send_unseen(
            &traced,
            format!(
                "GET /checkout HTTP/1.1\r\nHost: shop\r\ntraceparent: 00-{trace}-00f067aa0ba902b7-01\r\n\r\n"
            )
            .as_bytes(),
        );
        assert!(server.read(&mut buf).unwrap() > 0);
        socket2::SockRef::from(&server)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        ports.push((
            server.local_addr().unwrap().port(),
            traced.local_addr().unwrap().port(),
            trace,
        ));
        drop(server);
    }
    for (port, client_port, trace) in &ports {
        let r = probe
            .wait_for(Duration::from_secs(30), |r| {
                r["kind"] == "tcp_reset"
                    && r["direction"] == "sent"
                    && r["sport"] == *port
                    && r["dport"] == *client_port
            })
            .unwrap_or_else(|| panic!("the server's reset to {client_port}"));
        assert_eq!(r["trace_id"], trace.as_str(), "{r:#}");
        assert_eq!(r["trace_tie"], "connection");
    }
    probe.stop();
}
