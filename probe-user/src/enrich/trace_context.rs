//! The horizontal tie: the W3C trace context of the HTTP/1.x request last sent on a connection
//! (captured on the TCP send path), put on the kernel events of that connection so they land
//! inside the request's trace. A request without a traceparent clears the connection's
//! context: an event is never given the context of an unrelated request.

use std::{
    num::NonZeroUsize,
    time::{Duration, Instant},
};

use lru::LruCache;
use prometheus_client::metrics::counter::Counter;

use super::conntrack::FlowKey;
use crate::model::{Body, HttpRequest, Record, TraceParent, TraceRef};

/// How long a connection's context lasts after its request was sent.
const TTL: Duration = Duration::from_secs(600);

pub struct TraceContexts {
    flows: LruCache<FlowKey, (TraceParent, Instant)>,
    /// Request heads taken (the kernel sends only those that carry or end a context).
    requests: Counter,
}

impl TraceContexts {
    pub fn new(capacity: usize, requests: Counter) -> Self {
        Self {
            flows: LruCache::new(NonZeroUsize::new(capacity.max(1)).expect("non-zero")),
            requests,
        }
    }

    pub fn on_request(&mut self, req: &HttpRequest, now: Instant) {
        self.requests.inc();
        let key = FlowKey::new(req.saddr, req.sport, req.daddr, req.dport);
        match req.traceparent {
            Some(tp) => {
                self.flows.put(key, (tp, now));
            }
            None => {
                self.flows.pop(&key);
            }
        }
    }

    /// Sets `record.trace` for events on a connection with a known context.
    pub fn apply(&mut self, record: &mut Record, now: Instant) {
        let Some(key) = record.body.flow().map(|f| FlowKey::of(&f)) else {
            return;
        };
        let Some((tp, at)) = self.flows.get(&key).copied() else {
            return;
        };
        if now.duration_since(at) > TTL {
            self.flows.pop(&key);
            return;
        }
        record.trace = Some(Box::new(TraceRef {
            trace_id: crate::model::hex(&tp.trace_id),
            parent_span_id: crate::model::hex(&tp.span_id),
            parent: tp,
        }));
    }
}

impl super::Stage for TraceContexts {
    fn wants(&self, event: &crate::decode::Decoded) -> bool {
        matches!(event.body, Body::HttpRequest(_))
    }
    /// Takes HTTP request heads (they make no record of their own).
    fn on_event(
        &mut self,
        event: crate::decode::Decoded,
        _cx: &super::Enricher,
        _out: &mut Vec<Record>,
    ) -> Option<crate::decode::Decoded> {
        let Body::HttpRequest(req) = &event.body else {
            return Some(event);
        };
        self.on_request(req, Instant::now());
        None
    }
    fn on_record(&mut self, record: &mut Record, now: Instant) {
        self.apply(record, now);
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::{
        decode::Common,
        model::{Direction, Family, TcpReset},
    };

    fn request(port: u16, tp: Option<TraceParent>) -> HttpRequest {
        HttpRequest {
            family: Family::Ipv4,
            saddr: IpAddr::from([127, 0, 0, 1]),
            sport: port,
            daddr: IpAddr::from([127, 0, 0, 1]),
            dport: 8080,
            traceparent: tp,
        }
    }

    fn reset(port: u16) -> Record {
        let body = Body::TcpReset(TcpReset {
            direction: Direction::Received,
            family: Family::Ipv4,
            saddr: IpAddr::from([127, 0, 0, 1]),
            sport: port,
            daddr: IpAddr::from([127, 0, 0, 1]),
            dport: 8080,
            tcp_state: None,
            reason: None,
            socket_cookie: None,
        });
        Record {
            time_unix_nano: 1,
            kind: body.kind(),
            node: "n".into(),
            common: Common::none(),
            body,
            k8s: None,
            trace: None,
            span: crate::model::OwnSpan::UNASSIGNED,
        }
    }

    #[test]
    fn events_join_the_last_request_of_their_connection_only() {
        let tp = TraceParent {
            trace_id: [0xab; 16],
            span_id: [0x01; 8],
            flags: 1,
        };
        let mut c = TraceContexts::new(16, Counter::default());
        let t0 = Instant::now();
        c.on_request(&request(40000, Some(tp)), t0);
        let mut r = reset(40000);
        c.apply(&mut r, t0);
        let t = r.trace.unwrap();
        assert_eq!(t.trace_id, "ab".repeat(16));
        assert_eq!(t.parent_span_id, "01".repeat(8));
        // Another connection: nothing.
        let mut other = reset(40001);
        c.apply(&mut other, t0);
        assert_eq!(other.trace, None);
        // The next request on the connection carries no context: neither does the event.
        c.on_request(&request(40000, None), t0);
        let mut again = reset(40000);
        c.apply(&mut again, t0);
        assert_eq!(again.trace, None);
        // Contexts expire.
        c.on_request(&request(40002, Some(tp)), t0);
        let mut late = reset(40002);
        c.apply(&mut late, t0 + TTL + Duration::from_secs(1));
        assert_eq!(late.trace, None);
    }
}
