//! The exporter's span names and attributes, and the dashboard's queries against them.

use std::collections::BTreeSet;

use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, any_value::Value as V};
use serde_json::Value;

use super::convert::{attributes, spans};
use crate::model::{Body, Evidence, Record, samples};

/// Span names and `span.`/`resource.` attributes the exporter emits for a record of every kind.
fn emitted() -> (BTreeSet<String>, BTreeSet<String>) {
    let mut names = BTreeSet::new();
    let mut attrs = BTreeSet::new();
    for r in samples::all() {
        for s in spans(&r) {
            names.insert(s.name.to_string());
        }
        for kv in attributes(&r) {
            attrs.insert(format!("span.{}", kv.key));
        }
    }
    let resource = super::resource("node-probe", "node-3", Some("prod"), &[]);
    for kv in &resource.attributes {
        attrs.insert(format!("resource.{}", kv.key));
    }
    (names, attrs)
}

#[test]
fn attributes_keep_their_types() {
    let value = |r: &Record, key: &str| {
        attributes(r)
            .into_iter()
            .find(|kv| kv.key.as_str() == key)
            .and_then(|kv| kv.value?.value)
    };
    let signal = samples::core_signal();
    assert_eq!(value(&signal, "signal.number"), Some(V::IntValue(11)));
    assert_eq!(
        value(&signal, "probe.rlimit_core"),
        Some(V::StringValue("unlimited".into()))
    );
    assert_eq!(
        value(&signal, "probe.core_dumped"),
        Some(V::BoolValue(false))
    );
    assert_eq!(value(&signal, "probe.sender_pid"), None, "null is left out");
    let expiry = samples::expiry();
    assert_eq!(
        value(&expiry, "probe.established_for_s"),
        Some(V::DoubleValue(7.5))
    );
    assert_eq!(
        value(&expiry, "probe.status"),
        Some(V::ArrayValue(ArrayValue {
            values: ["ASSURED", "DST_NAT"]
                .into_iter()
                .map(|s| AnyValue {
                    value: Some(V::StringValue(s.into()))
                })
                .collect()
        }))
    );
    assert_eq!(
        value(&expiry, "isolation.layer"),
        Some(V::StringValue("kernel.netfilter".into()))
    );
    let reset = samples::reset();
    assert_eq!(
        value(&reset, "k8s.pod.label.app"),
        Some(V::StringValue("redis-client".into()))
    );
    assert_eq!(
        value(&reset, "network.peer.address"),
        Some(V::StringValue("10.96.0.15".into()))
    );
    let node: Vec<_> = attributes(&reset)
        .into_iter()
        .filter(|kv| kv.key.as_str() == "k8s.node.name")
        .collect();
    assert_eq!(node.len(), 1, "one k8s.node.name");
}

/// `span.x.y` / `resource.x.y` identifiers and `name = "..."` / `name =~ "..."` values of a
/// TraceQL query.
fn query_terms(q: &str) -> (Vec<String>, Vec<String>) {
    let mut idents = Vec::new();
    for prefix in ["span.", "resource."] {
        let mut rest = q;
        while let Some(i) = rest.find(prefix) {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '_'))
                .unwrap_or(tail.len());
            idents.push(tail[..end].to_owned());
            rest = &tail[end..];
        }
    }
    let mut names = Vec::new();
    let mut rest = q;
    while let Some(i) = rest.find("name =") {
        let tail = &rest[i..];
        // `service.name = ...` is an attribute, not the span name.
        if rest[..i].ends_with('.') {
            rest = &tail[6..];
            continue;
        }
        let open = tail.find('"').unwrap() + 1;
        let close = open + tail[open..].find('"').unwrap();
        names.push(tail[open..close].to_owned());
        rest = &tail[close..];
    }
    (idents, names)
}

#[test]
fn every_name_and_attribute_the_dashboard_queries_is_emitted() {
    let dashboard: Value = serde_json::from_str(include_str!(
        "../../../../deploy/grafana/dashboards/node-probe.json"
    ))
    .unwrap();
    let (names, attrs) = emitted();
    let mut checked = 0;
    // The TraceQL panels (the Prometheus ones run against a real Prometheus: root test
    // `prometheus`).
    let tempo = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["datasource"]["type"] == "tempo");
    for panel in tempo {
        for target in panel["targets"].as_array().unwrap() {
            let q = target["query"].as_str().unwrap();
            let (idents, span_names) = query_terms(q);
            for ident in idents {
                assert!(
                    attrs.contains(&ident),
                    "{ident} (panel {:?}) is not emitted; emitted: {attrs:#?}",
                    panel["title"]
                );
                checked += 1;
            }
            for n in span_names {
                let hit = match n.strip_suffix(".*") {
                    Some(prefix) => names.iter().any(|e| e.starts_with(prefix)),
                    None => names.contains(&n),
                };
                assert!(
                    hit,
                    "span name {n:?} (panel {:?}) is not emitted: {names:?}",
                    panel["title"]
                );
                checked += 1;
            }
        }
    }
    assert!(
        checked > 20,
        "the dashboard queries almost nothing ({checked})"
    );
}

#[test]
fn a_finding_is_a_parent_span_with_its_evidence_as_children() {
    let mut record = samples::finding();
    if let Body::Finding(f) = &mut record.body {
        f.evidence.push(Evidence::Values(
            [("net.netfilter.nf_conntrack_max".to_owned(), 9.into())].into(),
        ));
    }
    record.time_unix_nano = 2_000_000_000;
    let out = spans(&record);
    assert_eq!(out.len(), 3);
    assert_eq!(out[0].name, "finding.conntrack_expiry_reset");
    assert_eq!(out[0].trace_id.len(), 16);
    assert_eq!(out[0].span_id.len(), 8);
    assert!(out[0].parent_span_id.is_empty(), "a trace of its own");
    let children: Vec<&str> = out[1..].iter().map(|s| s.name.as_str()).collect();
    assert_eq!(children, ["conntrack.expiry", "tcp.reset.sent"]);
    for child in &out[1..] {
        assert_eq!(child.trace_id, out[0].trace_id);
        assert_eq!(child.parent_span_id, out[0].span_id);
        assert_ne!(child.span_id, out[0].span_id);
        assert_eq!(child.start_time_unix_nano, 1_000_000_000);
    }
    let layers: Vec<String> = out[1..]
        .iter()
        .map(|s| {
            let v = s
                .attributes
                .iter()
                .find(|kv| kv.key.as_str() == "isolation.layer")
                .and_then(|kv| kv.value.clone()?.value);
            match v {
                Some(V::StringValue(s)) => s,
                other => panic!("{other:?}"),
            }
        })
        .collect();
    assert_eq!(layers, ["kernel.netfilter", "kernel.tcp"]);
}

#[test]
fn a_span_and_its_log_record_carry_the_ids_chosen_before_the_sinks() {
    use prost::Message as _;
    let mut line = samples::wasm();
    line.span = crate::model::OwnSpan::from_random(0x1122_3344_5566_7788).unwrap();
    let (trace_id, span_id) = line.span_ids().unwrap();
    let span = &spans(&line)[0];
    assert_eq!(span.span_id, span_id.to_vec());
    assert_eq!(span.trace_id, trace_id.to_vec());
    assert_eq!(span_id, [0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88]);
    let mut enc = super::wire::AttrEncoder::default();
    super::convert::encode_attributes(&line, &mut enc);
    let log_line = line.body.describe().unwrap().log().unwrap();
    let log = super::convert::log_message(&line, enc.entries(), &log_line, 1);
    let log = opentelemetry_proto::tonic::logs::v1::LogRecord::decode(log.as_slice()).unwrap();
    assert_eq!(
        log.span_id, span.span_id,
        "the log record points at its span"
    );
    assert_eq!(log.trace_id, span.trace_id);
    // Inside a request's trace, the span is the client's child and keeps its own ID.
    let mut traced = samples::reset();
    traced.span = line.span;
    let parent = crate::model::TraceParent {
        trace_id: [7; 16],
        span_id: [9; 8],
        flags: 1,
    };
    traced.trace = Some(Box::new(crate::model::TraceRef {
        trace_id: "07".repeat(16),
        parent_span_id: "09".repeat(8),
        trace_tie: crate::model::Tie::Connection,
        parent,
    }));
    let span = &spans(&traced)[0];
    assert_eq!(span.trace_id, vec![7; 16]);
    assert_eq!(span.parent_span_id, vec![9; 8]);
    assert_eq!(span.span_id, span_id.to_vec());
    assert_eq!(traced.span_ids(), Some(([7; 16], span_id)));
}
