use probe_common::{HDR_NETNS, family, kind};

use super::*;
use crate::{
    decode::{
        decode,
        tests::{bytes_of, header, tables},
    },
    export::{JsonSink, Sink},
    model::{Record, samples},
};

fn event(error: u32, soft_error: u32, retransmits: u32) -> ConnectFailureEvent {
    let mut h = header(HDR_NETNS);
    h.kind = kind::CONNECT_FAILURE;
    let mut saddr = [0u8; 16];
    saddr[..4].copy_from_slice(&[10, 200, 0, 1]);
    let mut daddr = [0u8; 16];
    daddr[..4].copy_from_slice(&[10, 200, 0, 2]);
    ConnectFailureEvent {
        header: h,
        socket_cookie: 77,
        saddr,
        daddr,
        sport: 40000,
        dport: 6379,
        family: family::INET,
        _pad: 0,
        error,
        soft_error,
        retransmits,
        icmp: 0,
    }
}

fn decoded(ev: &ConnectFailureEvent) -> ConnectFailure {
    let d = decode(&bytes_of(ev), &tables()).unwrap();
    let Body::Other(o) = d.body else {
        panic!("not carried as Other: {:?}", d.body)
    };
    o.downcast_ref::<ConnectFailure>().unwrap().clone()
}

#[test]
fn each_socket_error_names_how_the_connect_ended() {
    let cases = [
        (
            libc::ETIMEDOUT as u32,
            0,
            2,
            Outcome::TimedOut,
            "kernel",
            Some("ETIMEDOUT"),
            None,
            Some(3),
        ),
        (
            0,
            0,
            0,
            Outcome::TimedOut,
            "application",
            None,
            None,
            Some(1),
        ),
        (
            libc::ECONNREFUSED as u32,
            0,
            0,
            Outcome::Refused,
            "kernel",
            Some("ECONNREFUSED"),
            None,
            Some(1),
        ),
        (
            libc::EHOSTUNREACH as u32,
            libc::EHOSTUNREACH as u32,
            0,
            Outcome::Unreachable,
            "kernel",
            Some("EHOSTUNREACH"),
            None,
            Some(1),
        ),
        (
            libc::ETIMEDOUT as u32,
            libc::ENETUNREACH as u32,
            6,
            Outcome::TimedOut,
            "kernel",
            Some("ETIMEDOUT"),
            Some("ENETUNREACH"),
            Some(7),
        ),
        (
            UNKNOWN,
            UNKNOWN,
            UNKNOWN,
            Outcome::Unknown,
            "kernel",
            None,
            None,
            None,
        ),
        (
            libc::EACCES as u32,
            0,
            0,
            Outcome::Unreachable,
            "kernel",
            Some("EACCES"),
            None,
            Some(1),
        ),
        (
            libc::EPERM as u32,
            0,
            0,
            Outcome::Failed,
            "kernel",
            Some("EPERM"),
            None,
            Some(1),
        ),
    ];
    for (error, soft, retrans, outcome, closed_by, name, icmp, syns) in cases {
        let c = decoded(&event(error, soft, retrans));
        assert_eq!(
            (
                c.outcome,
                c.closed_by,
                c.error.as_deref(),
                c.icmp_error.as_deref(),
                c.syns
            ),
            (outcome, closed_by, name, icmp, syns),
            "error {error} soft {soft}"
        );
        assert_eq!((c.sport, c.dport, c.socket_cookie), (40000, 6379, Some(77)));
        assert_eq!(c.daddr.to_string(), "10.200.0.2");
    }
}

#[test]
fn a_record_has_its_outcome_in_json_and_on_the_terminal() {
    let c = decoded(&event(libc::ETIMEDOUT as u32, 0, 2));
    let mut r: Record = samples::reset();
    r.body = Body::Other(Other::new(c));
    r.kind = r.body.kind();
    assert_eq!(r.kind, "connect_failure");
    let mut json = JsonSink::new(Vec::new());
    json.write(&r).unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&json.into_inner()).unwrap();
    assert_eq!(doc["outcome"], "timed_out");
    assert_eq!(doc["closed_by"], "kernel");
    assert_eq!(doc["error"], "ETIMEDOUT");
    assert_eq!(doc["syns"], 3);
    assert_eq!(doc["daddr"], "10.200.0.2");
    assert_eq!(doc["dport"], 6379);
    let Body::Other(o) = &r.body else {
        unreachable!()
    };
    let line = o.0.line(&r.common);
    assert!(
        line.text
            .starts_with("10.200.0.1:40000 -> 10.200.0.2:6379 timed_out after 3 SYNs (ETIMEDOUT)"),
        "{}",
        line.text
    );
}

#[test]
fn a_record_of_another_family_is_refused() {
    let mut ev = event(0, 0, 0);
    ev.family = 99;
    assert!(decode(&bytes_of(&ev), &tables()).is_err());
}

#[test]
fn an_icmp_error_seen_on_the_flow_is_named_with_its_type_and_code() {
    use probe_common::ICMP_SEEN;
    let mut ev = event(libc::EHOSTUNREACH as u32, libc::EHOSTUNREACH as u32, 1);
    let none = decoded(&ev);
    assert_eq!(
        (none.icmp_type, none.icmp_code, none.icmp),
        (None, None, None)
    );
    ev.icmp = ICMP_SEEN | (3 << 8) | 13;
    let c = decoded(&ev);
    assert_eq!(
        (c.icmp_type, c.icmp_code, c.icmp),
        (Some(3), Some(13), Some("administratively prohibited"))
    );
    assert_eq!(
        c.summary(),
        "unreachable after 2 SYNs (EHOSTUNREACH): ICMP administratively prohibited (type 3 code 13)"
    );
    // Type 0 code 0 is a value, not "none": the flag says an error was seen.
    ev.icmp = ICMP_SEEN;
    assert_eq!(decoded(&ev).icmp, Some("ICMP error"));
    // ICMPv6 names its own codes.
    assert_eq!(icmp_meaning(Family::Ipv6, 1, 3), "address unreachable");
    assert_eq!(icmp_meaning(Family::Ipv4, 3, 1), "host unreachable");
    assert_eq!(icmp_meaning(Family::Ipv4, 3, 3), "port unreachable");
}
