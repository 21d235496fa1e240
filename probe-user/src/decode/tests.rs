//! Unit tests of the checked decode: a round trip of every kind, rejects of bad input.

use super::*;
use probe_common::kind;

pub(super) fn tables() -> SymbolTables {
    SymbolTables {
        tcp_states: HashMap::from([(1, "ESTABLISHED".into()), (7, "CLOSE".into())]),
        reset_reasons: HashMap::from([(1, "NO_SOCKET".into())]),
        signal_results: HashMap::new(),
        drop_reasons: HashMap::from([(3, "NO_SOCKET".into())]),
    }
}

pub(super) fn header(flags: u32) -> EventHeader {
    let mut comm = [0u8; 16];
    comm[..4].copy_from_slice(b"curl");
    EventHeader {
        kind: kind::TCP_RESET,
        flags,
        ktime_ns: 42,
        pid: 100,
        tid: 101,
        netns: 4026531840,
        _reserved: 0,
        cgroup_id: 7,
        comm,
    }
}

fn reset_event() -> TcpResetEvent {
    let mut saddr = [0u8; 16];
    saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
    let mut daddr = [0u8; 16];
    daddr[..4].copy_from_slice(&[10, 1, 2, 3]);
    TcpResetEvent {
        header: header(HDR_TASK | HDR_NETNS | HDR_CGROUP),
        socket_cookie: 9,
        saddr,
        daddr,
        sport: 6379,
        dport: 51000,
        family: family::INET,
        direction: direction::SENT,
        state: 1,
        reason: 1,
    }
}

pub(super) fn bytes_of<T: aya::Pod>(v: &T) -> Vec<u8> {
    // SAFETY: T is Pod (no padding), so all of its bytes are initialised.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

#[test]
fn tcp_reset_round_trip() {
    let d = decode(&bytes_of(&reset_event()), &tables()).unwrap();
    assert_eq!(
        d.common,
        Common {
            ktime_ns: 42,
            netns: Some(4026531840),
            cgroup_id: Some(7),
            pid: Some(100),
            tid: Some(101),
            comm: Some("curl".into()),
        }
    );
    assert_eq!(
        d.body,
        Body::TcpReset(TcpReset {
            direction: Direction::Sent,
            family: Family::Ipv4,
            saddr: "127.0.0.1".parse().unwrap(),
            sport: 6379,
            daddr: "10.1.2.3".parse().unwrap(),
            dport: 51000,
            tcp_state: Some("ESTABLISHED".into()),
            reason: Some("NO_SOCKET".into()),
            socket_cookie: Some(9),
        })
    );
}

#[test]
fn interrupt_context_has_no_task_and_unknowns_are_null() {
    let mut ev = reset_event();
    ev.header = header(0);
    ev.state = 0;
    ev.reason = REASON_NONE;
    ev.socket_cookie = 0;
    let d = decode(&bytes_of(&ev), &tables()).unwrap();
    assert_eq!(
        d.common,
        Common {
            ktime_ns: 42,
            ..Common::none()
        }
    );
    let Body::TcpReset(r) = d.body else { panic!() };
    assert_eq!((r.tcp_state, r.reason, r.socket_cookie), (None, None, None));
}

#[test]
fn unnamed_values_keep_their_number() {
    let mut ev = reset_event();
    ev.state = 13;
    ev.reason = 99;
    let Body::TcpReset(r) = decode(&bytes_of(&ev), &tables()).unwrap().body else {
        panic!()
    };
    assert_eq!(r.tcp_state.as_deref(), Some("STATE_13"));
    assert_eq!(r.reason.as_deref(), Some("REASON_99"));
}

#[test]
fn ipv6_and_v4_mapped() {
    let mut ev = reset_event();
    ev.family = family::INET6;
    ev.saddr = Ipv6Addr::LOCALHOST.octets();
    ev.daddr = "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets();
    let Body::TcpReset(r) = decode(&bytes_of(&ev), &tables()).unwrap().body else {
        panic!()
    };
    assert_eq!(r.family, Family::Ipv6);
    assert_eq!(r.saddr, "::1".parse::<IpAddr>().unwrap());
    assert_eq!(r.daddr, "2001:db8::1".parse::<IpAddr>().unwrap());

    ev.saddr = Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped().octets();
    ev.daddr = Ipv4Addr::new(127, 0, 0, 2).to_ipv6_mapped().octets();
    let Body::TcpReset(r) = decode(&bytes_of(&ev), &tables()).unwrap().body else {
        panic!()
    };
    assert_eq!(r.family, Family::Ipv4);
    assert_eq!(r.saddr, "127.0.0.1".parse::<IpAddr>().unwrap());
    assert_eq!(r.daddr, "127.0.0.2".parse::<IpAddr>().unwrap());
}

#[test]
fn short_and_corrupt_records_are_rejected() {
    let bytes = bytes_of(&reset_event());
    assert_eq!(
        decode(&bytes[..10], &tables()),
        Err(DecodeError::Short {
            len: 10,
            need: 56,
            what: "event header"
        })
    );
    assert_eq!(
        decode(&bytes[..100], &tables()),
        Err(DecodeError::Short {
            len: 100,
            need: 112,
            what: "tcp_reset"
        })
    );
    let mut bad_kind = bytes.clone();
    bad_kind[..4].copy_from_slice(&77u32.to_ne_bytes());
    assert_eq!(
        decode(&bad_kind, &tables()),
        Err(DecodeError::UnknownKind(77))
    );

    let mut ev = reset_event();
    ev.direction = 9;
    assert_eq!(
        decode(&bytes_of(&ev), &tables()),
        Err(DecodeError::Direction(9))
    );
    let mut ev = reset_event();
    ev.family = 1;
    assert_eq!(
        decode(&bytes_of(&ev), &tables()),
        Err(DecodeError::Family(1))
    );
    assert!(decode(&[], &tables()).is_err());
}

fn signal_event() -> SignalEvent {
    let mut sender_comm = [0u8; 16];
    sender_comm[..4].copy_from_slice(b"kill");
    SignalEvent {
        header: EventHeader {
            kind: kind::CORE_SIGNAL,
            ..header(HDR_TASK | HDR_CGROUP | HDR_NETNS)
        },
        sender_pid: 300,
        sender_tid: 301,
        sender_comm,
        signal: 11,
        si_code: 0,
        result: 0,
        flags: SIG_SENDER | SIG_RLIMIT | SIG_HANDLER | SIG_DUMPABLE,
        rlimit_core: u64::MAX,
        handler: 0,
        dumpable: 1,
        group: 1,
    }
}

#[test]
fn core_signal_round_trip() {
    let mut t = tables();
    t.signal_results.insert(0, "delivered".into());
    let d = decode(&bytes_of(&signal_event()), &t).unwrap();
    assert_eq!(d.common.pid, Some(100));
    assert_eq!(d.common.comm.as_deref(), Some("curl"));
    assert_eq!(
        d.body,
        Body::CoreSignal(Box::new(CoreSignal {
            signal: 11,
            signal_name: "SIGSEGV".into(),
            origin: crate::model::signals::Origin::User,
            si_code: "SI_USER".into(),
            sender_pid: Some(300),
            sender_comm: Some("kill".into()),
            sender_tid: Some(301),
            result: "delivered".into(),
            handler: Some(Handler::Default),
            core_dumped: None,
            core_suppressed_by: None,
            rlimit_core: Some(RlimitCore(u64::MAX)),
            dumpable: Some(1),
            core_pattern: None,
            core_uses_pid: None,
            exit_code: None,
        }))
    );
    let mut ev = signal_event();
    ev.flags = 0;
    ev.handler = 0x4000;
    ev.result = 7;
    let Body::CoreSignal(c) = decode(&bytes_of(&ev), &t).unwrap().body else {
        panic!()
    };
    assert_eq!(
        (c.sender_pid, c.handler, c.rlimit_core, c.dumpable),
        (None, None, None, None)
    );
    assert_eq!(c.result, "result_7");
    assert!(decode(&bytes_of(&ev)[..100], &t).is_err());
}

#[test]
fn process_exit_round_trip() {
    let ev = ExitEvent {
        header: EventHeader {
            kind: kind::PROCESS_EXIT,
            ..header(HDR_TASK)
        },
        exit_code: 0x8b,
        watched_signal: 11,
    };
    let d = decode(&bytes_of(&ev), &tables()).unwrap();
    assert_eq!(
        d.body,
        Body::ProcessExit(ProcessExit {
            exit_code: 0x8b,
            watched_signal: 11
        })
    );
    assert_eq!(d.common.tid, Some(101));
    assert!(decode(&bytes_of(&ev)[..60], &tables()).is_err());
}

#[test]
fn tables_from_format_and_btf_free_numbers() {
    let format = Format::parse(
        "print fmt: \"%s\", __print_symbolic(REC->reason, { 0, \"NOT_SPECIFIED\" }, { 1, \"NO_SOCKET\" })",
    );
    let t = SymbolTables::resolve(None, Some(&format));
    assert_eq!(&*t.reset_reasons[&1], "NO_SOCKET");
    assert_eq!(&*t.reset_reasons[&0], "NOT_SPECIFIED");
    assert!(t.tcp_states.is_empty());
}

fn drop_event(family: u16, reason: u32) -> PacketDropEvent {
    let mut h = header(HDR_NETNS);
    h.kind = kind::PACKET_DROP;
    let mut saddr = [0u8; 16];
    let mut daddr = [0u8; 16];
    if family == family::INET {
        saddr[..4].copy_from_slice(&[10, 77, 1, 2]);
        daddr[..4].copy_from_slice(&[10, 77, 9, 9]);
    } else {
        saddr = "fd00::2".parse::<Ipv6Addr>().unwrap().octets();
        daddr = "fd00::9".parse::<Ipv6Addr>().unwrap().octets();
    }
    PacketDropEvent {
        header: h,
        key: probe_common::DropKey {
            saddr,
            daddr,
            sport: 40000,
            dport: 6379,
            family,
            _pad: 0,
            reason,
            netns: 4026531840,
        },
        total: 12,
    }
}

#[test]
fn packet_drop_round_trip() {
    let ev = drop_event(family::INET, 3);
    let d = decode(&bytes_of(&ev), &tables()).unwrap();
    let Body::PacketDrop(p) = d.body else {
        panic!("{:?}", d.body)
    };
    assert_eq!(p.saddr, "10.77.1.2".parse::<IpAddr>().unwrap());
    assert_eq!(p.daddr, "10.77.9.9".parse::<IpAddr>().unwrap());
    assert_eq!((p.sport, p.dport, p.count), (40000, 6379, 12));
    assert_eq!(p.reason.as_deref(), Some("NO_SOCKET"));
    assert_eq!(p.key, ev.key);
    assert_eq!(d.common.netns, Some(4026531840));
    assert_eq!(d.common.pid, None);

    let v6 = decode(&bytes_of(&drop_event(family::INET6, 99)), &tables()).unwrap();
    let Body::PacketDrop(p) = v6.body else {
        panic!()
    };
    assert_eq!(p.family, Family::Ipv6);
    assert_eq!(p.daddr, "fd00::9".parse::<IpAddr>().unwrap());
    assert_eq!(
        p.reason.as_deref(),
        Some("REASON_99"),
        "unknown reasons keep their number"
    );
    // A kernel without drop reasons: null, never a made-up name.
    let none = decode(&bytes_of(&drop_event(family::INET, REASON_NONE)), &tables()).unwrap();
    let Body::PacketDrop(p) = none.body else {
        panic!()
    };
    assert_eq!(p.reason, None);

    let bad = drop_event(7, 3);
    assert_eq!(
        decode(&bytes_of(&bad), &tables()),
        Err(DecodeError::Family(7))
    );
    let ev = drop_event(family::INET, 3);
    let bytes = bytes_of(&ev);
    let short = &bytes[..100];
    assert!(matches!(
        decode(short, &tables()),
        Err(DecodeError::Short { need: 112, .. })
    ));
}
