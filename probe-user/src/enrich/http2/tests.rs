//! Header blocks encoded by a real HPACK encoder (with its dynamic table, as a client's
//! second request indexes the `traceparent` name), framed as HTTP/2 frames and copied the
//! ways the kernel copies them.

use std::net::{IpAddr, Ipv4Addr};

use prometheus_client::metrics::counter::Counter;

use super::*;
use crate::model::{Family, H2Frame};

const TP: [&str; 3] = [
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "00-5bf92f3577b34da6a3ce929d0e0e4737-10f067aa0ba902b8-00",
];

fn headers(tp: Option<&str>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut h: Vec<(Vec<u8>, Vec<u8>)> = [
        (":method", "POST"),
        (":scheme", "http"),
        (
            ":path",
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
        ),
        (":authority", "127.0.0.1:50051"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]
    .iter()
    .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
    .collect();
    if let Some(tp) = tp {
        h.push((b"traceparent".to_vec(), tp.as_bytes().to_vec()));
    }
    h
}

/// A frame: its 9-byte header then the payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend(stream.to_be_bytes());
    f.extend(payload);
    f
}

fn copy(data: &[u8], first: bool) -> H2Frame {
    H2Frame {
        data: data.to_vec(),
        lost: false,
        first,
        untraced: false,
    }
}

fn request(frame: H2Frame) -> HttpRequest {
    HttpRequest {
        side: HttpSide::Sent,
        family: Family::Ipv4,
        saddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
        sport: 40000,
        daddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
        dport: 50051,
        traceparent: None,
        h2: Some(Box::new(frame)),
    }
}

fn stage() -> (Http2Headers, Counter, Counter) {
    let counters = Http2Counters::default();
    (
        Http2Headers::new(8, counters.clone()),
        counters.header_blocks,
        counters.tables_lost,
    )
}

fn take(s: &mut Http2Headers, f: H2Frame) -> Option<Option<TraceParent>> {
    s.on_frame(&mut request(f))
}

fn tp(i: usize) -> Option<TraceParent> {
    traceparent_value(TP[i])
}

#[test]
fn requests_on_one_connection_decode_with_its_table() {
    let mut enc = loona_hpack::Encoder::new();
    let (mut s, blocks, lost) = stage();
    let mut first = true;
    for (i, stream) in [(0, 1u32), (1, 3), (2, 5)] {
        let h = headers(Some(TP[i]));
        let block = enc.encode(h.iter().map(|(n, v)| (&n[..], &v[..])));
        let got = take(&mut s, copy(&frame(1, 0x4 | 0x1, stream, &block), first));
        first = false;
        assert_eq!(got, Some(tp(i)), "request {i}");
    }
    // A request without one: the connection's context ends.
    let h = headers(None);
    let block = enc.encode(h.iter().map(|(n, v)| (&n[..], &v[..])));
    assert_eq!(
        take(&mut s, copy(&frame(1, 0x4, 7, &block), false)),
        Some(None)
    );
    assert_eq!((blocks.get(), lost.get()), (4, 0));
}

/// A window as the kernel copies it: the send's frames from the first header-block frame on,
/// other frames among them, the last one cut at the window's end.
#[test]
fn a_window_is_split_into_frames_and_continuations_are_put_together() {
    let mut enc = loona_hpack::Encoder::new();
    let (mut s, _, lost) = stage();
    let h = headers(Some(TP[0]));
    let block = enc.encode(h.iter().map(|(n, v)| (&n[..], &v[..])));
    let (a, b) = block.split_at(block.len() / 2);
    // HEADERS without END_HEADERS, padded and with a priority; a CONTINUATION; a DATA frame
    // the window ends inside.
    let mut payload = vec![3u8];
    payload.extend([0, 0, 0, 0, 16]);
    payload.extend(a);
    payload.extend([0, 0, 0]);
    let mut window = frame(1, 0x8 | 0x20, 1, &payload);
    window.extend(frame(9, 0x4, 1, b));
    window.extend(&frame(0, 0x1, 1, &[7; 100])[..40]);
    assert_eq!(take(&mut s, copy(&window, true)), Some(tp(0)));
    assert_eq!(lost.get(), 0);
}

/// Two requests' blocks in one send: the last one's context.
#[test]
fn the_last_block_of_a_window_gives_the_context() {
    let mut enc = loona_hpack::Encoder::new();
    let (mut s, blocks, _) = stage();
    let mut window = Vec::new();
    for (i, stream) in [(0, 1u32), (1, 3)] {
        let h = headers(Some(TP[i]));
        let block = enc.encode(h.iter().map(|(n, v)| (&n[..], &v[..])));
        window.extend(frame(1, 0x4, stream, &block));
        window.extend(frame(0, 0x1, stream, b"message"));
    }
    assert_eq!(take(&mut s, copy(&window, true)), Some(tp(1)));
    assert_eq!(blocks.get(), 2);
}

/// A header-block frame cut by the window's end (the kernel says `lost` then; a window that
/// does not is refused the same way).
#[test]
fn a_cut_header_block_frame_makes_the_table_unknown() {
    let mut enc = loona_hpack::Encoder::new();
    let (mut s, _, lost) = stage();
    let h = headers(Some(TP[0]));
    let block = enc.encode(h.iter().map(|(n, v)| (&n[..], &v[..])));
    let whole = frame(1, 0x4, 1, &block);
    assert_eq!(take(&mut s, copy(&whole[..whole.len() - 1], true)), None);
    assert_eq!(lost.get(), 1);
}

#[test]
fn a_connection_with_missed_frames_ties_nothing_from_then_on() {
    let mut enc = loona_hpack::Encoder::new();
    let (mut s, _, lost) = stage();
    let blocks: Vec<Vec<u8>> = (0..3)
        .map(|i| {
            let h = headers(Some(TP[i]));
            enc.encode(h.iter().map(|(n, v)| (&n[..], &v[..])))
        })
        .collect();
    assert_eq!(
        take(&mut s, copy(&frame(1, 0x4, 1, &blocks[0]), true)),
        Some(tp(0))
    );
    let mut missed = copy(&[], false);
    missed.lost = true;
    assert_eq!(take(&mut s, missed), None);
    // Its table is unknown: the next requests, decodable or not, tie nothing.
    assert_eq!(
        take(&mut s, copy(&frame(1, 0x4, 5, &blocks[2]), false)),
        None
    );
    assert_eq!(lost.get(), 1);
}

#[test]
fn a_later_frame_of_an_unknown_connection_ties_nothing() {
    let mut enc = loona_hpack::Encoder::new();
    let (mut s, _, lost) = stage();
    let h = headers(Some(TP[0]));
    let block = enc.encode(h.iter().map(|(n, v)| (&n[..], &v[..])));
    assert_eq!(take(&mut s, copy(&frame(1, 0x4, 9, &block), false)), None);
    assert_eq!(lost.get(), 1);
}

#[test]
fn a_block_that_does_not_decode_makes_the_table_unknown() {
    let (mut s, blocks, lost) = stage();
    // Indexed field 200: beyond the static table and the dynamic one's stand-ins (61 + 128).
    let bad = [0x80 | 0x7f, 200 - 127];
    assert_eq!(take(&mut s, copy(&frame(1, 0x4, 1, &bad), true)), None);
    assert_eq!((blocks.get(), lost.get()), (0, 1));
}

/// The kernel sends a connection's blocks from the first that names `traceparent` on: the
/// entries the earlier requests made are not in the agent's table, and the blocks from then
/// on still decode (the stand-ins take the unknown entries' places).
#[test]
fn a_connection_traced_from_a_later_request_decodes_from_there() {
    let mut enc = loona_hpack::Encoder::new();
    let (mut s, blocks, lost) = stage();
    let untraced = headers(None);
    let unsent = enc.encode(untraced.iter().map(|(n, v)| (&n[..], &v[..])));
    let encode = |enc: &mut loona_hpack::Encoder, tp: Option<&str>| {
        let h = headers(tp);
        enc.encode(h.iter().map(|(n, v)| (&n[..], &v[..])))
    };
    let traced = encode(&mut enc, Some(TP[1]));
    // The first sent block refers to entries of the unsent one: it is shorter than the same
    // headers from a fresh table.
    let fresh = encode(&mut loona_hpack::Encoder::new(), Some(TP[1]));
    assert!(traced.len() < fresh.len() && !unsent.is_empty());
    assert_eq!(
        take(&mut s, copy(&frame(1, 0x4, 3, &traced), true)),
        Some(tp(1))
    );
    let next = encode(&mut enc, Some(TP[2]));
    assert_eq!(
        take(&mut s, copy(&frame(1, 0x4, 5, &next), false)),
        Some(tp(2))
    );
    let last = encode(&mut enc, None);
    assert_eq!(
        take(&mut s, copy(&frame(1, 0x4, 7, &last), false)),
        Some(None)
    );
    assert_eq!((blocks.get(), lost.get()), (3, 0));
}

/// The literals the kernel looks for name `traceparent` (a real decoder says so), and a real
/// encoder's first traced block holds one of them.
#[test]
fn the_kernels_literals_name_traceparent() {
    use probe_common::h2::{TRACEPARENT_HUFFMAN, TRACEPARENT_RAW};
    let huffman = [&[0x40][..], &TRACEPARENT_HUFFMAN, &[0x01, b'x']].concat();
    let mut raw = [&[0x40][..], &TRACEPARENT_RAW].concat();
    raw.extend(b"ent\x01x");
    for block in [huffman, raw] {
        let mut names = Vec::new();
        loona_hpack::Decoder::new()
            .decode_with_cb(&block, |n, v| names.push((n.to_vec(), v.to_vec())))
            .expect("decodes");
        assert_eq!(names, [(b"traceparent".to_vec(), b"x".to_vec())]);
    }
    let h = headers(Some(TP[0]));
    let block = loona_hpack::Encoder::new().encode(h.iter().map(|(n, v)| (&n[..], &v[..])));
    assert!(
        [TRACEPARENT_HUFFMAN, TRACEPARENT_RAW]
            .iter()
            .any(|l| block.windows(9).any(|w| w == l)),
        "{block:02x?}"
    );
}

/// A connection the kernel took as uninstrumented is counted once, as no lost table, and its
/// window makes no request.
#[test]
fn an_uninstrumented_connection_is_counted_and_makes_nothing() {
    let counters = Http2Counters::default();
    let mut s = Http2Headers::new(8, counters.clone());
    let mut given_up = copy(&[], true);
    given_up.untraced = true;
    assert_eq!(take(&mut s, given_up), None);
    assert_eq!(
        (
            counters.untraced.get(),
            counters.tables_lost.get(),
            counters.header_blocks.get()
        ),
        (1, 0, 0)
    );
}
