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
//! Only traced connections reach the agent: until a connection's request direction names
//! `traceparent` (a literal, Huffman-coded or not: the name is in no static table, so its
//! first use on a connection spells it out), its header blocks are only looked through for
//! that literal, and nothing is sent, answers included. From the first block that names it on,
//! every block goes to the agent (`h2::FIRST` on the first: the table entries made before are
//! unknown there, and no `traceparent` can be among them).
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
use probe_common::{
    HTTP_HEAD, SendLayout,
    h2::{self, TRACEPARENT_HUFFMAN, TRACEPARENT_RAW},
    side,
};

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
    /// `LOOKING` until the requests name `traceparent`, then `TRACED` (the connection's blocks
    /// go to the agent from then on; the answers' direction goes by the requests'), or
    /// `UNTRACED` after `h2::UNTRACED_BLOCKS` blocks without.
    traced: u64,
    /// Request header blocks looked through while `LOOKING`.
    looked: u64,
}

const LOOKING: u64 = 0;
const TRACED: u64 = 1;
const UNTRACED: u64 = 2;

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

/// Bytes of a send's header blocks looked through for the name `traceparent` (a block's
/// window is no larger).
const SEARCH: usize = HTTP_HEAD;

/// Per CPU: what the walk found, a new connection's first state and an untraced connection's
/// header blocks being looked through (none fits the stack beside the hooks' own).
#[repr(C)]
pub struct Scratch {
    found: Found,
    conn: Conn,
    block: Block,
}

/// An untraced connection's header blocks being looked through.
#[repr(C)]
pub struct Block {
    /// Words: the look-through reads them 8 bytes at a time, aligned.
    words: [u64; SEARCH / 8 + 3],
    /// 1 when the name was found.
    hit: u64,
    /// Words of the block to look through.
    words_in: u64,
    /// The words that hold a literal's length byte (the first `CANDIDATES`: a literal past
    /// them is not seen, and the connection stays untraced until a block names it sooner).
    candidates: [u16; CANDIDATES],
    /// How many words were noted.
    found: u64,
}

/// Words of a block whose places are compared.
const CANDIDATES: usize = 8;

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
        traced: LOOKING,
        looked: 0,
    };
    conn.answers = Dir {
        skip: 0,
        lost: 0,
        copied: 0,
        traced: LOOKING,
        looked: 0,
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
    if REQUESTS && d.traced == LOOKING {
        if block_names_traceparent(found) {
            d.traced = TRACED;
        } else {
            d.looked += 1;
            if d.looked < h2::UNTRACED_BLOCKS {
                return None;
            }
            // Uninstrumented: neither direction is followed from here; the agent is told.
            d.traced = UNTRACED;
            d.lost = 1;
            // SAFETY: as above.
            unsafe { (*conn).answers.lost = 1 };
        }
    }
    // SAFETY: as above.
    if !REQUESTS && unsafe { (*conn).requests.traced } != TRACED {
        return None;
    }
    Some(d)
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Whether a byte of `word` is `byte` (or, after one, a false alarm).
#[inline(always)]
fn holds(word: u64, byte: u8) -> bool {
    let v = word ^ (ONES * u64::from(byte));
    v.wrapping_sub(ONES) & !v & HIGHS != 0
}

/// Whether the header blocks [`follow`] found in the send (up to `SEARCH` bytes of them in
/// its first buffer) hold the literal name `traceparent`: [`h2_names_traceparent`] on them.
#[inline(always)]
fn block_names_traceparent(f: &Found) -> bool {
    if f.first >= f.readable {
        return false;
    }
    let end = if f.end < f.readable {
        f.end
    } else {
        f.readable
    };
    h2_names_traceparent(f.src + f.first, end - f.first) == 1
}

/// 1 when the `len` bytes at `src` (up to `SEARCH` of them) hold the literal name
/// `traceparent`, Huffman-coded or not; 0 otherwise. A global BPF function (scalar arguments
/// only): the verifier checks it once, on its own, not once per way into it (it was walked
/// about 90 times in the send hook when inlined). Two passes: the words that hold either
/// literal's length byte are noted (a few instructions per word), then the places of those
/// words are compared. Loop ends and matches go through the scratch (memory), so the verifier
/// learns nothing from them that would make a step a state of its own.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn h2_names_traceparent(src: u64, len: u64) -> i32 {
    let Some(scratch) = H2_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: the per-CPU scratch value, this CPU's only while the program runs.
    let block = unsafe { &mut (*scratch).block };
    let n = clamp_len(len, SEARCH as u64) as usize;
    let words = &mut block.words;
    // The three words from the one the block ends in zeroed (volatile stores: a memset call
    // would add a stack frame, and the send hook's own leaves room for one only): the 16 bytes
    // after the block read as 0, where a literal can neither start nor end (its bytes are not
    // 0), so no place is compared against the block's end.
    let last = n / 8;
    for i in 0..3 {
        if let Some(w) = words.get_mut(last + i) {
            // SAFETY: a word of the scratch value.
            unsafe { core::ptr::write_volatile(w, 0) };
        }
    }
    // SAFETY: the words' bytes, any of whose values is a valid u8.
    let bytes =
        unsafe { core::slice::from_raw_parts_mut(words.as_mut_ptr() as *mut u8, SEARCH + 24) };
    let Some(dst) = bytes.get_mut(..n) else {
        return 0;
    };
    // SAFETY: bpf_probe_read_user_buf validates the address.
    if unsafe { bpf_probe_read_user_buf(src as *const u8, dst) }.is_err() {
        return 0;
    }
    block.words_in = ((n + 7) / 8) as u64;
    block.found = 0;
    let mut w = 0usize;
    while w < SEARCH / 8 {
        // SAFETY: fields of the scratch value; volatile: read back from memory.
        if w as u64 >= unsafe { core::ptr::read_volatile(&block.words_in) } {
            break;
        }
        let word = block.words[w & (SEARCH / 8 - 1)];
        if holds(word, HUFFMAN_LEN) | holds(word, RAW_LEN) {
            // SAFETY: as above.
            let k = unsafe { core::ptr::read_volatile(&block.found) };
            if k < CANDIDATES as u64 {
                block.candidates[(k as usize) & (CANDIDATES - 1)] = w as u16;
                block.found = k + 1;
            }
        }
        w += 1;
    }
    block.hit = 0;
    let mut c = 0usize;
    while c < CANDIDATES {
        // SAFETY: as above.
        if c as u64 >= unsafe { core::ptr::read_volatile(&block.found) } {
            break;
        }
        let w = usize::from(block.candidates[c]) & (SEARCH / 8 - 1);
        let mut j = 0usize;
        while j < 8 {
            let at = w * 8 + j;
            // SAFETY: `at + 9` is within the block's 16-byte tail; unaligned loads.
            let (len, name) = unsafe {
                let p = (block.words.as_ptr() as *const u8).add(at);
                (*p, core::ptr::read_unaligned(p.add(1) as *const u64))
            };
            if (len == HUFFMAN_LEN && name == HUFFMAN_NAME) || (len == RAW_LEN && name == RAW_NAME)
            {
                block.hit = 1;
            }
            j += 1;
        }
        c += 1;
    }
    // SAFETY: as above.
    i32::from(unsafe { core::ptr::read_volatile(&block.hit) } != 0)
}

/// The literals' length bytes and the 8 bytes after them, as compared.
const HUFFMAN_LEN: u8 = TRACEPARENT_HUFFMAN[0];
const RAW_LEN: u8 = TRACEPARENT_RAW[0];
const HUFFMAN_NAME: u64 = u64::from_le_bytes(name(&TRACEPARENT_HUFFMAN));
const RAW_NAME: u64 = u64::from_le_bytes(name(&TRACEPARENT_RAW));

/// The 8 bytes after a literal's length byte.
const fn name(l: &[u8; 9]) -> [u8; 8] {
    [l[1], l[2], l[3], l[4], l[5], l[6], l[7], l[8]]
}

/// The event of the send or read [`follow`] walked (direction `d`): the window of its header
/// blocks, or an answer; a give-up says `h2::LOST` (frames not followed) or `h2::UNTRACED`
/// (uninstrumented) without data.
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
        if d.traced == UNTRACED {
            flags |= h2::UNTRACED;
        } else if d.lost != 0 || want > n || f.end > f.total {
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
