//! The agent's own traffic is not news: kubelet probes and Prometheus scrapes of its HTTP
//! endpoint would otherwise become a `packet_drop` (QUEUE_PURGE at every close) or a reset on
//! every node. Events whose flow has the agent's listening socket as one end, in the agent's
//! network namespace, are skipped (and counted). The kernel side already skips events raised
//! in the agent's own process context; this covers the packets handled in softirq or by the
//! client's process.

use std::net::{IpAddr, SocketAddr};

use crate::model::Body;

/// The agent's listening endpoint (`--http-addr`) in its own network namespace.
#[derive(Debug, Clone, Copy)]
pub struct OwnEndpoint {
    /// Inode of the agent's network namespace (`/proc/self/ns/net`); unknown: any netns.
    netns: Option<u32>,
    listen: SocketAddr,
}

impl OwnEndpoint {
    pub fn new(listen: SocketAddr) -> Self {
        let netns = procfs::process::Process::myself()
            .and_then(|me| me.namespaces())
            .ok()
            .and_then(|ns| {
                ns.0.get(std::ffi::OsStr::new("net"))
                    .map(|n| n.identifier as u32)
            });
        Self { netns, listen }
    }

    #[cfg(test)]
    pub fn with_netns(listen: SocketAddr, netns: u32) -> Self {
        Self {
            netns: Some(netns),
            listen,
        }
    }

    fn is_listener(&self, addr: IpAddr, port: u16) -> bool {
        port == self.listen.port()
            // IPv4-mapped IPv6 as IPv4: a dual-stack listener sees both forms.
            && (self.listen.ip().is_unspecified()
                || addr.to_canonical() == self.listen.ip().to_canonical())
    }

    /// Whether an event with this netns and body belongs to the agent's endpoint.
    pub fn owns(&self, netns: Option<u32>, body: &Body) -> bool {
        if let (Some(own), Some(ns)) = (self.netns, netns)
            && own != ns
        {
            return false;
        }
        let Some(f) = body.flow() else {
            return false;
        };
        self.is_listener(f.src.0, f.src.1) || self.is_listener(f.dst.0, f.dst.1)
    }
}

/// The stage: events of the agent's own endpoint are taken and counted, never recorded.
pub struct OwnTraffic {
    pub endpoint: OwnEndpoint,
    pub skipped: prometheus_client::metrics::counter::Counter,
}

impl super::Stage for OwnTraffic {
    fn wants(&self, event: &crate::decode::Decoded) -> bool {
        event.body.flow().is_some()
    }
    fn on_event(
        &mut self,
        event: crate::decode::Decoded,
        _cx: &super::Enricher,
        _out: &mut Vec<crate::model::Record>,
    ) -> Option<crate::decode::Decoded> {
        if self.endpoint.owns(event.common.netns, &event.body) {
            self.skipped.inc();
            return None;
        }
        Some(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Family, PacketDrop};

    fn drop(s: &str, sport: u16, d: &str, dport: u16) -> Body {
        Body::PacketDrop(Box::new(PacketDrop {
            family: Family::Ipv4,
            saddr: s.parse().unwrap(),
            sport,
            daddr: d.parse().unwrap(),
            dport,
            reason: Some("QUEUE_PURGE".into()),
            count: 1,
            key: probe_common::DropKey {
                saddr: [0; 16],
                daddr: [0; 16],
                sport,
                dport,
                family: 2,
                _pad: 0,
                reason: 0,
                netns: 0,
            },
        }))
    }

    #[test]
    fn only_the_listening_end_in_the_agents_netns() {
        let own = OwnEndpoint::with_netns("127.0.0.1:9464".parse().unwrap(), 7);
        assert!(own.owns(Some(7), &drop("127.0.0.1", 9464, "127.0.0.1", 40000)));
        assert!(own.owns(Some(7), &drop("127.0.0.1", 40000, "127.0.0.1", 9464)));
        assert!(own.owns(None, &drop("127.0.0.1", 40000, "127.0.0.1", 9464)));
        assert!(!own.owns(Some(8), &drop("127.0.0.1", 40000, "127.0.0.1", 9464)));
        assert!(!own.owns(Some(7), &drop("10.0.0.1", 40000, "10.0.0.2", 9464)));
        assert!(!own.owns(Some(7), &drop("127.0.0.1", 40000, "127.0.0.1", 6379)));
        let any = OwnEndpoint::with_netns("[::]:9464".parse().unwrap(), 7);
        assert!(any.owns(Some(7), &drop("10.0.0.1", 40000, "10.0.0.2", 9464)));
        let mapped = OwnEndpoint::with_netns("10.0.0.2:9464".parse().unwrap(), 7);
        assert!(mapped.owns(
            Some(7),
            &drop("::ffff:10.0.0.1", 1, "::ffff:10.0.0.2", 9464)
        ));
    }
}
