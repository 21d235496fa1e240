//! The exporter's span names and attributes, and the dashboard's queries against them.

use std::collections::BTreeSet;

use opentelemetry::InstrumentationScope;
use serde_json::Value;

use super::convert::{attributes, spans};
use crate::model::{Body, Evidence, Record, samples};

/// Span names and `span.`/`resource.` attributes the exporter emits for a record of every kind.
fn emitted() -> (BTreeSet<String>, BTreeSet<String>) {
    let mut names = BTreeSet::new();
    let mut attrs = BTreeSet::new();
    let scope = InstrumentationScope::builder("t").build();
    for r in samples::all() {
        for s in spans(&r, &scope) {
            names.insert(s.name.to_string());
        }
        for kv in attributes(&r) {
            attrs.insert(format!("span.{}", kv.key));
        }
    }
    let resource = super::resource("node-probe", "node-3", Some("prod"), &[]);
    for (k, _) in resource.iter() {
        attrs.insert(format!("resource.{k}"));
    }
    (names, attrs)
}

#[test]
fn attributes_keep_their_types() {
    let value = |r: &Record, key: &str| {
        attributes(r)
            .into_iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value)
    };
    use opentelemetry::Value as V;
    let signal = samples::core_signal();
    assert_eq!(value(&signal, "signal.number"), Some(V::I64(11)));
    assert_eq!(
        value(&signal, "probe.rlimit_core"),
        Some(V::String("unlimited".into()))
    );
    assert_eq!(value(&signal, "probe.core_dumped"), Some(V::Bool(false)));
    assert_eq!(value(&signal, "probe.sender_pid"), None, "null is left out");
    let expiry = samples::expiry();
    assert_eq!(value(&expiry, "probe.established_for_s"), Some(V::F64(7.5)));
    assert_eq!(
        value(&expiry, "probe.status"),
        Some(V::Array(
            vec![
                opentelemetry::StringValue::from("ASSURED"),
                opentelemetry::StringValue::from("DST_NAT")
            ]
            .into()
        ))
    );
    assert_eq!(
        value(&expiry, "isolation.layer"),
        Some(V::String("kernel.netfilter".into()))
    );
    let reset = samples::reset();
    assert_eq!(
        value(&reset, "k8s.pod.label.app"),
        Some(V::String("redis-client".into()))
    );
    assert_eq!(
        value(&reset, "network.peer.address"),
        Some(V::String("10.96.0.15".into()))
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
    for panel in dashboard["panels"].as_array().unwrap() {
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
    let out = spans(&record, &InstrumentationScope::builder("t").build());
    assert_eq!(out.len(), 3);
    assert_eq!(out[0].name, "finding.conntrack_expiry_reset");
    let trace = out[0].span_context.trace_id();
    let parent = out[0].span_context.span_id();
    let children: Vec<&str> = out[1..].iter().map(|s| s.name.as_ref()).collect();
    assert_eq!(children, ["conntrack.expiry", "tcp.reset.sent"]);
    for child in &out[1..] {
        assert_eq!(child.span_context.trace_id(), trace);
        assert_eq!(child.parent_span_id, parent);
        assert_eq!(
            child.start_time,
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(1)
        );
    }
    let layers: Vec<String> = out[1..]
        .iter()
        .map(|s| {
            s.attributes
                .iter()
                .find(|kv| kv.key.as_str() == "isolation.layer")
                .unwrap()
                .value
                .to_string()
        })
        .collect();
    assert_eq!(layers, ["kernel.netfilter", "kernel.tcp"]);
}
