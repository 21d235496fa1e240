//! A kind the renderers have never heard of goes through every one of them: it only
//! implements `Describe` and `KindName` next to its type (what docs/architecture.md "Adding an event kind"
//! asks of a new kind), and travels as `Body::Other`.

use std::borrow::Cow;

use serde::Serialize;

use super::{JsonSink, Sink, TerminalSink, otlp::convert};
use crate::model::{
    Attrs, Body, Common, Describe, Other, Record,
    describe::{KindName, Line, Tone},
    samples,
};

/// Say: an OOM kill, as a future hook would report it.
#[derive(Debug, Clone, Serialize)]
struct OomKill {
    victim_pid: u32,
    pages: u64,
}

impl KindName for OomKill {
    const KIND: &'static str = "oom_kill";
}

impl Describe for OomKill {
    fn line(&self, c: &Common) -> Line {
        Line {
            tag: "OOM kill    ".into(),
            tone: Tone::Alarm,
            text: format!(
                "victim={} pages={} cgroup={:?}",
                self.victim_pid, self.pages, c.cgroup_id
            ),
        }
    }
    fn layer(&self) -> &'static str {
        "container"
    }
    fn span_name(&self) -> Option<Cow<'static, str>> {
        Some("process.oom_kill".into())
    }
    fn span_error(&self) -> Option<String> {
        Some("out of memory".into())
    }
    fn attributes(&self, a: &mut Attrs) {
        a.int("probe.victim_pid", self.victim_pid);
        a.int("probe.pages", self.pages);
    }
}

fn oom() -> Record {
    let mut r = samples::reset();
    r.body = Body::Other(Other::new(OomKill {
        victim_pid: 4242,
        pages: 1 << 20,
    }));
    r.kind = r.body.kind();
    r
}

#[test]
fn a_new_kind_renders_everywhere_without_touching_a_renderer() {
    let r = oom();
    assert_eq!(r.kind, "oom_kill");
    // The stage that handles it gets its type back.
    let Body::Other(other) = &r.body else {
        unreachable!()
    };
    assert_eq!(other.downcast_ref::<OomKill>().unwrap().victim_pid, 4242);
    assert_eq!(r.clone(), r);

    let mut json = JsonSink::new(Vec::new());
    json.write(&r).unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&json.into_inner()).unwrap();
    assert_eq!(doc["kind"], "oom_kill");
    assert_eq!(doc["victim_pid"], 4242);
    assert_eq!(doc["pages"], 1 << 20);
    assert_eq!(doc["k8s.pod.name"], "redis-client-1");

    let mut term = TerminalSink::new(Vec::new(), false);
    term.write(&r).unwrap();
    assert_eq!(
        String::from_utf8(term.into_inner()).unwrap(),
        "1970-01-01T00:00:01.000Z OOM kill     victim=4242 pages=1048576 cgroup=Some(2)\n"
    );

    let spans = convert::spans(&r);
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].name, "process.oom_kill");
    let status = spans[0].status.as_ref().expect("an error status");
    assert_eq!((status.code, status.message.as_str()), (2, "out of memory"));
    let attr = |key: &str| {
        use opentelemetry_proto::tonic::common::v1::any_value::Value;
        spans[0]
            .attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .and_then(|kv| kv.value.clone()?.value)
            .map(|v| match v {
                Value::StringValue(s) => s,
                Value::IntValue(i) => i.to_string(),
                other => format!("{other:?}"),
            })
    };
    assert_eq!(attr("isolation.layer").as_deref(), Some("container"));
    assert_eq!(attr("probe.pages").as_deref(), Some("1048576"));
    assert_eq!(attr("k8s.namespace.name").as_deref(), Some("payments"));
}
