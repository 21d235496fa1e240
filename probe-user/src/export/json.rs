//! JSON Lines: one object per record (the contract in docs/json.md).

use std::io::{self, Write};

use super::Sink;
use crate::model::Record;

pub struct JsonSink<W: Write + Send> {
    out: W,
    /// One line is serialized here, then written in one call (serde_json writes many small
    /// pieces; a Vec takes them cheaper than the output's writer).
    line: Vec<u8>,
}

impl<W: Write + Send> JsonSink<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            line: Vec::with_capacity(1024),
        }
    }

    #[cfg(test)]
    pub(crate) fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write + Send> Sink for JsonSink<W> {
    fn write(&mut self, record: &Record) -> io::Result<()> {
        self.line.clear();
        if !super::json_fast::write(&mut self.line, record) {
            serde_json::to_writer(&mut self.line, record)?;
        }
        self.line.push(b'\n');
        self.out.write_all(&self.line)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::terminal::tests::{core_signal_record, loss_record, reset_record};

    fn render(r: &Record) -> serde_json::Value {
        let mut sink = JsonSink::new(Vec::new());
        sink.write(r).unwrap();
        let text = String::from_utf8(sink.out).unwrap();
        assert!(text.ends_with('\n') && text.matches('\n').count() == 1);
        serde_json::from_str(&text).unwrap()
    }

    #[test]
    fn tcp_reset_contract() {
        assert_eq!(
            render(&reset_record()),
            serde_json::json!({
                "time_unix_nano": 1_700_000_000_123_456_789u64,
                "time": "2023-11-14T22:13:20.123456789Z",
                "kind": "tcp_reset",
                "node": "node-1",
                "netns": 4026531840u32,
                "cgroup_id": 4711,
                "pid": 1234,
                "tid": 1235,
                "comm": "redis-cli",
                "direction": "sent",
                "family": "ipv4",
                "saddr": "127.0.0.1",
                "sport": 40000,
                "daddr": "127.0.0.1",
                "dport": 6379,
                "tcp_state": "ESTABLISHED",
                "reason": "TCP_ABORT_ON_LINGER",
                "socket_cookie": 99,
            })
        );
    }

    #[test]
    fn core_signal_and_wasm_output_contract() {
        use crate::model::{Body, CoreSignal, RlimitCore, Stream, WasmOutput};
        let mut r = core_signal_record();
        if let Body::CoreSignal(c) = &mut r.body {
            **c = CoreSignal {
                core_dumped: Some(true),
                core_suppressed_by: None,
                rlimit_core: Some(RlimitCore(u64::MAX)),
                exit_code: Some(139),
                ..(**c).clone()
            };
        }
        let v = render(&r);
        assert_eq!(v["kind"], "core_signal");
        assert_eq!(v["rlimit_core"], "unlimited");
        assert_eq!(v["origin"], "kernel");
        assert_eq!(v["handler"], "default");
        assert_eq!(v["core_dumped"], true);
        assert_eq!(v["core_suppressed_by"], serde_json::Value::Null);
        assert_eq!(v["exit_code"], 139);
        assert_eq!(v["pid"], 1234);

        r.kind = "wasm_output";
        r.body = Body::WasmOutput(Box::new(WasmOutput {
            stream: Stream::Stderr,
            runtime: "wasmtime".into(),
            text: "\\xff".into(),
            data_b64: Some("/w==".into()),
            partial: false,
            truncated: false,
            write_result: Some(2),
            fd_target: Some("/dev/null".into()),
        }));
        let v = render(&r);
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        for key in [
            "stream",
            "runtime",
            "text",
            "data_b64",
            "partial",
            "truncated",
            "write_result",
            "fd_target",
        ] {
            assert!(keys.contains(&key), "{key} missing: {keys:?}");
        }
        assert_eq!(v["stream"], "stderr");
        assert_eq!(v["data_b64"], "/w==");
        assert_eq!(v["fd_target"], "/dev/null");
    }

    #[test]
    fn loss_contract_with_nulls() {
        assert_eq!(
            render(&loss_record()),
            serde_json::json!({
                "time_unix_nano": 1_700_000_000_000_000_000u64,
                "time": "2023-11-14T22:13:20.000000000Z",
                "kind": "loss",
                "node": "node-1",
                "netns": null,
                "cgroup_id": null,
                "pid": null,
                "tid": null,
                "comm": null,
                "source": "ringbuf",
                "count": 17,
                "lost_kind": "tcp_reset",
            })
        );
    }
}
