//! The HTTP/1.x request heads the send and receive hooks read (`tcp_sendmsg_locked.rs`,
//! `sock_recv_length.rs`): the sockets known to carry requests, the scratch head, the scan for
//! a `traceparent` header line and the event. Not a hook.

use aya_ebpf::{
    helpers::bpf_probe_read_kernel_buf,
    macros::map,
    maps::{LruHashMap, PerCpuArray},
};
use probe_common::{HDR_NETNS, HTTP_HEAD, HttpRequestEvent, ITER_WINDOW, SendLayout, family, kind};

use crate::common::{
    EVENTS, TaskContext, clamp_len, count_loss, fill_task, new_header, offsets, read_kernel,
    wakeup_flags,
};

/// Where the send and receive hooks read data and a socket's addresses.
#[unsafe(no_mangle)]
pub static SEND_LAYOUT: SendLayout = SendLayout::ABSENT;

/// Sockets whose first send was a request or a PROXY line (the client's end): `PLAIN`, or
/// `TRACED` while the last request sent on it carried a `traceparent` header.
#[map]
pub static HTTP_SOCKETS: LruHashMap<u64, u8> = LruHashMap::with_max_entries(16384, 0);
pub const PLAIN: u8 = 1;
pub const TRACED: u8 = 2;
/// Sockets whose first read was a request (the server's end): `ANSWERED` once the task sent
/// on it after reading a traced request, `SERVING` from that request until then.
pub const ANSWERED: u8 = 3;
pub const SERVING: u8 = 4;
/// Sockets whose first send was a TLS handshake record: their requests come from the TLS
/// uprobes (`ssl_write.rs`); `TLS_TRACED` while the last one carried a `traceparent`.
pub const TLS_PLAIN: u8 = 5;
pub const TLS_TRACED: u8 = 6;
/// A TLS connection whose server read a traced request through TLS (`ssl_read.rs`) and has
/// not answered it yet (its thread's first send on it answers, back to `TLS_PLAIN`).
pub const TLS_SERVING: u8 = 7;
/// HTTP/2 in clear text (`http2.rs`): a connection whose first send was the client's preface
/// (`H2_CLIENT`), or whose first read was (`H2_SERVER`).
pub const H2_CLIENT: u8 = 8;
pub const H2_SERVER: u8 = 9;

/// A TLS record of type handshake (22) and major version 3, as the first two bytes of a send,
/// little-endian: how a TLS client's first send (its ClientHello) and a TLS server's start.
pub const TLS_HANDSHAKE: u16 = u16::from_le_bytes([0x16, 0x03]);

/// The head being scanned: its length, the send's `iov_iter` window, then the bytes (a 16-byte
/// tail keeps the 12-byte compare at the last index in bounds). The length is kept here, not
/// in a register, so that the verifier leaves the scan with one state, not one per byte where
/// it stopped. The window is here, not on the stack, since its words are picked at load-time
/// offsets (a variable stack offset is refused by older verifiers; a map value's is not).
#[repr(C)]
pub struct Head {
    pub len: u64,
    pub iter: [u64; ITER_WINDOW / 8],
    pub data: [u8; HTTP_HEAD + 16],
}

impl Head {
    /// The head's length, read back from memory and bounded for the verifier.
    #[inline(always)]
    pub fn len(&self) -> usize {
        // SAFETY: a field of the scratch value; volatile: not a register copy from before.
        clamp_len(
            unsafe { core::ptr::read_volatile(&self.len) },
            HTTP_HEAD as u64,
        ) as usize
    }
}

/// The send hook's scratch head.
#[map]
pub static HEAD: PerCpuArray<Head> = PerCpuArray::with_max_entries(1, 0);

/// The receive hooks' scratch head (their own: a send and a receive never share one).
#[map]
pub static RECV_HEAD: PerCpuArray<Head> = PerCpuArray::with_max_entries(1, 0);

/// "\ntraceparent:" after the newline, as little-endian words; letters compared with their
/// 0x20 bit set (case-insensitive).
const TP_LO: u64 = u64::from_le_bytes(*b"tracepar");
const TP_HI: u32 = u32::from_le_bytes(*b"ent:");
const LOWER_8: u64 = 0x2020_2020_2020_2020;
const LOWER_4: u32 = 0x2020_2020;

/// A PROXY protocol v1 line ("PROXY TCP4 ..."), which a proxy sends before the request.
pub const PROXY: u32 = u32::from_le_bytes(*b"PROX");

/// Request methods, as the first 4 bytes of a request line, little-endian.
pub const METHODS: [u32; 7] = [
    u32::from_le_bytes(*b"GET "),
    u32::from_le_bytes(*b"POST"),
    u32::from_le_bytes(*b"PUT "),
    u32::from_le_bytes(*b"HEAD"),
    u32::from_le_bytes(*b"DELE"),
    u32::from_le_bytes(*b"PATC"),
    u32::from_le_bytes(*b"OPTI"),
];

/// Whether a header line of the head is named `traceparent` (any case). A loose test (a match
/// in a body counts too): the agent parses the head exactly. Eight bytes at a time: a word
/// without a newline costs a few instructions; the bytes of one with a newline are looked at.
#[inline(always)]
pub fn has_traceparent(head: &Head) -> bool {
    let n = head.len();
    let data = &head.data;
    let words = data.as_ptr() as *const u64;
    let mut w = 0usize;
    while w < HTTP_HEAD / 8 {
        let start = w * 8;
        if start + 13 > n {
            return false;
        }
        // SAFETY: within `data`, which follows a u64 in `Head`: 8-byte aligned.
        let v = unsafe { *words.add(w & (HTTP_HEAD / 8 - 1)) } ^ NEWLINES;
        // Non-zero when a byte of the word is a newline (or, after one, a false alarm).
        if v.wrapping_sub(ONES) & !v & HIGHS != 0 {
            let mut j = 0usize;
            while j < 8 {
                let at = (start + j) & (HTTP_HEAD - 1);
                if at + 13 <= n && data[at] == b'\n' && names_traceparent(data, at + 1) {
                    return true;
                }
                j += 1;
            }
        }
        w += 1;
    }
    false
}

const NEWLINES: u64 = 0x0a0a_0a0a_0a0a_0a0a;
const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Whether the 12 bytes at `at` read "traceparent:", any case.
#[inline(always)]
fn names_traceparent(data: &[u8; HTTP_HEAD + 16], at: usize) -> bool {
    if at > HTTP_HEAD {
        return false;
    }
    // SAFETY: `at + 12` is within the buffer's 16-byte tail; unaligned loads.
    let (lo, hi) = unsafe {
        let p = data.as_ptr().add(at);
        (
            core::ptr::read_unaligned(p as *const u64),
            core::ptr::read_unaligned(p.add(8) as *const u32),
        )
    };
    lo | LOWER_8 == TP_LO && hi | LOWER_4 == TP_HI
}

/// The user buffer of a send or receive, the bytes readable there and the whole call's
/// (single-buffer and iovec ones: the first iovec's; `iter_iovec` is the type byte of an iovec
/// one in that direction). The `iov_iter`
/// is read in one window into `window` (the loader checked its fields lie in it, the 8-byte
/// ones aligned).
#[inline(always)]
pub fn user_data(
    msg: u64,
    l: &SendLayout,
    iter_iovec: u32,
    window: &mut [u64; ITER_WINDOW / 8],
) -> Option<(u64, u64, u64)> {
    let iter = msg + u64::from(l.msg_iter);
    // SAFETY: the window's ITER_WINDOW bytes, any of whose values is a valid u64.
    let bytes =
        unsafe { core::slice::from_raw_parts_mut(window.as_mut_ptr() as *mut u8, ITER_WINDOW) };
    // SAFETY: bpf_probe_read_kernel_buf validates the address.
    unsafe { bpf_probe_read_kernel_buf(iter as *const u8, bytes) }.ok()?;
    let word = |off: u32| window.get(off as usize / 8).copied();
    // The type's byte of its word (little-endian).
    let iter_type = u32::from((word(l.iter_type)? >> (8 * (l.iter_type % 8))) as u8);
    let offset = word(l.iov_offset)?;
    let count = word(l.count)?;
    let ptr = word(l.iter_ptr)?;
    if iter_type == l.iter_ubuf {
        Some((ptr + offset, count, count))
    } else if iter_type == iter_iovec {
        // The first iovec: { iov_base, iov_len } (uapi layout), in one read.
        let [base, len]: [u64; 2] = read_kernel(ptr, 0)?;
        let len = if len > offset { len - offset } else { 0 };
        Some((base + offset, if len < count { len } else { count }, count))
    } else {
        None
    }
}

/// An `http_request` event of `sk`: the head in `head` (`None`: no data, an answer).
#[inline(always)]
pub fn emit(sk: u64, head: Option<&Head>, l: &SendLayout, side: u16) {
    emit_with(sk, l, side, 0, |data| {
        let Some(head) = head else {
            return 0;
        };
        let n = head.len();
        let Some(dst) = data.get_mut(..n) else {
            return 0;
        };
        // SAFETY: bpf_probe_read_kernel_buf validates the address.
        match unsafe { bpf_probe_read_kernel_buf(head.data.as_ptr(), dst) } {
            Ok(()) => n as u32,
            Err(_) => 0,
        }
    });
}

/// An `http_request` event of `sk` whose `data` `fill` writes (returning its length).
#[inline(always)]
pub fn emit_with(
    sk: u64,
    l: &SendLayout,
    side: u16,
    flags: u32,
    fill: impl FnOnce(&mut [u8; HTTP_HEAD]) -> u32,
) {
    let Some(mut entry) = EVENTS.reserve::<HttpRequestEvent>(0) else {
        count_loss(kind::HTTP_REQUEST);
        return;
    };
    let ev = entry.as_mut_ptr();
    let off = offsets();
    let mut header = new_header(kind::HTTP_REQUEST);
    if let TaskContext::Agent = fill_task(&mut header, &off) {
        entry.discard(0);
        return;
    }
    let net: u64 = read_kernel(sk, off.sk_net).unwrap_or(0);
    if let Some(inum) = read_kernel::<u32>(net, off.net_inum) {
        header.netns = inum;
        header.flags |= HDR_NETNS;
    }
    let fam: u16 = read_kernel(sk, l.skc_family).unwrap_or(0);
    let mut saddr = [0u8; 16];
    let mut daddr = [0u8; 16];
    if fam == family::INET {
        let s: [u8; 4] = read_kernel(sk, l.skc_rcv_saddr).unwrap_or([0; 4]);
        let d: [u8; 4] = read_kernel(sk, l.skc_daddr).unwrap_or([0; 4]);
        saddr[..4].copy_from_slice(&s);
        daddr[..4].copy_from_slice(&d);
    } else {
        saddr = read_kernel(sk, l.skc_v6_rcv_saddr).unwrap_or([0; 16]);
        daddr = read_kernel(sk, l.skc_v6_daddr).unwrap_or([0; 16]);
    }
    // SAFETY: `ev` points at a reserved event; every field is written before submit.
    unsafe {
        let len = fill(&mut (*ev).data);
        (*ev).header = header;
        (*ev).saddr = saddr;
        (*ev).daddr = daddr;
        (*ev).sport = read_kernel::<u16>(sk, l.skc_num).unwrap_or(0);
        (*ev).dport = u16::from_be(read_kernel::<u16>(sk, l.skc_dport).unwrap_or(0));
        (*ev).family = fam;
        (*ev).side = side;
        (*ev).len = len;
        (*ev).flags = flags;
    }
    entry.submit(wakeup_flags());
}
