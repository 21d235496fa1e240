//! Root e2e: `ssl_read` (probe-ebpf/src/ssl_read.rs), the server's end of the trace tie through
//! TLS. A TLS server on Debian's Python (its `_ssl` on the system OpenSSL 3) reads a request
//! with a known traceparent, then crashes on the thread that read it: the core signal is in the
//! request's trace, tied by thread (only the server's read can tie it: a client's end ties
//! records of its connection, never a crash). A server that answered before crashing, or read
//! a request without a traceparent, ties nothing.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use probe_tests::*;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// Serves one TLS connection on loopback: prints its port, reads one request (`SSL_read_ex`),
/// answers it when the mode says so, then dereferences a null pointer (SIGSEGV on the reading
/// thread).
const PYTHON_SERVER: &str = r#"
import ctypes, socket, ssl, sys
cert, key, mode = sys.argv[1], sys.argv[2], sys.argv[3]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(1)
print(listener.getsockname()[1], flush=True)
raw, _ = listener.accept()
conn = ctx.wrap_socket(raw, server_side=True)
request = conn.recv(4096)
assert request.startswith(b"GET /checkout HTTP/1.1"), request
if mode == "answer":
    conn.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
ctypes.string_at(0)
"#;

/// An HTTPS client sending `GET /checkout` (with `traceparent` when `trace` is not "-") and
/// waiting for the connection to end.
const PYTHON_CLIENT: &str = r#"
import http.client, ssl, sys
port, trace = int(sys.argv[1]), sys.argv[2]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
client = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)
headers = {"traceparent": f"00-{trace}-00f067aa0ba902b7-01"} if trace != "-" else {}
client.request("GET", "/checkout", headers=headers)
try:
    client.getresponse().read()
except Exception:
    pass
"#;

/// One request to a server in `mode`; the server's pid once it died, and its signal.
fn one_request(cert: &Path, key: &Path, mode: &str, trace: &str) -> (u32, Option<i32>) {
    let mut server: Child = Command::new("/usr/bin/python3")
        .args(["-c", PYTHON_SERVER])
        .arg(cert)
        .arg(key)
        .arg(mode)
        .stdout(Stdio::piped())
        .spawn()
        .expect("Debian's python3");
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line.trim().to_owned();
    let client = Command::new("/usr/bin/python3")
        .args(["-c", PYTHON_CLIENT, &port, trace])
        .status()
        .expect("Debian's python3");
    assert!(client.success(), "the Python TLS client failed");
    let status = server.wait().unwrap();
    use std::os::unix::process::ExitStatusExt as _;
    (server.id(), status.signal())
}

#[test]
fn a_tls_server_crash_joins_the_trace_of_the_request_it_read() {
    if !require_root("ssl_read::a_tls_server_crash_joins_the_trace_of_the_request_it_read") {
        return;
    }
    let (_dir, cert, key) = server_certificates("ssl-read");
    let mut receiver = OtlpReceiver::start(env!("CARGO_BIN_EXE_otlp_receiver"), None);
    let mut probe = receiver.probe();
    let hooked = probe.hook("http_request_tls_received").is_some()
        && probe.hook("http_request_received").is_some()
        && probe.hook("http_request_head").is_some();
    if !hooked {
        return;
    }
    let crash = |probe: &mut Probe, pid: u32| {
        probe
            .wait_for(Duration::from_secs(20), |r| {
                r["kind"] == "core_signal" && r["pid"] == pid
            })
            .unwrap_or_else(|| panic!("no core_signal record for the server {pid}"))
    };

    // The server crashes on the thread that read the traced request.
    let (served, signal) = one_request(&cert, &key, "crash", TRACE);
    assert_eq!(signal, Some(11));
    let r = crash(&mut probe, served);
    assert_eq!(r["tid"], served);
    assert_eq!(r["signal"], 11);
    assert_eq!(r["trace_id"], TRACE, "{r:#}");
    assert_eq!(r["parent_span_id"], PARENT);
    assert_eq!(r["trace_tie"], "thread");

    // It answered before crashing: the request was over.
    let (answered, _) = one_request(&cert, &key, "answer", TRACE);
    let r = crash(&mut probe, answered);
    assert_eq!(r.get("trace_id"), None, "{r:#}");

    // A request without a traceparent.
    let (untraced, _) = one_request(&cert, &key, "crash", "-");
    let r = crash(&mut probe, untraced);
    assert_eq!(r.get("trace_id"), None, "{r:#}");

    let span = receiver.wait_for("the crash span", |s| {
        s["name"] == "process.core_signal" && s["attributes"]["process.pid"] == served
    });
    assert_eq!(span["trace_id"], TRACE);
    assert_eq!(span["parent_span_id"], PARENT);
    assert_eq!(span["attributes"]["probe.trace.tie"], "thread");
    probe.stop();
}
