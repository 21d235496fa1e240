//! Root e2e: `sock_recv_length` (probe-ebpf/src/sock_recv_length.rs), the server's end of the
//! trace tie. Two network namespaces stand in for a client's node and a server's node; the
//! client sends its request with sendfile(2), whose pages the send hook never reads, so only
//! the server's read of the request can tie what follows to its trace. The server (the
//! `crasher` helper) then aborts the connection, crashes on the thread that read the request,
//! crashes on another thread, answers and then crashes, serves two traced requests at once
//! while a third thread (or one of the two) crashes, or kills a child: each record carries the
//! request's trace exactly when the serving interval proves it, in JSON and in OTLP.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::TcpStream,
    os::fd::AsRawFd as _,
    process::{Child, Stdio},
    time::Duration,
};

use probe_tests::*;

const CRASHER: &str = env!("CARGO_BIN_EXE_crasher");
const PARENT: &str = "00f067aa0ba902b7";
const WAIT: Duration = Duration::from_secs(30);
const SERVER: &str = "10.78.1.2";

/// A trace ID of its own for each request of a test.
fn trace(n: u8) -> String {
    format!("4bf92f3577b34da6a3ce929d0e0e47{n:02x}")
}

fn request(trace: Option<&str>) -> Vec<u8> {
    let mut r = b"GET /checkout HTTP/1.1\r\nHost: shop\r\n".to_vec();
    if let Some(t) = trace {
        r.extend_from_slice(format!("traceparent: 00-{t}-{PARENT}-01\r\n").as_bytes());
    }
    r.extend_from_slice(b"\r\n");
    r
}

/// The client's node and the server's, joined by a veth pair.
fn nodes() -> (Netns, Netns) {
    let client = Netns::new("rcv-c");
    let server = Netns::new("rcv-s");
    veth(
        &client,
        "c0",
        "10.78.1.1/24",
        &server,
        "s0",
        &format!("{SERVER}/24"),
    );
    (client, server)
}

/// The crasher serving in the server's namespace (`crasher serve`), and its port.
fn serve(ns: &Netns, then: &str) -> (Child, u16) {
    let mut child = ns
        .command(CRASHER)
        .args(["serve", &format!("{SERVER}:0"), then])
        .env("CRASHER_RLIMIT_CORE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning crasher");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("the server's listening line");
    let port = line
        .trim()
        .strip_prefix("listening ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected line {line:?}"));
    (child, port)
}

/// A connection from the client's namespace to the server's `port`.
fn connect(ns: &Netns, port: u16) -> TcpStream {
    ns.enter(move || TcpStream::connect((SERVER, port)).expect("connect"))
}

/// Runs the crasher's `then` for one request (traced with `trace`); returns its pid once it
/// ended, with the signal that ended it.
fn one_request(
    client: &Netns,
    server: &Netns,
    then: &str,
    trace: Option<&str>,
) -> (u32, Option<i32>) {
    let (mut child, port) = serve(server, then);
    let conn = connect(client, port);
    send_unseen(&conn, &request(trace));
    let status = child.wait().expect("the server ends");
    drop(conn);
    (
        child.id(),
        std::os::unix::process::ExitStatusExt::signal(&status),
    )
}

#[test]
fn what_a_server_does_while_serving_a_traced_request_joins_its_trace() {
    if !require_root(
        "sock_recv_length::what_a_server_does_while_serving_a_traced_request_joins_its_trace",
    ) {
        return;
    }
    let (client, server) = nodes();
    let mut receiver = OtlpReceiver::start(env!("CARGO_BIN_EXE_otlp_receiver"), None);
    let mut probe = receiver.probe();
    let crash = |probe: &mut Probe, pid: u32| {
        probe
            .wait_for(WAIT, |r| r["kind"] == "core_signal" && r["pid"] == pid)
            .unwrap_or_else(|| panic!("no core_signal record for the server {pid}"))
    };

    // (a) The server reads the request, then aborts the connection.
    let (mut child, port) = serve(&server, "reset");
    let conn = connect(&client, port);
    send_unseen(&conn, &request(Some(&trace(1))));
    assert!(child.wait().unwrap().success());
    let reset = probe
        .wait_for(WAIT, |r| {
            r["kind"] == "tcp_reset" && r["direction"] == "sent" && r["sport"] == port
        })
        .expect("the server's reset");
    drop(conn);
    assert_eq!(reset["saddr"], SERVER);
    assert_eq!(reset["trace_id"], trace(1), "{reset:#}");
    assert_eq!(reset["parent_span_id"], PARENT);
    assert_eq!(reset["trace_tie"], "connection");

    // (b) It crashes on the thread that read the request.
    let (thread, signal) = one_request(&client, &server, "segv", Some(&trace(2)));
    assert_eq!(signal, Some(11));
    let r = crash(&mut probe, thread);
    assert_eq!(r["tid"], thread);
    assert_eq!(r["exit_code"], 11);
    assert_eq!(r["trace_id"], trace(2), "{r:#}");
    assert_eq!(r["parent_span_id"], PARENT);
    assert_eq!(r["trace_tie"], "thread");

    // (c) Another thread of the process crashes: the process's only traced request.
    let (process, _) = one_request(&client, &server, "segv-elsewhere", Some(&trace(3)));
    let r = crash(&mut probe, process);
    assert_ne!(r["tid"], process);
    assert_eq!(r["trace_id"], trace(3), "{r:#}");
    assert_eq!(r["trace_tie"], "process");

    // (d) It answered before crashing: the request was over.
    let (answered, _) = one_request(&client, &server, "answer-segv", Some(&trace(4)));
    let r = crash(&mut probe, answered);
    assert_eq!(r.get("trace_id"), None, "{r:#}");

    // (g) The next request on that connection (and thread), without a traceparent.
    let (mut child, port) = serve(&server, "answer-next-segv");
    let mut conn = connect(&client, port);
    send_unseen(&conn, &request(Some(&trace(7))));
    let mut answer = [0u8; 64];
    let n = std::io::Read::read(&mut conn, &mut answer).unwrap();
    assert_eq!(&answer[..n], b"HTTP/1.1 204 No Content\r\n\r\n");
    send_unseen(&conn, &request(None));
    child.wait().unwrap();
    let r = crash(&mut probe, child.id());
    assert_eq!(r.get("trace_id"), None, "{r:#}");
    drop(conn);

    // (e) A request without a traceparent.
    let (untraced, _) = one_request(&client, &server, "segv", None);
    let r = crash(&mut probe, untraced);
    assert_eq!(r.get("trace_id"), None, "{r:#}");

    // (f) Two traced requests in flight, a third thread crashes: no guess.
    let (mut child, port) = serve(&server, "two-segv");
    let first = connect(&client, port);
    send_unseen(&first, &request(Some(&trace(5))));
    let second = connect(&client, port);
    send_unseen(&second, &request(Some(&trace(6))));
    child.wait().unwrap();
    let r = crash(&mut probe, child.id());
    assert_eq!(r.get("trace_id"), None, "{r:#}");
    let ambiguous = wait_metric(
        probe.http_addr(),
        "probe_trace_ties_ambiguous_total",
        &[],
        1,
    );
    assert_eq!(ambiguous, 1, "probe_trace_ties_ambiguous_total");
    drop((first, second));

    // (f) still: a thread serving one of the two crashes: tied by thread all the same.
    let (mut child, port) = serve(&server, "two-segv-reader");
    let first = connect(&client, port);
    send_unseen(&first, &request(Some(&trace(10))));
    let second = connect(&client, port);
    send_unseen(&second, &request(Some(&trace(11))));
    child.wait().unwrap();
    let r = crash(&mut probe, child.id());
    assert_ne!(r["tid"], child.id());
    assert_eq!(r["trace_id"], trace(10), "{r:#}");
    assert_eq!(r["trace_tie"], "thread");
    drop((first, second));

    // (h) It sends SIGABRT to a child while serving: the child's record joins by its sender.
    let (mut child, port) = serve(&server, "kill-child");
    let conn = connect(&client, port);
    send_unseen(&conn, &request(Some(&trace(9))));
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("the child line");
    let victim: u32 = line
        .trim()
        .strip_prefix("child ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected line {line:?}"));
    assert!(child.wait().unwrap().success());
    let r = crash(&mut probe, victim);
    assert_eq!(r["signal_name"], "SIGABRT");
    assert_eq!(r["sender_pid"], child.id());
    assert_eq!(r["trace_id"], trace(9), "{r:#}");
    assert_eq!(r["trace_tie"], "sender_thread");
    drop(conn);

    // In OTLP: the crash's span is a child of the client's span in the request's trace.
    let span = receiver.wait_for("the crash span of (b)", |s| {
        s["name"] == "process.core_signal" && s["attributes"]["process.pid"] == thread
    });
    assert_eq!(span["trace_id"], trace(2));
    assert_eq!(span["parent_span_id"], PARENT);
    assert_eq!(span["attributes"]["probe.trace.tie"], "thread");
    let span = receiver.wait_for("the reset span of (a)", |s| {
        s["name"] == "tcp.reset.sent" && s["attributes"]["network.local.port"] == port_of(&reset)
    });
    assert_eq!(span["trace_id"], trace(1));
    assert_eq!(span["parent_span_id"], PARENT);
    probe.stop();
}

/// (c) A Wasm module under the real wasmtime serves the request inetd-style (the accepted
/// socket is its stdin and stdout): it reads the request, writes a line to stderr, then
/// answers. The line joins the request's trace (by thread or process: wasmtime may read stdin
/// on a thread of its own), as JSON and as an OTLP log record with the trace's IDs; a line the
/// same module writes for an untraced request does not.
#[test]
fn a_wasm_handlers_log_line_joins_the_trace_of_the_request_it_served() {
    if !require_root(
        "sock_recv_length::a_wasm_handlers_log_line_joins_the_trace_of_the_request_it_served",
    ) {
        return;
    }
    let (client, server) = nodes();
    let dir = TempDir::new("inetd");
    let module = dir.0.join("handler.wat");
    std::fs::write(&module, INETD_HANDLER).unwrap();
    let mut receiver = OtlpReceiver::start(env!("CARGO_BIN_EXE_otlp_receiver"), None);
    let mut probe = receiver.probe();
    let _warm = WarmRuntime::start(&probe);
    let handle = |trace: Option<&str>| -> u32 {
        let listener = server.enter(|| std::net::TcpListener::bind((SERVER, 0)).expect("bind"));
        let port = listener.local_addr().unwrap().port();
        let conn = connect(&client, port);
        let (accepted, _) = listener.accept().unwrap();
        let child = std::process::Command::new(wasmtime_bin())
            .arg("run")
            .arg(&module)
            .stdin(Stdio::from(std::os::fd::OwnedFd::from(
                accepted.try_clone().unwrap(),
            )))
            .stdout(Stdio::from(std::os::fd::OwnedFd::from(accepted)))
            .stderr(Stdio::piped())
            .spawn()
            .expect("wasmtime");
        let pid = child.id();
        send_unseen(&conn, &request(trace));
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "wasmtime: {out:?}");
        assert_eq!(out.stderr, b"handling checkout\n");
        let mut answer = [0u8; 64];
        let n = std::io::Read::read(&mut &conn, &mut answer).unwrap();
        assert_eq!(&answer[..n], b"HTTP/1.1 204 No Content\r\n\r\n");
        pid
    };
    let traced = handle(Some(&trace(8)));
    let untraced = handle(None);
    let line = |probe: &mut Probe, pid: u32| {
        probe
            .wait_for(WAIT, |r| {
                r["kind"] == "wasm_output" && r["pid"] == pid && r["stream"] == "stderr"
            })
            .unwrap_or_else(|| panic!("no wasm_output record of wasmtime {pid}"))
    };
    let r = line(&mut probe, traced);
    assert_eq!(r["text"], "handling checkout", "{r:#}");
    assert_eq!(r["stream"], "stderr");
    assert_eq!(r["trace_id"], trace(8), "{r:#}");
    assert_eq!(r["parent_span_id"], PARENT);
    let _ = writeln!(
        std::io::stderr(),
        "wasmtime's stderr line was tied by {}",
        r["trace_tie"]
    );
    assert!(
        r["trace_tie"] == "thread" || r["trace_tie"] == "process",
        "{r:#}"
    );
    let plain = line(&mut probe, untraced);
    assert_eq!(plain.get("trace_id"), None, "{plain:#}");
    let log = receiver.wait_for("the handler's log record", |l| {
        l["signal"] == "log"
            && l["attributes"]["process.pid"] == traced
            && l["attributes"]["log.iostream"] == "stderr"
    });
    assert_eq!(log["trace_id"], trace(8));
    assert_eq!(log["span_id"], PARENT);
    probe.stop();
}

/// A WASI command that reads a request from stdin, writes a line to stderr, and answers on
/// stdout (an inetd-style handler).
const INETD_HANDLER: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 2048) "handling checkout\n")
  (data (i32.const 2112) "HTTP/1.1 204 No Content\r\n\r\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 4096))
    (i32.store (i32.const 4) (i32.const 2048))
    (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 16)))
    (i32.store (i32.const 32) (i32.const 2048))
    (i32.store (i32.const 36) (i32.const 18))
    (drop (call $fd_write (i32.const 2) (i32.const 32) (i32.const 1) (i32.const 48)))
    (i32.store (i32.const 64) (i32.const 2112))
    (i32.store (i32.const 68) (i32.const 27))
    (drop (call $fd_write (i32.const 1) (i32.const 64) (i32.const 1) (i32.const 80)))
  )
)
"#;

fn port_of(reset: &Value) -> u64 {
    reset["sport"].as_u64().expect("sport")
}

/// The ways a server reads: read(2), recvfrom(2) (what recv(2) is), readv(2) and
/// recvmsg(2). Each server thread reads one traced request its own way and aborts the
/// connection: each reset carries its own request's trace.
#[test]
fn every_way_a_server_reads_a_request_is_seen() {
    if !require_root("sock_recv_length::every_way_a_server_reads_a_request_is_seen") {
        return;
    }
    let (client, server) = nodes();
    let mut probe = Probe::start(&["--http-trace-context", "true"]);
    let ways = ["read", "recvfrom", "readv", "recvmsg"];
    let mut ports = Vec::new();
    for (i, way) in ways.into_iter().enumerate() {
        let listener = server.enter(|| std::net::TcpListener::bind((SERVER, 0)).expect("bind"));
        let port = listener.local_addr().unwrap().port();
        let reader = std::thread::spawn(move || {
            let (conn, _) = listener.accept().expect("accept");
            let n = read_by(&conn, way);
            assert!(n > 0, "{way} read nothing");
            socket2::SockRef::from(&conn)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
        });
        let conn = connect(&client, port);
        send_unseen(&conn, &request(Some(&trace(0x10 + i as u8))));
        reader.join().unwrap();
        ports.push((way, port, conn));
    }
    for (i, (way, port, _)) in ports.iter().enumerate() {
        let port = *port;
        let r = probe
            .wait_for(WAIT, |r| {
                r["kind"] == "tcp_reset" && r["direction"] == "sent" && r["sport"] == port
            })
            .unwrap_or_else(|| panic!("the reset after {way}"));
        assert_eq!(r["trace_id"], trace(0x10 + i as u8), "{way}: {r:#}");
        assert_eq!(r["trace_tie"], "connection", "{way}");
    }
    probe.stop();
}

/// One read of up to 2 KiB from `conn` with the syscall `way`.
fn read_by(conn: &TcpStream, way: &str) -> isize {
    let fd = conn.as_raw_fd();
    let mut buf = [0u8; 2048];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: reads into a local buffer through valid descriptors and structures.
    unsafe {
        match way {
            "read" => libc::read(fd, iov.iov_base, iov.iov_len),
            "recvfrom" => libc::recvfrom(
                fd,
                iov.iov_base,
                iov.iov_len,
                0,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            ),
            "readv" => libc::readv(fd, &iov, 1),
            "recvmsg" => {
                let mut msg: libc::msghdr = std::mem::zeroed();
                msg.msg_iov = &mut iov;
                msg.msg_iovlen = 1;
                libc::recvmsg(fd, &mut msg, 0)
            }
            other => panic!("unknown way {other}"),
        }
    }
}
