//! HTTP/1.x request heads captured on the TCP send and receive paths: the connection, the
//! side and the W3C `traceparent`; HTTP/2 header-block frames, as copied (decoded later with
//! their connection's HPACK table: `enrich/http2`).

#[allow(clippy::wildcard_imports)]
use super::*;

pub(super) fn http_request(ev: &HttpRequestEvent) -> Result<HttpRequest, DecodeError> {
    let (fam, saddr, daddr) = socket_addresses(ev.family, &ev.saddr, &ev.daddr)?;
    let len = (ev.len as usize).min(ev.data.len());
    let data = &ev.data[..len];
    let (side, h2) = match ev.side {
        side::SENT => (HttpSide::Sent, None),
        side::RECEIVED => (HttpSide::Received, None),
        side::ANSWERED => (HttpSide::Answered, None),
        side::H2_SENT => (HttpSide::Sent, Some(h2_window(ev.flags, data))),
        side::H2_RECEIVED => (HttpSide::Received, Some(h2_window(ev.flags, data))),
        other => return Err(DecodeError::HttpSide(other)),
    };
    Ok(HttpRequest {
        side,
        family: fam,
        saddr,
        sport: ev.sport,
        daddr,
        dport: ev.dport,
        traceparent: h2.is_none().then(|| traceparent(data)).flatten(),
        h2,
    })
}

fn h2_window(flags: u32, data: &[u8]) -> Box<H2Frame> {
    Box::new(H2Frame {
        data: data.to_vec(),
        lost: flags & h2::LOST != 0,
        first: flags & h2::FIRST != 0,
        untraced: flags & h2::UNTRACED != 0,
    })
}

/// The `traceparent` header of an HTTP/1.x request head (version 00; an invalid value is no
/// context, never a guess).
pub fn traceparent(head: &[u8]) -> Option<TraceParent> {
    let end = head
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(head.len());
    for line in head[..end].split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        if !line[..colon].eq_ignore_ascii_case(b"traceparent") {
            continue;
        }
        return traceparent_value(std::str::from_utf8(&line[colon + 1..]).ok()?.trim());
    }
    None
}

/// A `traceparent` header's value (version 00; an invalid value is no context, never a
/// guess).
pub fn traceparent_value(value: &str) -> Option<TraceParent> {
    let parts: Vec<&str> = value.split('-').collect();
    let [version, trace, span, flags] = parts[..] else {
        return None;
    };
    let hex = |s: &str, n: usize| -> Option<Vec<u8>> {
        if s.len() != 2 * n
            || !s
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return None;
        }
        (0..n)
            .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
            .collect()
    };
    if version != "00" {
        return None;
    }
    let trace_id: [u8; 16] = hex(trace, 16)?.try_into().ok()?;
    let span_id: [u8; 8] = hex(span, 8)?.try_into().ok()?;
    let flags = hex(flags, 1)?[0];
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(TraceParent {
        trace_id,
        span_id,
        flags,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_from_request_heads() {
        let head = b"GET /api HTTP/1.1\r\nHost: x\r\nTraceParent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\nbody";
        let tp = traceparent(head).unwrap();
        assert_eq!(
            tp.trace_id,
            [
                0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e,
                0x47, 0x36
            ]
        );
        assert_eq!(tp.span_id, [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert_eq!(tp.flags, 1);
        for bad in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\ntraceparent: 01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n",
            b"GET / HTTP/1.1\r\ntraceparent: 00-00000000000000000000000000000000-00f067aa0ba902b7-01\r\n\r\n",
            b"GET / HTTP/1.1\r\ntraceparent: 00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01\r\n\r\n",
            b"GET / HTTP/1.1\r\ntraceparent: 00-4bf92f35-00f067aa0ba902b7-01\r\n\r\n",
            // In the body, not the head.
            b"POST / HTTP/1.1\r\nHost: x\r\n\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n",
        ] {
            assert_eq!(traceparent(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }
}
