//! The parse on datagrams captured from real kernels (../fixtures).

use super::*;

/// Captured on this machine kind from a router netns (see fixtures/README.md).
const EXPIRED_DNAT_V4: &[u8] = include_bytes!("../fixtures/destroy_expired_dnat_v4.bin");
const EXPIRED_V6: &[u8] = include_bytes!("../fixtures/destroy_expired_v6.bin");
const CLOSED_V4: &[u8] = include_bytes!("../fixtures/destroy_closed_v4.bin");

fn one(bytes: &[u8]) -> Destroyed {
    let mut all = parse_datagram(bytes);
    assert_eq!(all.len(), 1);
    all.remove(0).unwrap()
}

#[test]
fn updates_give_id_and_tcp_state_and_destroys_are_not_updates() {
    // The same attributes under the NEW/UPDATE message type (netlink header bytes 4-5).
    let mut update = EXPIRED_DNAT_V4.to_vec();
    update[4..6].copy_from_slice(&MSG_CT_NEW.to_ne_bytes());
    let id = one(EXPIRED_DNAT_V4).id.expect("the fixture has an id");
    assert_eq!(
        parse_updates(&update),
        vec![(id, TCP_CONNTRACK_ESTABLISHED)]
    );
    assert!(parse_datagram(&update).is_empty());
    assert!(parse_updates(EXPIRED_DNAT_V4).is_empty());
}

#[test]
fn expired_dnat_entry() {
    let d = one(EXPIRED_DNAT_V4);
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert_eq!(
        d.orig,
        Tuple {
            src: ip("10.77.1.2"),
            dst: ip("10.77.9.9"),
            sport: 46466,
            dport: 6379,
            proto: IPPROTO_TCP
        }
    );
    assert_eq!(
        d.reply,
        Tuple {
            src: ip("10.77.2.2"),
            dst: ip("10.77.1.2"),
            sport: 6379,
            dport: 46466,
            proto: IPPROTO_TCP
        }
    );
    assert_eq!(d.tcp_state, Some(TCP_CONNTRACK_ESTABLISHED));
    assert!(d.is_expiry());
    assert_eq!(d.status_names(), ["SEEN_REPLY", "ASSURED", "DST_NAT"]);
    assert_eq!((d.mark, d.zone), (0, 0));
    assert_eq!(d.id, Some(0xa2e7_4021));
    assert_eq!(d.counters_orig, None, "accounting was off");
    let (start, stop) = (d.start_ns.unwrap(), d.stop_ns.unwrap());
    assert_eq!(start, 0x18ea_bdc4_ce76_d54a);
    assert_eq!(stop, 0x18ea_bdc5_8151_378e);
    // One PING at the start, then idle: the timeout (3 s) ran out 3 s after creation...
    assert!(
        (3_000_000_000..3_100_000_000).contains(&(stop - start)),
        "{}",
        stop - start
    );
    // ...and the entry was reaped at the next packet, 6 s after creation.
    let reaped = d.event_ns.unwrap() - start;
    assert!((6_000_000_000..6_200_000_000).contains(&reaped), "{reaped}");
}

#[test]
fn expired_v6_entry() {
    let d = one(EXPIRED_V6);
    assert_eq!(d.orig.src, "::1".parse::<IpAddr>().unwrap());
    assert_eq!(d.orig.dport, 7000);
    assert_eq!(d.reply.sport, 7000);
    assert_eq!(d.reply.dport, d.orig.sport);
    assert!(d.is_expiry());
    assert!(!d.status_names().contains(&"DST_NAT".to_owned()));
}

#[test]
fn closed_entry_is_not_an_expiry() {
    let d = one(CLOSED_V4);
    assert_eq!(d.tcp_state, Some(7), "TIME_WAIT");
    assert_eq!(tcp_state_name(7), "TIME_WAIT");
    assert!(!d.is_expiry());
    assert_eq!(d.orig.dport, 7001);
}

#[test]
fn several_messages_in_one_datagram() {
    let mut both = EXPIRED_DNAT_V4.to_vec();
    both.extend_from_slice(CLOSED_V4);
    let all = parse_datagram(&both);
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(Result::is_ok));
}

#[test]
fn truncated_and_corrupt_messages_are_errors() {
    for cut in [3, 20, 60, EXPIRED_DNAT_V4.len() - 1] {
        let all = parse_datagram(&EXPIRED_DNAT_V4[..cut]);
        assert!(all.iter().all(Result::is_err), "cut at {cut}: {all:?}");
    }
    // An attribute claiming more bytes than the message has.
    let mut bad = EXPIRED_DNAT_V4.to_vec();
    bad[20] = 0xff;
    assert!(parse_datagram(&bad)[0].is_err());
    // A port attribute of the wrong size.
    let mut bad = EXPIRED_DNAT_V4.to_vec();
    let pos = bad.windows(4).position(|w| w == [6, 0, 2, 0]).unwrap();
    bad[pos] = 5;
    assert!(parse_datagram(&bad)[0].is_err());
}

#[test]
fn timeout_sysctl_per_state() {
    assert_eq!(
        tcp_timeout_sysctl(TCP_CONNTRACK_ESTABLISHED),
        Some("nf_conntrack_tcp_timeout_established")
    );
    assert_eq!(tcp_timeout_sysctl(0), None);
    assert_eq!(tcp_timeout_sysctl(42), None);
}
