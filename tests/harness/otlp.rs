//! The test OTLP receiver (tests/bin/otlp_receiver.rs) driven from the tests.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use crate::Value;

const WAIT: Duration = Duration::from_secs(15);

/// The test OTLP receiver (bin/otlp_receiver.rs) as a child process; what it received.
pub struct OtlpReceiver {
    child: Child,
    lines: mpsc::Receiver<Value>,
    seen: Vec<Value>,
    pub grpc: String,
    pub http: String,
}

impl OtlpReceiver {
    /// `bin`: `env!("CARGO_BIN_EXE_otlp_receiver")` of the test.
    pub fn start(bin: &str, ports: Option<(u16, u16)>) -> Self {
        Self::start_with(bin, ports, None, "")
    }

    /// The receiver with `OTLP_RECEIVER_FAULTS` set (see bin/otlp_receiver.rs).
    pub fn start_faulty(bin: &str, faults: &str) -> Self {
        Self::start_with(bin, None, None, faults)
    }

    /// The receiver with TLS on both endpoints; `dir` holds cert.pem and key.pem
    /// ([`tls_certificates`]).
    pub fn start_tls(bin: &str, dir: &std::path::Path) -> Self {
        Self::start_with(bin, None, Some(dir), "")
    }

    fn start_with(
        bin: &str,
        ports: Option<(u16, u16)>,
        tls: Option<&std::path::Path>,
        faults: &str,
    ) -> Self {
        let mut cmd = Command::new(bin);
        cmd.env("OTLP_RECEIVER_FAULTS", faults);
        if let Some(dir) = tls {
            cmd.env("OTLP_RECEIVER_TLS", dir);
        }
        if let Some((g, h)) = ports {
            cmd.args([g.to_string(), h.to_string()]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("otlp_receiver");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        stdout.read_line(&mut first).unwrap();
        let addrs: Value = serde_json::from_str(&first).expect("receiver address line");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { break };
                if tx
                    .send(serde_json::from_str::<Value>(&line).unwrap())
                    .is_err()
                {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
            grpc: addrs["grpc"].as_str().unwrap().to_owned(),
            http: addrs["http"].as_str().unwrap().to_owned(),
        }
    }

    /// Waits for a received span or log record satisfying `pred`; panics naming `what`.
    pub fn wait_for(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(v) = self.seen.iter().find(|v| pred(v)) {
            return v.clone();
        }
        let deadline = Instant::now() + WAIT;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Ok(v) = self.lines.recv_timeout(left) else {
                break;
            };
            self.seen.push(v.clone());
            if pred(&v) {
                return v;
            }
        }
        panic!("the receiver did not get {what}; it got {:#?}", self.seen);
    }
}

impl OtlpReceiver {
    /// The agent writing JSON lines and exporting OTLP (gRPC) to this receiver, with the trace
    /// tie (the files using it test the tie's spans).
    pub fn probe(&self) -> crate::Probe {
        crate::Probe::start(&[
            "--http-trace-context",
            "true",
            "--output",
            "json,otlp",
            "--otlp-endpoint",
            &format!("http://{}", self.grpc),
        ])
    }

    /// Every line received so far, after collecting for `wait`.
    pub fn collect(&mut self, wait: Duration) -> &[Value] {
        let deadline = Instant::now() + wait;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(v) => self.seen.push(v),
                Err(_) => break,
            }
        }
        &self.seen
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh directory (removed when dropped) with a server certificate for 127.0.0.1
/// (`tls_certificates`): the directory, cert.pem and key.pem.
pub fn server_certificates(name: &str) -> (crate::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = crate::TempDir::new(name);
    tls_certificates(&dir.0);
    let (cert, key) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
    (dir, cert, key)
}

/// A CA and a server certificate for 127.0.0.1 signed by it, made with the openssl CLI in
/// `dir`: cert.pem and key.pem for the receiver; returns the CA certificate's path (what a
/// client trusts through SSL_CERT_FILE).
pub fn tls_certificates(dir: &std::path::Path) -> std::path::PathBuf {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("the openssl CLI");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &["-keyout", "ca.key", "-out", "ca.pem"],
            &["-subj", "/CN=probe test CA", "-days", "2"],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &["-keyout", "key.pem", "-out", "server.csr"],
            &["-subj", "/CN=127.0.0.1"],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "cert.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
    dir.join("ca.pem")
}
