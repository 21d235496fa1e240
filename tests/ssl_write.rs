//! Root e2e: `ssl_write` (probe-ebpf/src/ssl_write.rs), the trace tie through TLS. A request
//! with a known traceparent is sent over TLS by the system's OpenSSL 3 (Python's `http.client`
//! and curl), the server resets the connection: the client's received reset and the server's
//! sent one are in the request's trace, a child of the client's span (JSON record and OTLP
//! span). A TLS request without a traceparent on the same kind of connection ties nothing.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use probe_tests::*;
use serde_json::json;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";
const OTHER: &str = "0af7651916cd43dd8448eb211c80319c";

/// A TLS server on loopback that reads one request and resets the connection (SO_LINGER 0),
/// and an `http.client` HTTPS client sending `GET /checkout` with `traceparent` (if any) to
/// it; prints the client's local port. Debian's Python: its `_ssl` links the system libssl.
const PYTHON_CLIENT: &str = r#"
import http.client, socket, ssl, struct, sys, threading
import time
cert, key, trace = sys.argv[1], sys.argv[2], sys.argv[3]
# With libssl mapped (the ssl module), wait before the request when asked: an agent that
# attaches per process (--tls-processes) sees this one at its next scan.
time.sleep(float(sys.argv[4]) if len(sys.argv) > 4 else 0)
server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
server_ctx.load_cert_chain(cert, key)
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(1)
port = listener.getsockname()[1]
def serve():
    raw, _ = listener.accept()
    conn = server_ctx.wrap_socket(raw, server_side=True)
    request = conn.recv(4096)
    assert request.startswith(b"GET /checkout HTTP/1.1"), request
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
server = threading.Thread(target=serve)
server.start()
client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
client_ctx.check_hostname = False
client_ctx.verify_mode = ssl.CERT_NONE
client = http.client.HTTPSConnection("127.0.0.1", port, context=client_ctx)
client.connect()
local = client.sock.getsockname()[1]
headers = {"traceparent": f"00-{trace}-00f067aa0ba902b7-01"} if trace != "-" else {}
client.request("GET", "/checkout", headers=headers)
try:
    client.getresponse()
    sys.exit("the server answered instead of resetting")
except (ConnectionResetError, http.client.RemoteDisconnected, ssl.SSLError, OSError):
    pass
server.join()
print(local)
"#;

/// Runs the Python client with `trace` ("-": none); its local port.
fn python_request(cert: &Path, key: &Path, trace: &str) -> u16 {
    let out = Command::new("/usr/bin/python3")
        .args(["-c", PYTHON_CLIENT])
        .arg(cert)
        .arg(key)
        .arg(trace)
        .stderr(Stdio::inherit())
        .output()
        .expect("Debian's python3");
    assert!(out.status.success(), "the Python TLS client failed");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("the client's port")
}

/// Whether the TLS hook is there (loud when not): the uprobes need a libssl on the node.
fn tls_hook(probe: &Probe) -> bool {
    probe
        .hook("http_request_tls")
        .is_some_and(|h| h.contains("uprobe"))
        && probe.hook("http_request_head").is_some()
}

#[test]
fn a_reset_joins_the_trace_of_a_request_sent_over_tls() {
    if !require_root("ssl_write::a_reset_joins_the_trace_of_a_request_sent_over_tls") {
        return;
    }
    let (_dir, cert, key) = server_certificates("ssl-write-python");
    let mut receiver = OtlpReceiver::start(env!("CARGO_BIN_EXE_otlp_receiver"), None);
    let mut probe = receiver.probe();
    if !tls_hook(&probe) {
        return;
    }
    let status: Value =
        serde_json::from_str(&http_get(probe.http_addr(), "/health/status").2).unwrap();
    let covered = status["tls_libraries"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        covered.iter().any(
            |l| l["path"].as_str().is_some_and(|p| p.contains("libssl.so"))
                && ["ssl_write", "ssl_write_ex"].iter().all(|p| l["programs"]
                    .as_array()
                    .is_some_and(|a| a.contains(&json!(p))))
        ),
        "the system libssl is covered: {covered:#?}"
    );
    let traced = python_request(&cert, &key, TRACE);
    let plain = python_request(&cert, &key, "-");
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
    probe.stop();

    assert_eq!(record["trace_id"], TRACE, "{record:#}");
    assert_eq!(record["parent_span_id"], PARENT);
    assert_eq!(record["trace_tie"], "connection");
    assert_eq!(record["dport"], server_side["sport"]);
    assert_eq!(span["trace_id"], TRACE);
    assert_eq!(span["parent_span_id"], PARENT);
    assert_eq!(span["attributes"]["probe.trace.tie"], "connection");
    assert_eq!(server_side["trace_id"], TRACE, "{server_side:#}");
    assert_eq!(untraced.get("trace_id"), None, "{untraced:#}");
}

/// curl (libcurl on the system's OpenSSL 3) against nginx over TLS; nginx closes the request
/// with `return 444` and `reset_timedout_connection on`: a reset, in the request's trace.
#[test]
fn curl_to_nginx_over_tls() {
    if !require_root("ssl_write::curl_to_nginx_over_tls") {
        return;
    }
    let (dir, cert, key) = server_certificates("ssl-write-nginx");
    let nginx = Nginx::start(&dir.0, &cert, &key);
    let mut probe = Probe::start(&["--http-trace-context", "true"]);
    if !tls_hook(&probe) {
        return;
    }
    let port = curl_traced(nginx.port);
    let record = probe.reset_at("received", port, "curl's reset");
    probe.stop();
    assert_eq!(record["trace_id"], OTHER, "{record:#}");
    assert_eq!(record["parent_span_id"], PARENT);
}

/// `--tls-processes python3*`: the uprobes are attached for each Python process alone (Debian's
/// `python3.11`), from the watcher's scan after it maps libssl; curl's requests (the same
/// libssl file, not listed) are not read.
#[test]
fn only_the_listed_processes_are_read() {
    if !require_root("ssl_write::only_the_listed_processes_are_read") {
        return;
    }
    let (dir, cert, key) = server_certificates("ssl-write-scoped");
    let nginx = Nginx::start(&dir.0, &cert, &key);
    let mut probe = Probe::start(&[
        "--http-trace-context",
        "true",
        "--tls-processes",
        "python3*",
    ]);
    if !tls_hook(&probe) {
        return;
    }
    let curl_port = curl_traced(nginx.port);
    // Two scans of the watcher (every 2 s) fit in the client's wait; the status names it
    // while it waits.
    let python = Command::new("/usr/bin/python3")
        .args(["-c", PYTHON_CLIENT])
        .arg(&cert)
        .arg(&key)
        .args([TRACE, "6"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("Debian's python3");
    let pid = i64::from(python.id());
    let mut covered = Vec::new();
    for _ in 0..60 {
        let status: Value =
            serde_json::from_str(&http_get(probe.http_addr(), "/health/status").2).unwrap();
        covered = status["tls_libraries"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if covered.iter().any(|l| l["pid"] == pid) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = python.wait_with_output().expect("the Python client");
    assert!(out.status.success(), "the Python TLS client failed");
    let traced: u16 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let record = probe.reset_at("received", traced, "the Python client's reset");
    let curl = probe.reset_at("received", curl_port, "curl's reset");
    probe.stop();
    assert!(
        covered.iter().any(|l| l["pid"] == pid
            && l["programs"]
                .as_array()
                .is_some_and(|a| a.contains(&json!("ssl_write")))),
        "the Python client's libssl, for it alone: {covered:#?}"
    );
    assert!(
        covered
            .iter()
            .all(|l| l["pid"].as_i64().is_some_and(|p| p > 0)),
        "every attach is for one process: {covered:#?}"
    );
    assert_eq!(record["trace_id"], TRACE, "{record:#}");
    assert_eq!(record["trace_tie"], "connection");
    assert_eq!(curl.get("trace_id"), None, "curl is not listed: {curl:#}");
}

/// curl's traced `GET /checkout` over TLS to nginx on `port`, which resets it; curl's local
/// port.
fn curl_traced(port: u16) -> u16 {
    let out = Command::new("curl")
        .args(["-sk", "--http1.1", "-o", "/dev/null", "-w", "%{local_port}"])
        .args(["-H", &format!("traceparent: 00-{OTHER}-{PARENT}-01")])
        .arg(format!("https://127.0.0.1:{port}/checkout"))
        .output()
        .expect("curl");
    // 56: failure receiving (the reset); 52: empty reply (a close without one).
    assert_eq!(
        out.status.code(),
        Some(56),
        "curl's exit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("curl's local port")
}

/// nginx on a free loopback port with TLS, closing every request with a reset.
struct Nginx {
    child: std::process::Child,
    port: u16,
}

impl Nginx {
    fn start(dir: &Path, cert: &Path, key: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let d = dir.display();
        let conf = format!(
            "daemon off;\nworker_processes 1;\nerror_log {d}/error.log;\npid {d}/nginx.pid;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n access_log off;\n client_body_temp_path {d};\n proxy_temp_path {d};\n\
             fastcgi_temp_path {d};\n uwsgi_temp_path {d};\n scgi_temp_path {d};\n\
             reset_timedout_connection on;\n\
             server {{\n  listen 127.0.0.1:{port} ssl;\n  ssl_certificate {};\n\
             ssl_certificate_key {};\n  location / {{ return 444; }}\n }}\n}}\n",
            cert.display(),
            key.display()
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let child = Command::new("nginx")
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stderr(Stdio::inherit())
            .spawn()
            .expect("nginx (installed by cargo xtask test)");
        // Owned at once: stopped (and waited for) on every path.
        let nginx = Self { child, port };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return nginx;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(nginx);
        panic!("nginx did not listen on 127.0.0.1:{port}");
    }
}

impl Drop for Nginx {
    /// SIGTERM to the master, which stops its worker (a SIGKILL would orphan it).
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}
