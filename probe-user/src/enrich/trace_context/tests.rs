use std::net::IpAddr;

use super::*;
use crate::model::samples;

const SEC: u64 = 1_000_000_000;

fn tp(byte: u8) -> TraceParent {
    TraceParent {
        trace_id: [byte; 16],
        span_id: [byte ^ 0x0f; 8],
        flags: 1,
    }
}

fn request(side: HttpSide, port: u16, tp: Option<TraceParent>) -> HttpRequest {
    HttpRequest {
        side,
        family: crate::model::Family::Ipv4,
        saddr: IpAddr::from([10, 0, 0, 2]),
        sport: 8080,
        daddr: IpAddr::from([10, 0, 0, 1]),
        dport: port,
        traceparent: tp,
        h2: None,
    }
}

/// The task `pid`/`tid` at kernel time `t`.
fn task(pid: u32, tid: u32, t: u64) -> Common {
    Common {
        ktime_ns: t,
        pid: Some(pid),
        tid: Some(tid),
        ..Common::none()
    }
}

/// A reset of the connection from the client's `port` to the server's 8080, at `t`.
fn reset(port: u16, t: u64) -> Record {
    let mut r = samples::reset();
    let Body::TcpReset(reset) = &mut r.body else {
        unreachable!()
    };
    (reset.saddr, reset.sport) = (IpAddr::from([10, 0, 0, 1]), port);
    (reset.daddr, reset.dport) = (IpAddr::from([10, 0, 0, 2]), 8080);
    r.common.ktime_ns = t;
    r
}

/// A core signal of thread `tid` of process `pid` at `t`.
fn crash(pid: u32, tid: u32, t: u64) -> Record {
    let mut r = samples::core_signal();
    r.common = task(pid, tid, t);
    r
}

/// A request read at `t` (seconds) by thread `tid` of process 100 on the connection from `port`.
fn received(c: &mut TraceContexts, port: u16, parent: Option<TraceParent>, tid: u32, t: u64) {
    let req = request(HttpSide::Received, port, parent);
    c.on_request(&req, &task(100, tid, t * SEC), Instant::now());
}

/// The answer, at `t` (seconds), to the request read on the connection from `port`.
fn answered(c: &mut TraceContexts, port: u16, t: u64) {
    let req = request(HttpSide::Answered, port, None);
    c.on_request(&req, &task(100, 101, t * SEC), Instant::now());
}

fn tie(c: &mut TraceContexts, mut r: Record) -> Option<(TraceParent, Tie)> {
    c.apply(&mut r, Instant::now());
    r.trace.map(|t| (t.parent, t.trace_tie))
}

fn contexts() -> (TraceContexts, Counter) {
    let ambiguous = Counter::default();
    (
        TraceContexts::new(16, Counter::default(), ambiguous.clone()),
        ambiguous,
    )
}

#[test]
fn events_join_the_last_request_sent_on_their_connection_only() {
    let (mut c, _) = contexts();
    let t0 = Instant::now();
    let client = task(1, 1, SEC);
    c.on_request(&request(HttpSide::Sent, 40000, Some(tp(0xab))), &client, t0);
    let mut r = reset(40000, 2 * SEC);
    c.apply(&mut r, t0);
    let t = r.trace.unwrap();
    assert_eq!(t.trace_id, "ab".repeat(16));
    assert_eq!(t.parent_span_id, "a4".repeat(8));
    assert_eq!(t.trace_tie, Tie::Connection);
    // Another connection: nothing.
    assert_eq!(tie(&mut c, reset(40001, 2 * SEC)), None);
    // The next request on the connection carries no context: neither does the event.
    c.on_request(&request(HttpSide::Sent, 40000, None), &client, t0);
    assert_eq!(tie(&mut c, reset(40000, 2 * SEC)), None);
    // Contexts expire.
    c.on_request(&request(HttpSide::Sent, 40002, Some(tp(0xab))), &client, t0);
    let mut late = reset(40002, 2 * SEC);
    c.apply(&mut late, t0 + TTL + Duration::from_secs(1));
    assert_eq!(late.trace, None);
}

/// A server thread received a traced request: until it answers, a reset of that connection is
/// tied by connection, a crash of that thread by thread, a crash of another thread of the
/// process by process (its only traced request); after the answer, nothing is.
#[test]
fn a_served_request_ties_its_connection_thread_and_process_until_answered() {
    let (mut c, ambiguous) = contexts();
    received(&mut c, 40000, Some(tp(0x11)), 101, 10);
    assert_eq!(tie(&mut c, crash(100, 101, 9 * SEC)), None, "before it");
    assert_eq!(
        tie(&mut c, reset(40000, 11 * SEC)),
        Some((tp(0x11), Tie::Connection))
    );
    assert_eq!(
        tie(&mut c, crash(100, 101, 11 * SEC)),
        Some((tp(0x11), Tie::Thread))
    );
    assert_eq!(
        tie(&mut c, crash(100, 102, 11 * SEC)),
        Some((tp(0x11), Tie::Process))
    );
    assert_eq!(
        tie(&mut c, crash(200, 101, 11 * SEC)),
        None,
        "another process"
    );
    assert_eq!(
        tie(&mut c, reset(40001, 11 * SEC)),
        None,
        "another connection"
    );
    answered(&mut c, 40000, 12);
    // Judged by when they happened: a record made late still belongs to the request.
    assert_eq!(
        tie(&mut c, crash(100, 101, 11 * SEC)),
        Some((tp(0x11), Tie::Thread))
    );
    assert_eq!(
        tie(&mut c, crash(100, 101, 13 * SEC)),
        None,
        "after the answer"
    );
    assert_eq!(tie(&mut c, reset(40000, 13 * SEC)), None);
    assert_eq!(ambiguous.get(), 0);
}

/// Two traced requests in flight in one process: a record of either thread is tied by thread;
/// one of a third thread is in no trace (counted), never guessed.
#[test]
fn two_requests_in_flight_tie_nothing_by_process() {
    let (mut c, ambiguous) = contexts();
    received(&mut c, 40000, Some(tp(0x11)), 101, 10);
    received(&mut c, 40001, Some(tp(0x22)), 102, 10);
    assert_eq!(
        tie(&mut c, crash(100, 101, 11 * SEC)),
        Some((tp(0x11), Tie::Thread))
    );
    assert_eq!(
        tie(&mut c, crash(100, 102, 11 * SEC)),
        Some((tp(0x22), Tie::Thread))
    );
    assert_eq!(
        tie(&mut c, reset(40001, 11 * SEC)),
        Some((tp(0x22), Tie::Connection))
    );
    assert_eq!(tie(&mut c, crash(100, 103, 11 * SEC)), None);
    assert_eq!(ambiguous.get(), 1);
    // One answered: the other is the process's only one again.
    answered(&mut c, 40000, 12);
    assert_eq!(
        tie(&mut c, crash(100, 103, 13 * SEC)),
        Some((tp(0x22), Tie::Process))
    );
}

/// A request without a traceparent ties nothing; on a connection whose traced request was
/// never answered it ends that one. The next traced request of a thread ends the one before.
#[test]
fn untraced_and_next_requests_end_what_came_before() {
    let (mut c, _) = contexts();
    received(&mut c, 40000, None, 101, 10);
    assert_eq!(tie(&mut c, crash(100, 101, 11 * SEC)), None);
    assert_eq!(tie(&mut c, reset(40000, 11 * SEC)), None);

    received(&mut c, 40000, Some(tp(0x11)), 101, 20);
    received(&mut c, 40000, None, 101, 21);
    assert_eq!(
        tie(&mut c, crash(100, 101, 22 * SEC)),
        None,
        "ended by the next request"
    );
    assert_eq!(tie(&mut c, reset(40000, 22 * SEC)), None);

    received(&mut c, 40001, Some(tp(0x22)), 101, 30);
    received(&mut c, 40002, Some(tp(0x33)), 101, 31);
    assert_eq!(
        tie(&mut c, crash(100, 101, 32 * SEC)),
        Some((tp(0x33), Tie::Thread))
    );
    // The first connection's request ended when its thread took the next one.
    assert_eq!(tie(&mut c, reset(40001, 32 * SEC)), None);
}

/// A request never answered is served for at most a minute: a hung or crashed handler's
/// thread does not tie what it does an hour later.
#[test]
fn an_unanswered_request_is_served_for_a_minute_at_most() {
    let (mut c, _) = contexts();
    received(&mut c, 40000, Some(tp(0x11)), 101, 10);
    assert_eq!(
        tie(&mut c, crash(100, 101, 69 * SEC)),
        Some((tp(0x11), Tie::Thread))
    );
    assert_eq!(tie(&mut c, crash(100, 101, 71 * SEC)), None);
    assert_eq!(tie(&mut c, reset(40000, 71 * SEC)), None);
}

/// Records of kinds the kernel makes for a connection in whichever task runs (a reset, a drop)
/// are never tied by task, only by their flow.
#[test]
fn records_without_a_task_of_their_own_are_tied_by_flow_only() {
    let (mut c, _) = contexts();
    received(&mut c, 40000, Some(tp(0x11)), 101, 10);
    let mut other_flow = reset(40009, 11 * SEC);
    other_flow.common = task(100, 101, 11 * SEC);
    assert_eq!(tie(&mut c, other_flow), None);
    let mut wasm = samples::wasm();
    wasm.common = task(100, 101, 11 * SEC);
    assert_eq!(tie(&mut c, wasm), Some((tp(0x11), Tie::Thread)));
}

/// A signal a serving thread sent to another process joins the sender's request: by the
/// sender's thread, or its process; the target's own request comes first.
#[test]
fn a_signal_joins_the_request_its_sender_was_serving() {
    let (mut c, _) = contexts();
    received(&mut c, 40000, Some(tp(0x11)), 101, 10);
    let killed = |target: u32, sender_tid: u32, t: u64| {
        let mut r = crash(target, target, t);
        let Body::CoreSignal(s) = &mut r.body else {
            unreachable!()
        };
        (s.sender_pid, s.sender_tid) = (Some(100), Some(sender_tid));
        r
    };
    assert_eq!(
        tie(&mut c, killed(300, 101, 11 * SEC)),
        Some((tp(0x11), Tie::SenderThread))
    );
    assert_eq!(
        tie(&mut c, killed(300, 105, 11 * SEC)),
        Some((tp(0x11), Tie::SenderProcess))
    );
    assert_eq!(
        tie(&mut c, killed(300, 101, 9 * SEC)),
        None,
        "before the request"
    );
    // The target serves a request of its own: that one.
    let mut other = request(HttpSide::Received, 40001, Some(tp(0x22)));
    other.dport = 40001;
    c.on_request(&other, &task(300, 300, 10 * SEC), Instant::now());
    assert_eq!(
        tie(&mut c, killed(300, 101, 11 * SEC)),
        Some((tp(0x22), Tie::Thread))
    );
}
