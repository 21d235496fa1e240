//! HTTP/2 in clear text (h2c: gRPC without TLS) on the TCP send and receive paths
//! (`tcp_sendmsg_locked.rs`, `sock_recv_length.rs`). A client's connection is one whose first
//! send starts with the connection preface (`PRI * HTTP/2.0`), a server's one whose first read
//! does. Header blocks are HPACK-coded against a table each connection builds, so the kernel
//! does not read them: it follows the frame headers of the requests' direction across the
//! sends (or reads) of the connection (`H2_CONNS`: how much of a frame goes on past a send) and
//! copies one window per send, from its first header-block frame (HEADERS or CONTINUATION) on,
//! to the agent, which splits it into frames and decodes the blocks in order with the
//! connection's table. On a server's sends, a HEADERS frame (a response's start) answers.
//! Not a hook.
//!
//! Kept simple for the verifier (one loop that only adds frame lengths, one copy, one event):
//! a direction is given up, and the agent told (`h2::LOST`), when its header blocks cannot be
//! copied whole: a header-block frame that goes on past the send, or past the window, frame
//! headers beyond the send's first buffer, a frame header split by the send's end, or more
//! than `FRAMES` frames in one send. Other sockets pay nothing here: their state is not
//! `H2_CLIENT`/`H2_SERVER`.

use aya_ebpf::{
    helpers::bpf_probe_read_user_buf,
    macros::map,
    maps::{LruHashMap, PerCpuArray},
};
use probe_common::{HTTP_HEAD, SendLayout, h2, side};

use crate::{common::clamp_len, http::emit_with};

/// The first 4 bytes of the client's connection preface, little-endian.
pub const PREFACE: u32 = u32::from_le_bytes(*b"PRI ");
/// The preface's length: "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".
const PREFACE_LEN: u64 = 24;
const FRAME_HEADER: u64 = 9;
const HEADERS: u8 = 1;
const CONTINUATION: u8 = 9;
/// Frames followed in one send or read.
const FRAMES: usize = 8;
/// No header-block frame in the send.
const NONE: u64 = u64::MAX;

/// Where one direction of a connection is in its frames.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Dir {
    /// Bytes of the current frame still to come (it began in an earlier send).
    skip: u64,
    /// 1 once given up.
    lost: u64,
    /// 1 once a window was copied (the first says `h2::FIRST`).
    copied: u64,
}

/// The request direction (the client's sends, the server's reads) and the other one (the
/// server's sends, for its answers).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Conn {
    requests: Dir,
    answers: Dir,
}

/// HTTP/2 connections by socket. An LRU: a full map forgets its oldest connection (its frames
/// then go unread: the agent's table for it is stale, which only its next `h2::LOST` says).
#[map]
pub static H2_CONNS: LruHashMap<u64, Conn> = LruHashMap::with_max_entries(16384, 0);

/// What the walk of one send or read found, for its event.
#[repr(C)]
pub struct Found {
    /// The send's bytes and how many can be read in its first buffer.
    src: u64,
    readable: u64,
    total: u64,
    /// The first header-block frame's offset (`NONE`: none), and where the last one ends.
    first: u64,
    end: u64,
    side: u64,
    /// The frame header being read (in the scratch, not the stack).
    hdr: [u8; 8],
}

/// Per CPU: what the walk found, and a new connection's first state (neither fits the stack
/// beside the hooks' own).
#[repr(C)]
pub struct Scratch {
    found: Found,
    conn: Conn,
}

#[map]
static H2_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// A connection whose preface was just seen (sent by a client, read by a server): the
/// requests' direction starts after it.
#[inline(always)]
pub fn start(sk: u64) {
    let Some(scratch) = H2_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the per-CPU scratch value is this program's alone while it runs.
    let conn = unsafe { &mut (*scratch).conn };
    conn.requests = Dir {
        skip: PREFACE_LEN,
        lost: 0,
        copied: 0,
    };
    conn.answers = Dir {
        skip: 0,
        lost: 0,
        copied: 0,
    };
    let _ = H2_CONNS.insert(&sk, conn, 0);
}

/// A send or read of `total` bytes on HTTP/2 socket `sk`, the first `readable` of them at
/// `src`: `REQUESTS` for the client's sends and the server's reads (copied as `side`), else
/// the server's sends (a HEADERS frame answers). Walks the frame headers; the direction when
/// there is an event to make ([`emit`]: one copy of the event code in a program that follows
/// both directions).
#[inline(always)]
pub fn follow<const REQUESTS: bool>(
    sk: u64,
    src: u64,
    readable: u64,
    total: u64,
    side: u16,
) -> Option<*mut Dir> {
    let conn = H2_CONNS.get_ptr_mut(&sk)?;
    // SAFETY: the socket's value in this program's map (an LRU may reuse it for another
    // socket at worst: frames misread for the agent to refuse, never a fault).
    let d = unsafe {
        if REQUESTS {
            &mut (*conn).requests
        } else {
            &mut (*conn).answers
        }
    };
    if d.lost != 0 {
        return None;
    }
    if d.skip >= total {
        // The whole send is inside one frame's payload.
        d.skip -= total;
        return None;
    }
    let readable = if readable < total { readable } else { total };
    let scratch = H2_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: the per-CPU scratch value is this program's alone while it runs.
    let found = unsafe { &mut (*scratch).found };
    found.src = src;
    found.readable = readable;
    found.total = total;
    found.first = NONE;
    found.end = 0;
    found.side = u64::from(if REQUESTS { side } else { side::ANSWERED });
    let mut off = d.skip;
    for _ in 0..FRAMES {
        if off + FRAME_HEADER > total {
            break;
        }
        if off + FRAME_HEADER > readable {
            // A frame header beyond the first buffer.
            break;
        }
        let Some(dst) = found.hdr.get_mut(..4) else {
            break;
        };
        // SAFETY: bpf_probe_read_user_buf validates the address.
        if unsafe { bpf_probe_read_user_buf((src + off) as *const u8, dst) }.is_err() {
            break;
        }
        let [a, b, c, kind, ..] = found.hdr;
        let len = (u64::from(a) << 16) | (u64::from(b) << 8) | u64::from(c);
        let next = off + FRAME_HEADER + len;
        if kind == HEADERS || (REQUESTS && kind == CONTINUATION) {
            if found.first == NONE {
                found.first = off;
            }
            found.end = next;
        }
        off = next;
    }
    if off < total {
        // More frames than are followed, a frame header beyond the first buffer or split by
        // the send's end: the frames are lost from here.
        d.lost = 1;
        return REQUESTS.then_some(d as *mut Dir);
    }
    d.skip = off - total;
    if found.first == NONE {
        return None;
    }
    Some(d)
}

/// The event of the send or read [`follow`] walked (direction `d`): the window of its header
/// blocks, or an answer; a give-up says `h2::LOST` without data.
#[inline(always)]
pub fn emit(sk: u64, l: &SendLayout, d: *mut Dir) {
    let Some(scratch) = H2_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the per-CPU scratch value is this program's alone while it runs; `d` is the
    // map value `follow` gave.
    let (f, d) = unsafe { (&(*scratch).found, &mut *d) };
    let side = f.side as u16;
    let mut flags = 0;
    let mut copy = 0;
    let mut src = 0;
    if side != side::ANSWERED {
        if d.copied == 0 {
            flags |= h2::FIRST;
        }
        d.copied = 1;
        // The window: from the first header-block frame to the end of what can be read, at
        // most an event's room.
        let (start, want) = if d.lost == 0 && f.first < f.readable {
            (f.first, f.end - f.first)
        } else {
            (0, 0)
        };
        let n = clamp_len(f.readable - start, HTTP_HEAD as u64);
        if d.lost != 0 || want > n || f.end > f.total {
            // A header block not copied whole: the connection's table is lost.
            flags |= h2::LOST;
            d.lost = 1;
        } else {
            copy = n;
            src = f.src + start;
        }
    }
    emit_with(sk, l, side, flags, |data| {
        let n = clamp_len(copy, HTTP_HEAD as u64) as usize;
        if n == 0 {
            return 0;
        }
        let Some(dst) = data.get_mut(..n) else {
            return 0;
        };
        // SAFETY: bpf_probe_read_user_buf validates the address.
        match unsafe { bpf_probe_read_user_buf(src as *const u8, dst) } {
            Ok(()) => n as u32,
            Err(_) => 0,
        }
    });
}
