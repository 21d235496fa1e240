//! The JSON line of a record written without serde's flattened maps: the record's own keys
//! and a `tcp_reset` (the kind of a reset storm) by hand, any other body and the pod keys
//! serialized as their own structs and spliced in. serde's `#[serde(flatten)]` buffers every
//! value of the flattened parts and escapes every key again: it was a third of the agent's
//! time at a reset storm and half of it for a kind carried as `Body::Other`. The keys come in
//! the order serde writes them (the tests compare both on every built-in kind); a
//! `Body::Other` kind writes its keys in its struct's order (serde goes through a
//! `serde_json::Value`, which sorts them).

use std::io::Write as _;

use crate::model::{Body, Direction, Family, Record, TcpReset};

/// Appends `record`'s line without the newline; false (nothing written) when a part of it
/// does not serialize as an object (serde then writes the record).
pub fn write(out: &mut Vec<u8>, record: &Record) -> bool {
    let start = out.len();
    out.extend_from_slice(b"{\"time_unix_nano\":");
    number(out, record.time_unix_nano);
    out.extend_from_slice(b",\"time\":\"");
    rfc3339(out, record.time_unix_nano);
    out.extend_from_slice(b"\",\"kind\":");
    string(out, record.kind);
    out.extend_from_slice(b",\"node\":");
    string(out, &record.node);
    let c = &record.common;
    out.extend_from_slice(b",\"netns\":");
    option(out, c.netns, number);
    out.extend_from_slice(b",\"cgroup_id\":");
    option(out, c.cgroup_id, number);
    out.extend_from_slice(b",\"pid\":");
    option(out, c.pid, number);
    out.extend_from_slice(b",\"tid\":");
    option(out, c.tid, number);
    out.extend_from_slice(b",\"comm\":");
    option(out, c.comm.as_deref(), string);
    let body = match &record.body {
        Body::TcpReset(t) => {
            reset(out, t);
            true
        }
        Body::Other(o) => splice(out, |out| o.0.json_into(out)),
        body => splice(out, |out| serde_json::to_writer(out, body).is_ok()),
    };
    let pod = record
        .k8s
        .as_deref()
        .is_none_or(|k| splice(out, |out| serde_json::to_writer(out, k).is_ok()));
    if !(body && pod) {
        out.truncate(start);
        return false;
    }
    if let Some(trace) = &record.trace {
        out.extend_from_slice(b",\"trace_id\":");
        string(out, &trace.trace_id);
        out.extend_from_slice(b",\"parent_span_id\":");
        string(out, &trace.parent_span_id);
        out.extend_from_slice(b",\"trace_tie\":");
        string(out, trace.trace_tie.name());
    }
    if let Some(id) = record.span.id() {
        out.extend_from_slice(b",\"span_id\":\"");
        crate::model::hex_into(out, &id);
        out.push(b'"');
    }
    out.push(b'}');
    true
}

/// Appends the keys of the object `object` writes (`{...}`) after a comma, as flattened
/// parts of the line; nothing for an empty object. False when it wrote something else.
fn splice(out: &mut Vec<u8>, object: impl FnOnce(&mut Vec<u8>) -> bool) -> bool {
    let at = out.len();
    out.push(b',');
    if !object(out) || out.get(at + 1) != Some(&b'{') || out.last() != Some(&b'}') {
        out.truncate(at);
        return false;
    }
    out.pop();
    if out.len() == at + 2 {
        // `{}`
        out.truncate(at);
    } else {
        out.remove(at + 1);
    }
    true
}

fn reset(out: &mut Vec<u8>, t: &TcpReset) {
    out.extend_from_slice(match t.direction {
        Direction::Sent => b",\"direction\":\"sent\"",
        Direction::Received => b",\"direction\":\"received\"",
    });
    out.extend_from_slice(match t.family {
        Family::Ipv4 => b",\"family\":\"ipv4\"",
        Family::Ipv6 => b",\"family\":\"ipv6\"",
    });
    // Addresses need no escaping.
    out.extend_from_slice(b",\"saddr\":\"");
    address(out, t.saddr);
    out.extend_from_slice(b"\",\"sport\":");
    number(out, t.sport);
    out.extend_from_slice(b",\"daddr\":\"");
    address(out, t.daddr);
    out.extend_from_slice(b"\",\"dport\":");
    number(out, t.dport);
    out.extend_from_slice(b",\"tcp_state\":");
    option(out, t.tcp_state.as_deref(), string);
    out.extend_from_slice(b",\"reason\":");
    option(out, t.reason.as_deref(), string);
    out.extend_from_slice(b",\"socket_cookie\":");
    option(out, t.socket_cookie, number);
}

fn number(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// A JSON string, escaped as serde_json escapes it (one with nothing to escape as it is).
fn string(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return;
    }
    // Writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// An address as `Display` writes it; IPv4 (the storm's) without the formatter.
fn address(out: &mut Vec<u8>, addr: std::net::IpAddr) {
    match addr {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                number(out, octet);
            }
        }
        std::net::IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// `time` as humantime's RFC 3339 with nanoseconds writes it; the part up to the seconds is
/// formatted once per second of event time (a storm's events share it).
fn rfc3339(out: &mut Vec<u8>, nanos: u64) {
    thread_local! {
        static SECOND: std::cell::RefCell<(u64, Vec<u8>)> =
            const { std::cell::RefCell::new((u64::MAX, Vec::new())) };
    }
    let (secs, sub) = (nanos / 1_000_000_000, nanos % 1_000_000_000);
    SECOND.with_borrow_mut(|(at, text)| {
        if *at != secs {
            let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
            text.clear();
            let _ = write!(text, "{}", humantime::format_rfc3339_seconds(time));
            // "...:SSZ": keep up to the seconds.
            text.pop();
            *at = secs;
        }
        out.extend_from_slice(text);
    });
    let mut digits = [b'0'; 9];
    let mut buffer = itoa::Buffer::new();
    let formatted = buffer.format(sub).as_bytes();
    digits[9 - formatted.len()..].copy_from_slice(formatted);
    out.push(b'.');
    out.extend_from_slice(&digits);
    out.push(b'Z');
}

fn option<T>(out: &mut Vec<u8>, value: Option<T>, some: impl Fn(&mut Vec<u8>, T)) {
    match value {
        Some(v) => some(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{export::terminal::tests::reset_record, model::TraceRef};

    fn both(r: &Record) -> (String, String) {
        let mut fast = Vec::new();
        assert!(write(&mut fast, r), "handled");
        (
            String::from_utf8(fast).unwrap(),
            serde_json::to_string(r).unwrap(),
        )
    }

    #[test]
    fn times_and_addresses_are_what_humantime_and_display_write() {
        for nanos in [
            0,
            1,
            999_999_999,
            1_000_000_000,
            1_764_705_600_000_000_007,
            1_764_705_600_123_456_789,
            1_764_705_601_100_000_000,
        ] {
            let mut out = Vec::new();
            rfc3339(&mut out, nanos);
            let time = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(nanos);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                humantime::format_rfc3339_nanos(time).to_string()
            );
        }
        for addr in [
            "0.0.0.0",
            "10.0.255.1",
            "255.255.255.255",
            "::1",
            "fd00::a:1",
        ] {
            let mut out = Vec::new();
            address(&mut out, addr.parse().unwrap());
            assert_eq!(String::from_utf8(out).unwrap(), addr);
        }
    }

    #[test]
    fn every_shape_is_what_serde_writes() {
        let mut r = reset_record();
        let (fast, serde) = both(&r);
        assert_eq!(fast, serde);
        // Nulls, IPv6, a comm that needs escaping, a trace, the other direction.
        let Body::TcpReset(t) = &mut r.body else {
            unreachable!()
        };
        t.direction = Direction::Received;
        t.family = Family::Ipv6;
        t.saddr = "fd00::1".parse().unwrap();
        t.daddr = "::ffff:10.0.0.1".parse().unwrap();
        t.tcp_state = None;
        t.reason = None;
        t.socket_cookie = None;
        r.common.comm = Some("we\"ird\\\u{1}é".into());
        r.common.pid = None;
        r.common.netns = None;
        r.trace = Some(Box::new(TraceRef {
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            parent_span_id: "00f067aa0ba902b7".into(),
            trace_tie: crate::model::Tie::Connection,
            parent: crate::model::TraceParent {
                trace_id: [0; 16],
                span_id: [0; 8],
                flags: 1,
            },
        }));
        let (fast, serde) = both(&r);
        assert_eq!(fast, serde);
        r.common.comm = None;
        r.node = "node \"b\"".into();
        let (fast, serde) = both(&r);
        assert_eq!(fast, serde);
        // Its own span, chosen: `span_id`, as serde writes it.
        r.span = crate::model::OwnSpan::from_random(0x00ab_cdef_0123_4567).unwrap();
        let (fast, serde) = both(&r);
        assert_eq!(fast, serde);
        assert!(
            fast.ends_with(r#","span_id":"00abcdef01234567"}"#),
            "{fast}"
        );
    }

    #[test]
    fn every_kind_with_and_without_pod_keys_is_what_serde_writes() {
        for mut r in crate::model::samples::all() {
            r.k8s = None;
            let (fast, serde) = both(&r);
            assert_eq!(fast, serde, "{}", r.kind);
            r.k8s = Some(Box::new(crate::model::samples::k8s()));
            let (fast, serde) = both(&r);
            assert_eq!(fast, serde, "{} with pod keys", r.kind);
            assert!(fast.contains(r#""k8s.pod.name":"#), "{fast}");
            // Empty pod keys add nothing.
            r.k8s = Some(Box::default());
            let (fast, serde) = both(&r);
            assert_eq!(fast, serde, "{} with empty pod keys", r.kind);
        }
    }

    #[test]
    fn a_kind_carried_as_other_writes_its_keys_in_its_own_order() {
        #[derive(Debug, Clone, serde::Serialize)]
        struct Late {
            zeta: u32,
            alpha: Option<&'static str>,
        }
        impl crate::model::describe::KindName for Late {
            const KIND: &'static str = "late";
        }
        impl crate::model::Describe for Late {
            fn line(&self, _: &crate::model::Common) -> crate::model::describe::Line {
                crate::model::describe::Line {
                    tag: "LATE".into(),
                    tone: crate::model::describe::Tone::Notice,
                    text: String::new(),
                }
            }
            fn attributes(&self, _: &mut crate::model::Attrs) {}
        }
        let mut r = reset_record();
        r.body = Body::Other(crate::model::Other::new(Late {
            zeta: 7,
            alpha: Some("a\"b"),
        }));
        r.kind = "late";
        let (fast, serde) = both(&r);
        assert!(
            fast.contains(r#""comm":"redis-cli","zeta":7,"alpha":"a\"b"}"#),
            "{fast}"
        );
        let parsed = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap();
        assert_eq!(parsed(&fast), parsed(&serde), "the same keys and values");
    }
}
