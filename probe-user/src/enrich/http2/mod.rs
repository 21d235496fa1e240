//! HTTP/2 header blocks into requests: the kernel copies, of each send or read of a connection's
//! request direction (a client's sends, a server's reads: `http2.rs` in probe-ebpf) that holds
//! HEADERS or CONTINUATION frames, a window from the first of them on; here the window is split
//! into frames, the blocks put back together (`frames.rs`) and each header block decoded,
//! in order, with one HPACK decoder per connection and side (`loona-hpack`). Each request
//! becomes an `HttpRequest` with its `traceparent`, for the trace tie (`trace_context`), which
//! takes it as it takes an HTTP/1.x head. A connection whose frames were missed (the kernel
//! lost some, or its table was evicted here) has an unknown table: its requests tie nothing
//! from then on (counted: a value decoded against a wrong table would be a guess).
//!
//! The kernel sends a connection's blocks from the first that names `traceparent` on (an
//! untraced connection costs the agent nothing): the entries its earlier blocks put in the
//! table are unknown here. Each table starts full of empty stand-ins (`UNKNOWN_ENTRIES`, as
//! many as the largest table holds): a reference to an entry made before the first window
//! reads an empty header (never a `traceparent`, which no earlier block named), and the
//! entries made since keep their exact index and eviction (both depend only on the entries
//! made after them).

mod frames;
#[cfg(test)]
mod tests;

use std::num::NonZeroUsize;

use lru::LruCache;
use prometheus_client::metrics::counter::Counter;

use self::frames::{Assembler, Block};
use super::conntrack::FlowKey;
use crate::{
    decode::{Decoded, traceparent_value},
    model::{Body, HttpRequest, HttpSide, TraceParent},
};

/// Connections whose tables are kept (each up to the 4 KiB HPACK default, and the block being
/// assembled): the oldest is forgotten, and its later requests tie nothing.
pub const CONNECTIONS: usize = 1024;
/// The largest dynamic table a peer may ask for (the protocol's default): a larger one is not
/// followed (the connection's requests tie nothing).
const TABLE_MAX: usize = 4096;

/// One direction of requests on a connection: its table (None once unknown) and the block
/// being put back together.
struct Conn {
    decoder: Option<loona_hpack::Decoder<'static>>,
    assembler: Assembler,
}

/// Stand-ins for the entries a connection's table held before its first window: empty
/// entries (32 bytes each: RFC 7541 4.1) filling the largest table.
const UNKNOWN_ENTRIES: usize = TABLE_MAX / 32;

impl Conn {
    fn new() -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(TABLE_MAX);
        // "Literal header field with incremental indexing, new name", name and value empty.
        let stand_ins = [0x40, 0x00, 0x00].repeat(UNKNOWN_ENTRIES);
        let seeded = decoder.decode_with_cb(&stand_ins, |_, _| {}).is_ok();
        Self {
            decoder: seeded.then_some(decoder),
            assembler: Assembler::default(),
        }
    }
}

/// What the stage counts (status and metrics).
#[derive(Clone, Default)]
pub struct Http2Counters {
    /// Header blocks decoded.
    pub header_blocks: Counter,
    /// Connections (and sides) whose table became unknown.
    pub tables_lost: Counter,
    /// Connections whose first `h2::UNTRACED_BLOCKS` request blocks named no `traceparent`.
    pub untraced: Counter,
}

pub struct Http2Headers {
    conns: LruCache<(FlowKey, bool), Conn>,
    /// Header blocks decoded.
    blocks: Counter,
    /// Connections (and sides) whose table became unknown.
    lost: Counter,
    /// Connections the kernel took as uninstrumented.
    untraced: Counter,
}

impl Http2Headers {
    pub fn new(capacity: usize, counters: Http2Counters) -> Self {
        Self {
            conns: LruCache::new(NonZeroUsize::new(capacity.max(1)).expect("non-zero")),
            blocks: counters.header_blocks,
            lost: counters.tables_lost,
            untraced: counters.untraced,
        }
    }

    /// Takes the window of one send or read of `req`'s connection: the request whose header
    /// block ends last in it (with its `traceparent`, or none), if any ends there.
    pub fn on_frame(&mut self, req: &mut HttpRequest) -> Option<Option<TraceParent>> {
        let window = req.h2.take()?;
        let key = (
            FlowKey::new(req.saddr, req.sport, req.daddr, req.dport),
            req.side == HttpSide::Sent,
        );
        if window.untraced {
            // Its blocks named no `traceparent`: nothing more of it comes.
            self.untraced.inc();
            self.conns.pop(&key);
            return None;
        }
        if !self.conns.contains(&key) {
            let mut conn = Conn::new();
            if !window.first {
                // A later window of a connection whose table is not here (evicted, or begun
                // before the agent looked): unknown.
                conn.decoder = None;
                self.lost.inc();
            }
            self.conns.put(key, conn);
        }
        let conn = self.conns.get_mut(&key)?;
        // A table known no more: nothing of this connection is decoded.
        conn.decoder.as_ref()?;
        let Ok(blocks) = conn.assembler.take(&window) else {
            conn.decoder = None;
            self.lost.inc();
            return None;
        };
        let mut last = None;
        for block in &blocks {
            match decode(conn.decoder.as_mut()?, block) {
                Some(tp) => {
                    self.blocks.inc();
                    last = Some(tp);
                }
                None => {
                    conn.decoder = None;
                    self.lost.inc();
                    return None;
                }
            }
        }
        last
    }
}

/// The `traceparent` of a header block (`Some(None)`: it has none), decoded with (and into)
/// the connection's table; `None` when the block does not decode (the table is then unknown).
fn decode(
    decoder: &mut loona_hpack::Decoder<'static>,
    block: &Block,
) -> Option<Option<TraceParent>> {
    let mut found = None;
    // A decoder bug must not take the agent down: the connection's table is then unknown.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        decoder.decode_with_cb(&block.fragment, |name, value| {
            if name.eq_ignore_ascii_case(b"traceparent") {
                found = std::str::from_utf8(&value)
                    .ok()
                    .and_then(|v| traceparent_value(v.trim()));
            }
        })
    }));
    match result {
        Ok(Ok(())) => Some(found),
        _ => None,
    }
}

impl super::Stage for Http2Headers {
    fn wants(&self, event: &Decoded) -> bool {
        matches!(&event.body, Body::HttpRequest(r) if r.h2.is_some())
    }

    /// Takes a window of header-block frames: passes the last request it completes on (as a
    /// head with its `traceparent`), makes nothing of one that completes none.
    fn on_event(
        &mut self,
        mut event: Decoded,
        _cx: &super::Enricher,
        _out: &mut Vec<crate::model::Record>,
    ) -> Option<Decoded> {
        let Body::HttpRequest(req) = &mut event.body else {
            return Some(event);
        };
        let tp = self.on_frame(req)?;
        req.traceparent = tp;
        Some(event)
    }
}
