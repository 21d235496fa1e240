//! The server's end of the trace tie: the traced requests a process received, each from its
//! receive until it was answered (the first send on its connection after it), superseded (the
//! next request on its connection, or the next traced one its thread took) or given up on
//! (`OPEN_MAX`). A record inside such an interval joins the request's trace when the interval
//! proves it: same connection, same thread, or the process's only traced request in flight
//! then. Two requests in flight in one process tie nothing by process: that would be a guess.
//! Intervals are kept `KEEP` after they end, so a record made later (a core signal joined with
//! the exit, a Wasm line assembled from chunks) is judged by when it happened.

use std::{
    collections::VecDeque,
    num::NonZeroUsize,
    time::{Duration, Instant},
};

use lru::LruCache;

use crate::{enrich::conntrack::FlowKey, model::TraceParent};

/// A request not answered after this long is no longer being served (a hung or crashed
/// handler, a connection the agent heard no more of).
const OPEN_MAX: Duration = Duration::from_secs(60);
/// How long an ended request is remembered for records made late.
const KEEP: Duration = Duration::from_secs(60);
/// Traced requests remembered per process, newest kept.
const PER_PROCESS: usize = 64;
/// How often old intervals are dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// One traced request a thread received: kernel times (ns), `end` `u64::MAX` while open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Served {
    parent: TraceParent,
    tid: u32,
    conn: FlowKey,
    start: u64,
    end: u64,
}

impl Served {
    fn open(&self) -> bool {
        self.end == u64::MAX
    }
    /// Whether the request was being served at `t`: from its receive, until its end or for at
    /// most `OPEN_MAX`.
    fn covers(&self, t: u64) -> bool {
        let until = self
            .end
            .min(self.start.saturating_add(OPEN_MAX.as_nanos() as u64));
        self.start <= t && t < until
    }
}

/// How a record's time and task or connection found its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    Thread(TraceParent),
    Process(TraceParent),
    /// Inside more than one request of the process, on none of their threads: not tied.
    Ambiguous,
}

pub struct Serving {
    by_process: LruCache<u32, VecDeque<Served>>,
    /// The process that received each traced connection's latest request.
    by_conn: LruCache<FlowKey, u32>,
    last_sweep: Option<Instant>,
}

impl Serving {
    pub fn new(capacity: usize) -> Self {
        let cap = NonZeroUsize::new(capacity.max(1)).expect("non-zero");
        Self {
            by_process: LruCache::new(cap),
            by_conn: LruCache::new(cap),
            last_sweep: None,
        }
    }

    /// A request received at `t` by thread `tid` of `tgid` on `conn`: with a trace context it
    /// starts being served; with or without, it ends the connection's previous request, and a
    /// traced one ends what its thread was serving.
    pub fn received(
        &mut self,
        tgid: u32,
        tid: u32,
        conn: FlowKey,
        parent: Option<TraceParent>,
        t: u64,
    ) {
        self.end_conn(conn, t);
        let Some(parent) = parent else {
            return;
        };
        let list = self.by_process.get_or_insert_mut(tgid, VecDeque::new);
        for s in list.iter_mut().filter(|s| s.open() && s.tid == tid) {
            s.end = t;
        }
        if list.len() == PER_PROCESS {
            list.pop_front();
        }
        list.push_back(Served {
            parent,
            tid,
            conn,
            start: t,
            end: u64::MAX,
        });
        self.by_conn.put(conn, tgid);
    }

    /// The first send on `conn` after its traced request, at `t`: the request was answered.
    pub fn answered(&mut self, conn: FlowKey, t: u64) {
        self.end_conn(conn, t);
    }

    fn end_conn(&mut self, conn: FlowKey, t: u64) {
        let Some(tgid) = self.by_conn.peek(&conn).copied() else {
            return;
        };
        if let Some(list) = self.by_process.peek_mut(&tgid) {
            for s in list.iter_mut().filter(|s| s.open() && s.conn == conn) {
                s.end = t;
            }
        }
    }

    /// The request being served on `conn` at `t`.
    pub fn on_connection(&mut self, conn: FlowKey, t: u64) -> Option<TraceParent> {
        let tgid = *self.by_conn.peek(&conn)?;
        let list = self.by_process.peek(&tgid)?;
        list.iter()
            .rev()
            .find(|s| s.conn == conn && s.covers(t))
            .map(|s| s.parent)
    }

    /// The request thread `tid` of `tgid` was serving at `t`, else the process's only one.
    pub fn by_task(&self, tgid: u32, tid: u32, t: u64) -> Option<Found> {
        let list = self.by_process.peek(&tgid)?;
        if let Some(s) = list.iter().rev().find(|s| s.tid == tid && s.covers(t)) {
            return Some(Found::Thread(s.parent));
        }
        let mut inside = list.iter().filter(|s| s.covers(t));
        let first = inside.next()?;
        Some(match inside.next() {
            None => Found::Process(first.parent),
            Some(_) => Found::Ambiguous,
        })
    }

    /// Whether nothing is remembered (the common case: a record costs nothing more).
    pub fn is_empty(&self) -> bool {
        self.by_process.is_empty()
    }

    /// Drops the requests ended more than `KEEP` before `t` (or open for longer than
    /// `OPEN_MAX` and then `KEEP`), at most once every `SWEEP_EVERY`.
    pub fn sweep(&mut self, now: Instant, t: u64) {
        if self
            .last_sweep
            .is_some_and(|last| now.duration_since(last) < SWEEP_EVERY)
        {
            return;
        }
        self.last_sweep = Some(now);
        let keep = KEEP.as_nanos() as u64;
        let open_max = OPEN_MAX.as_nanos() as u64;
        let stale = |s: &Served| {
            let until = s.end.min(s.start.saturating_add(open_max));
            until.saturating_add(keep) < t
        };
        let mut empty = Vec::new();
        for (tgid, list) in self.by_process.iter_mut() {
            list.retain(|s| !stale(s));
            if list.is_empty() {
                empty.push(*tgid);
            }
        }
        for tgid in empty {
            self.by_process.pop(&tgid);
        }
        let live = &self.by_process;
        let gone: Vec<FlowKey> = self
            .by_conn
            .iter()
            .filter(|(conn, tgid)| {
                live.peek(tgid)
                    .is_none_or(|l| !l.iter().any(|s| s.conn == **conn))
            })
            .map(|(conn, _)| *conn)
            .collect();
        for conn in gone {
            self.by_conn.pop(&conn);
        }
    }
}
