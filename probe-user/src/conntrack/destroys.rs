//! The DESTROY subscription's reader: expiries of established TCP entries become records.

#[allow(clippy::wildcard_imports)]
use super::*;

/// Reads DESTROY events until the agent stops; expiries become records. An overrun (ENOBUFS:
/// the kernel could not queue events for us) is counted as a loss; the socket stays
/// subscribed and reading goes on.
pub(super) async fn read_destroys(
    label: String,
    setup: Setup,
    out: Out,
    mut stop: watch::Receiver<bool>,
) {
    let Setup {
        socket,
        inode,
        settings,
    } = setup;
    // SAFETY: the socket owns its fd for as long as the AsyncFd owns the socket, and
    // `as_raw_fd` always returns that same fd.
    let mut fd = match unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) } {
        Ok(fd) => fd,
        Err(e) => {
            warn!(
                netns = label,
                "conntrack: registering the netlink socket: {e}"
            );
            return;
        }
    };
    let mut buf = vec![0u8; 256 * 1024];
    // Last TCP state per conntrack id, from NEW/UPDATE events, while this kernel's DESTROY
    // events are not known to carry it (5.10's do not).
    let mut states = Some(lru::LruCache::<u32, u8>::new(UPDATE_STATES));
    loop {
        let mut guard = tokio::select! {
            guard = fd.readable_mut() => match guard {
                Ok(g) => g,
                Err(e) => {
                    warn!(netns = label, "conntrack: polling the netlink socket: {e}");
                    return;
                }
            },
            _ = stop.wait_for(|s| *s) => return,
        };
        loop {
            let mut slice: &mut [u8] = &mut buf[..];
            match guard.get_inner().recv(&mut slice, 0) {
                Ok(n) => {
                    let n = n.min(buf.len());
                    if let Some(states) = states.as_mut() {
                        for (id, state) in netlink::parse_updates(&buf[..n]) {
                            states.put(id, state);
                        }
                    }
                    for parsed in netlink::parse_datagram(&buf[..n]) {
                        let parsed = parsed.map(|mut d| {
                            if d.orig.proto == netlink::IPPROTO_TCP {
                                if d.tcp_state.is_some() {
                                    // This kernel tells the state itself: stop following updates.
                                    if states.take().is_some() {
                                        let _ = guard
                                            .get_inner()
                                            .drop_membership(NFNLGRP_CONNTRACK_UPDATE);
                                        debug!(
                                            netns = label,
                                            "conntrack: destroy events carry the TCP state"
                                        );
                                    }
                                } else if let Some(states) = states.as_mut() {
                                    d.tcp_state = d.id.and_then(|id| states.pop(&id));
                                }
                            }
                            d
                        });
                        match parsed {
                            Ok(d)
                                if d.orig.proto == netlink::IPPROTO_TCP
                                    && d.tcp_state.is_none() =>
                            {
                                let before = out
                                    .counters
                                    .conntrack_destroys_without_state
                                    .fetch_add(1, Ordering::Relaxed);
                                if before == 0 {
                                    warn!(
                                        netns = label,
                                        "conntrack: a TCP entry was destroyed with no TCP state known (not in the event, not seen in an update since the agent started): it cannot be told whether it expired"
                                    );
                                }
                            }
                            Ok(d) if d.is_expiry() => {
                                let s = settings.lock().unwrap_or_else(|e| e.into_inner()).clone();
                                let body = Body::ConntrackExpiry(Box::new(expiry(&label, &d, &s)));
                                if !out.send(inode, body) {
                                    return;
                                }
                            }
                            Ok(_) => {}
                            Err(e) => {
                                debug!(netns = label, "conntrack: dropping a message: {e}");
                                out.counters.decode_errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    guard.clear_ready();
                    break;
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    out.counters
                        .netlink_overruns
                        .fetch_add(1, Ordering::Relaxed);
                    debug!(netns = label, "conntrack: netlink overrun (ENOBUFS)");
                }
                Err(e) => {
                    warn!(netns = label, "conntrack: reading the netlink socket: {e}");
                    return;
                }
            }
        }
    }
}

/// The record of an expired entry, with the timeout its namespace applies to its state.
fn expiry(label: &str, d: &Destroyed, s: &Settings) -> ConntrackExpiry {
    let sysctl = d.tcp_state.and_then(netlink::tcp_timeout_sysctl);
    ConntrackExpiry {
        netns_path: label.to_owned(),
        proto: netlink::proto_name(d.orig.proto),
        tcp_state: d.tcp_state.map(netlink::tcp_state_name),
        orig_saddr: d.orig.src,
        orig_sport: d.orig.sport,
        orig_daddr: d.orig.dst,
        orig_dport: d.orig.dport,
        reply_saddr: d.reply.src,
        reply_sport: d.reply.sport,
        reply_daddr: d.reply.dst,
        reply_dport: d.reply.dport,
        timeout_s: sysctl.and_then(|name| s.get_u64(name)),
        timeout_sysctl: sysctl.map(str::to_owned),
        established_for_s: d
            .start_ns
            .zip(d.stop_ns)
            .filter(|(start, stop)| stop >= start && *start > 0)
            .map(|(start, stop)| (stop - start) as f64 / 1e9),
        zone: d.zone,
        mark: d.mark,
        status: d.status_names(),
        conntrack_id: d.id,
        orig_packets: d.counters_orig.map(|c| c.0),
        orig_bytes: d.counters_orig.map(|c| c.1),
        reply_packets: d.counters_reply.map(|c| c.0),
        reply_bytes: d.counters_reply.map(|c| c.1),
        start_unix_nano: d.start_ns,
        stop_unix_nano: d.stop_ns,
        destroyed_unix_nano: d.event_ns,
    }
}
