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
        let mut cmd = Command::new(bin);
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

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
