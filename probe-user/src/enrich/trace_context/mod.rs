//! The horizontal tie: the W3C trace context of HTTP/1.x requests, put on the kernel records
//! they explain so they land inside the request's trace.
//! - The client's end: the request last sent on a connection (read on the TCP send path); a
//!   record of that connection joins its trace. A request without a traceparent clears the
//!   connection's context: a record is never given the context of an unrelated request.
//! - The server's end (`serving.rs`): a request received with a traceparent is being served
//!   until it is answered; a record of its connection, of the thread that received it, or of
//!   its process while it was the process's only traced request, made in that interval, joins
//!   its trace. The record says which (`trace_tie`).

mod serving;

use std::{
    num::NonZeroUsize,
    time::{Duration, Instant},
};

use lru::LruCache;
use prometheus_client::metrics::counter::Counter;

use self::serving::{Found, Serving};
use super::conntrack::FlowKey;
use crate::{
    decode::Common,
    model::{Body, HttpRequest, HttpSide, Record, Tie, TraceParent, TraceRef},
};

/// How long a connection's context lasts after its request was sent.
const TTL: Duration = Duration::from_secs(600);

pub struct TraceContexts {
    flows: LruCache<FlowKey, (TraceParent, Instant)>,
    serving: Serving,
    /// Request heads taken (the kernel sends only those that carry or end a context).
    requests: Counter,
    ambiguous: Counter,
}

impl TraceContexts {
    pub fn new(capacity: usize, requests: Counter, ambiguous: Counter) -> Self {
        Self {
            flows: LruCache::new(NonZeroUsize::new(capacity.max(1)).expect("non-zero")),
            serving: Serving::new(capacity),
            requests,
            ambiguous,
        }
    }

    pub fn on_request(&mut self, req: &HttpRequest, common: &Common, now: Instant) {
        self.requests.inc();
        let key = FlowKey::new(req.saddr, req.sport, req.daddr, req.dport);
        let t = common.ktime_ns;
        match req.side {
            HttpSide::Sent => match req.traceparent {
                Some(tp) => {
                    self.flows.put(key, (tp, now));
                }
                None => {
                    self.flows.pop(&key);
                }
            },
            HttpSide::Received => {
                if let (Some(pid), Some(tid)) = (common.pid, common.tid) {
                    self.serving.received(pid, tid, key, req.traceparent, t);
                }
                self.serving.sweep(now, t);
            }
            HttpSide::Answered => self.serving.answered(key, t),
        }
    }

    /// Sets `record.trace` for records of a connection with a known context, or of a task
    /// serving a traced request.
    pub fn apply(&mut self, record: &mut Record, now: Instant) {
        let t = record.common.ktime_ns;
        let found = match record.body.flow() {
            Some(flow) => {
                let key = FlowKey::of(&flow);
                self.client(key, now)
                    .or_else(|| self.served_on(key, t))
                    .map(|p| (p, Tie::Connection))
            }
            None => self.served_by(record, t),
        };
        if let Some((parent, tie)) = found {
            record.trace = Some(Box::new(TraceRef::new(parent, tie)));
        }
    }

    /// The request served on connection `key` at `t`.
    fn served_on(&mut self, key: FlowKey, t: u64) -> Option<TraceParent> {
        if self.serving.is_empty() || t == 0 {
            return None;
        }
        self.serving.on_connection(key, t)
    }

    /// The request the record's task (or, when it served none, the task that caused the
    /// record) was serving at `t`.
    fn served_by(&mut self, record: &Record, t: u64) -> Option<(TraceParent, Tie)> {
        if self.serving.is_empty() || t == 0 {
            return None;
        }
        let body = record.body.describe()?;
        let own = match (record.common.pid, record.common.tid, body.by_task()) {
            (Some(pid), Some(tid), true) => self.serving.by_task(pid, tid, t),
            _ => None,
        };
        let found = match own {
            Some(f) => (f, Tie::Thread, Tie::Process),
            None => {
                let (pid, tid) = body.sender_task()?;
                let f = self.serving.by_task(pid, tid, t)?;
                (f, Tie::SenderThread, Tie::SenderProcess)
            }
        };
        match found {
            (Found::Thread(p), thread, _) => Some((p, thread)),
            (Found::Process(p), _, process) => Some((p, process)),
            (Found::Ambiguous, _, _) => {
                self.ambiguous.inc();
                None
            }
        }
    }

    /// The client's context of `key`, while it lasts.
    fn client(&mut self, key: FlowKey, now: Instant) -> Option<TraceParent> {
        let (tp, at) = self.flows.get(&key).copied()?;
        if now.duration_since(at) > TTL {
            self.flows.pop(&key);
            return None;
        }
        Some(tp)
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
        self.on_request(req, &event.common, Instant::now());
        None
    }
    fn on_record(&mut self, record: &mut Record, now: Instant) {
        self.apply(record, now);
    }
}

#[cfg(test)]
mod tests;
