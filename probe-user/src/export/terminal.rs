//! The live terminal stream: one readable line per record, coloured only on a terminal.

use std::{
    io::{self, Write},
    time::{Duration, UNIX_EPOCH},
};

use super::Sink;
use crate::model::{Record, describe::Tone};

pub struct TerminalSink<W: Write + Send> {
    out: W,
    color: bool,
}

const RESET: &str = "\x1b[0m";
const RED: &str = "\x1b[31m";
const YELLOW: &str = "\x1b[33m";
const MAGENTA_BOLD: &str = "\x1b[1;35m";
const DIM: &str = "\x1b[2m";

impl<W: Write + Send> TerminalSink<W> {
    pub fn new(out: W, color: bool) -> Self {
        Self { out, color }
    }

    #[cfg(test)]
    pub(crate) fn into_inner(self) -> W {
        self.out
    }

    fn paint<'a>(&self, code: &'a str) -> (&'a str, &'static str) {
        if self.color { (code, RESET) } else { ("", "") }
    }
}

impl<W: Write + Send> Sink for TerminalSink<W> {
    /// `time TAG text`, the tag coloured by the kind's tone; internal kinds are not written.
    fn write(&mut self, r: &Record) -> io::Result<()> {
        let Some(body) = r.body.describe() else {
            return Ok(());
        };
        let line = body.line(&r.common);
        let time =
            humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_nanos(r.time_unix_nano));
        let (dim, dim_end) = self.paint(DIM);
        let (c, c_end) = self.paint(match line.tone {
            Tone::Dim => DIM,
            Tone::Warn => YELLOW,
            Tone::Alarm => RED,
            Tone::Notice => MAGENTA_BOLD,
        });
        writeln!(
            self.out,
            "{dim}{time}{dim_end} {c}{}{c_end} {}",
            line.tag, line.text
        )
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{
        decode::Common,
        model::{Body, Direction, Family, Loss, LossSource, TcpReset},
    };

    pub(crate) fn reset_record() -> Record {
        Record {
            time_unix_nano: 1_700_000_000_123_456_789,
            k8s: None,
            trace: None,
            kind: "tcp_reset",
            node: "node-1".into(),
            common: Common {
                ktime_ns: 5,
                netns: Some(4026531840),
                cgroup_id: Some(4711),
                pid: Some(1234),
                tid: Some(1235),
                comm: Some("redis-cli".into()),
            },
            body: Body::TcpReset(TcpReset {
                direction: Direction::Sent,
                family: Family::Ipv4,
                saddr: "127.0.0.1".parse().unwrap(),
                sport: 40000,
                daddr: "127.0.0.1".parse().unwrap(),
                dport: 6379,
                tcp_state: Some("ESTABLISHED".into()),
                reason: Some("TCP_ABORT_ON_LINGER".into()),
                socket_cookie: Some(99),
            }),
            span: crate::model::OwnSpan::UNASSIGNED,
        }
    }

    /// A SIGSEGV of redis-cli that wrote no core because RLIMIT_CORE was 0.
    pub(crate) fn core_signal_record() -> Record {
        use crate::model::{CoreSignal, Handler, RlimitCore};
        let mut r = reset_record();
        r.kind = "core_signal";
        r.body = Body::CoreSignal(Box::new(CoreSignal {
            signal: 11,
            signal_name: "SIGSEGV".into(),
            origin: crate::model::signals::Origin::Kernel,
            si_code: "SEGV_MAPERR".into(),
            sender_pid: Some(1234),
            sender_comm: Some("redis-cli".into()),
            sender_tid: None,
            result: "delivered".into(),
            handler: Some(Handler::Default),
            core_dumped: Some(false),
            core_suppressed_by: Some("rlimit_core=0".into()),
            rlimit_core: Some(RlimitCore(0)),
            dumpable: Some(1),
            core_pattern: Some("core".into()),
            core_uses_pid: Some(false),
            exit_code: Some(11),
        }));
        r
    }

    pub(crate) fn loss_record() -> Record {
        Record {
            time_unix_nano: 1_700_000_000_000_000_000,
            k8s: None,
            trace: None,
            kind: "loss",
            node: "node-1".into(),
            common: Common::none(),
            body: Body::Loss(Loss {
                source: LossSource::Ringbuf,
                count: 17,
                lost_kind: Some("tcp_reset"),
            }),
            span: crate::model::OwnSpan::UNASSIGNED,
        }
    }

    fn render(r: &Record, color: bool) -> String {
        let mut sink = TerminalSink::new(Vec::new(), color);
        sink.write(r).unwrap();
        String::from_utf8(sink.out).unwrap()
    }

    #[test]
    fn plain_lines() {
        assert_eq!(
            render(&reset_record(), false),
            "2023-11-14T22:13:20.123Z RST sent     127.0.0.1:40000 -> 127.0.0.1:6379 state=ESTABLISHED reason=TCP_ABORT_ON_LINGER task=redis-cli[1234] netns=4026531840 cgroup=4711 cookie=99\n"
        );
        assert_eq!(
            render(&loss_record(), false),
            "2023-11-14T22:13:20.000Z LOST        17 event(s) source=ringbuf kind=tcp_reset\n"
        );
    }

    #[test]
    fn unknowns_and_ipv6_received() {
        let mut r = reset_record();
        r.common = Common::none();
        if let Body::TcpReset(t) = &mut r.body {
            t.direction = Direction::Received;
            t.family = Family::Ipv6;
            t.saddr = "::1".parse().unwrap();
            t.daddr = "2001:db8::2".parse().unwrap();
            t.tcp_state = None;
            t.reason = None;
            t.socket_cookie = None;
        }
        assert_eq!(
            render(&r, false),
            "2023-11-14T22:13:20.123Z RST received [::1]:40000 -> [2001:db8::2]:6379 state=- reason=- task=- netns=- cgroup=- cookie=-\n"
        );
    }

    #[test]
    fn core_signal_line() {
        let r = core_signal_record();
        assert_eq!(
            render(&r, false),
            "2023-11-14T22:13:20.123Z SIGSEGV      redis-cli[1234] SEGV_MAPERR origin=kernel sender=redis-cli[1234] result=delivered no core (rlimit_core=0) rlimit_core=0 core_pattern=\"core\" exit_code=11 cgroup=4711 netns=4026531840\n"
        );
    }

    #[test]
    fn wasm_output_line() {
        use crate::model::{Stream, WasmOutput};
        let mut r = reset_record();
        r.kind = "wasm_output";
        r.body = Body::WasmOutput(Box::new(WasmOutput {
            stream: Stream::Stdout,
            runtime: "wasmtime".into(),
            text: "héllo".into(),
            data_b64: None,
            partial: true,
            truncated: true,
            write_result: Some(6),
            fd_target: Some("pipe".into()),
        }));
        assert_eq!(
            render(&r, false),
            "2023-11-14T22:13:20.123Z WASM stdout redis-cli[1234] runtime=wasmtime fd=pipe result=6 TRUNCATED | héllo\n"
        );
    }

    #[test]
    fn colour_only_when_asked() {
        let coloured = render(&reset_record(), true);
        assert!(
            coloured.contains("\x1b[31mRST sent    \x1b[0m"),
            "{coloured:?}"
        );
        assert!(!render(&reset_record(), false).contains('\x1b'));
    }
}
