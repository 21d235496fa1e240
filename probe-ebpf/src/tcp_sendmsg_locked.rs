//! `tcp_sendmsg_locked` (raw tracepoint): data a task sends on a TCP socket. Only the start of
//! a plaintext HTTP/1.x request is of interest (its W3C `traceparent` header ties kernel events
//! on that connection to the request's trace). A connection's first send is read (4 bytes of
//! the user buffer); later sends only where that first one was a request (`HTTP_SOCKETS`):
//! on every other socket a send costs one map lookup and one read of `bytes_sent`. On a
//! request's connection a send costs the lookup and two reads (the message's `iov_iter` in one
//! window, the head itself: up to `HTTP_HEAD` bytes). The head is scanned here for a
//! `traceparent` header line; it goes to the agent, which parses it, only when it has one or
//! when the connection's previous request had one (the agent must then forget that trace).
//! Requests without trace context on connections without it cost the scan and nothing in the
//! agent.

use aya_ebpf::{
    helpers::{bpf_probe_read_kernel_buf, bpf_probe_read_user, bpf_probe_read_user_buf},
    macros::{fentry, kprobe, map, raw_tracepoint},
    maps::{LruHashMap, PerCpuArray},
    programs::{FEntryContext, ProbeContext, RawTracePointContext},
};
use probe_common::{
    ABSENT, HDR_NETNS, HTTP_HEAD, HttpRequestEvent, ITER_WINDOW, SendLayout, family, kind,
};

use crate::common::{
    EVENTS, TaskContext, clamp_len, count_loss, fill_task, new_header, offsets, read_kernel,
    wakeup_flags,
};

#[unsafe(no_mangle)]
static SEND_LAYOUT: SendLayout = SendLayout::ABSENT;

/// Sockets whose first send was a request or a PROXY line: `PLAIN`, or `TRACED` while the
/// last request sent on it carried a `traceparent` header.
#[map]
static HTTP_SOCKETS: LruHashMap<u64, u8> = LruHashMap::with_max_entries(16384, 0);
const PLAIN: u8 = 1;
const TRACED: u8 = 2;

/// The head being scanned: its length, the send's `iov_iter` window, then the bytes (a 16-byte
/// tail keeps the 12-byte compare at the last index in bounds). The length is kept here, not
/// in a register, so that the verifier leaves the scan with one state, not one per byte where
/// it stopped. The window is here, not on the stack, since its words are picked at load-time
/// offsets (a variable stack offset is refused by older verifiers; a map value's is not).
#[repr(C)]
struct Head {
    len: u64,
    iter: [u64; ITER_WINDOW / 8],
    data: [u8; HTTP_HEAD + 16],
}

impl Head {
    /// The head's length, read back from memory and bounded for the verifier.
    #[inline(always)]
    fn len(&self) -> usize {
        // SAFETY: a field of the scratch value; volatile: not a register copy from before.
        clamp_len(
            unsafe { core::ptr::read_volatile(&self.len) },
            HTTP_HEAD as u64,
        ) as usize
    }
}

#[map]
static HEAD: PerCpuArray<Head> = PerCpuArray::with_max_entries(1, 0);

/// "\ntraceparent:" after the newline, as little-endian words; letters compared with their
/// 0x20 bit set (case-insensitive).
const TP_LO: u64 = u64::from_le_bytes(*b"tracepar");
const TP_HI: u32 = u32::from_le_bytes(*b"ent:");
const LOWER_8: u64 = 0x2020_2020_2020_2020;
const LOWER_4: u32 = 0x2020_2020;

/// A PROXY protocol v1 line ("PROXY TCP4 ..."), which a proxy sends before the request.
const PROXY: u32 = u32::from_le_bytes(*b"PROX");

/// Request methods, as the first 4 bytes of a request line, little-endian.
const METHODS: [u32; 7] = [
    u32::from_le_bytes(*b"GET "),
    u32::from_le_bytes(*b"POST"),
    u32::from_le_bytes(*b"PUT "),
    u32::from_le_bytes(*b"HEAD"),
    u32::from_le_bytes(*b"DELE"),
    u32::from_le_bytes(*b"PATC"),
    u32::from_le_bytes(*b"OPTI"),
];

#[raw_tracepoint(tracepoint = "tcp_sendmsg_locked")]
pub fn tcp_sendmsg_locked(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(const struct sock *sk, const struct msghdr *msg, const struct sk_buff *skb,
    //          int size_goal)
    on_send(ctx.arg(0), ctx.arg(1));
    0
}

/// The function itself, where the kernel has no such tracepoint (before 6.13):
/// `int tcp_sendmsg_locked(struct sock *sk, struct msghdr *msg, size_t size)`.
#[fentry(function = "tcp_sendmsg_locked")]
pub fn tcp_sendmsg_locked_fentry(ctx: FEntryContext) -> u32 {
    on_send(ctx.arg(0), ctx.arg(1));
    0
}

#[kprobe(function = "tcp_sendmsg_locked")]
pub fn tcp_sendmsg_locked_kprobe(ctx: ProbeContext) -> u32 {
    if let (Some(sk), Some(msg)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) {
        on_send(sk, msg);
    }
    0
}

#[inline(always)]
fn on_send(sk: u64, msg: u64) {
    // SAFETY: a plain read of a global; volatile so the loader's value is not constant-folded.
    let l = unsafe { core::ptr::read_volatile(&SEND_LAYOUT) };
    if l.msg_iter == ABSENT {
        return;
    }
    // A request's connection: read on (`bytes_sent` is not needed). Any other: read on only
    // on its first send. The socket's map value stays null there (a plain pointer, set on
    // every path: 5.10's verifier rejects a read of a stack slot one path left unwritten).
    let mut state: *mut u8 = core::ptr::null_mut();
    let mut first_send = false;
    match HTTP_SOCKETS.get_ptr_mut(&sk) {
        Some(p) => state = p,
        None => {
            if read_kernel::<u64>(sk, l.bytes_sent).is_some_and(|sent| sent != 0) {
                return;
            }
            first_send = true;
        }
    }
    let Some(head) = HEAD.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the per-CPU scratch buffer is this program's alone while it runs.
    let head = unsafe { &mut *head };
    let Some((src, count)) = user_data(msg, &l, &mut head.iter) else {
        return;
    };
    if count < 16 {
        return;
    }
    if first_send {
        // Most first sends are no request: 4 bytes tell.
        // SAFETY: bpf_probe_read_user validates the address.
        let Ok(first) = (unsafe { bpf_probe_read_user(src as *const u32) }) else {
            return;
        };
        if !METHODS.contains(&first) {
            if first == PROXY {
                // A full map only forgets its oldest socket: its later requests go unread.
                let _ = HTTP_SOCKETS.insert(&sk, &PLAIN, 0);
            }
            return;
        }
    }
    let n = clamp_len(count, HTTP_HEAD as u64) as usize;
    let Some(dst) = head.data.get_mut(..n) else {
        return;
    };
    // SAFETY: bpf_probe_read_user_buf validates the address.
    if unsafe { bpf_probe_read_user_buf(src as *const u8, dst) }.is_err() {
        return;
    }
    // A send on a request's connection: read at once (one call less per request), the
    // method checked in the copy. (A socket reusing a forgotten one's address gets here on
    // its first send too: a request is then read as on any first send, anything else left.)
    // SAFETY: within `data`, 8-byte aligned in `Head`.
    if !first_send && !METHODS.contains(&unsafe { *(head.data.as_ptr() as *const u32) }) {
        return;
    }
    // SAFETY: a field of the scratch value; volatile: read back from memory after the scan.
    unsafe { core::ptr::write_volatile(&mut head.len, n as u64) };
    let traced = has_traceparent(head);
    let now = if traced { TRACED } else { PLAIN };
    let mut before = PLAIN;
    if state.is_null() {
        let _ = HTTP_SOCKETS.insert(&sk, &now, 0);
    } else {
        // SAFETY: the socket's value in this program's map (an LRU may reuse it for another
        // socket at worst: one event too many or too few, never a fault).
        before = unsafe { *state };
        if before != now {
            // SAFETY: as above.
            unsafe { *state = now };
        }
    }
    // A request with trace context, or the one that ends the context of the one before.
    if traced || before == TRACED {
        emit(sk, head, &l);
    }
}

/// Whether a header line of the head is named `traceparent` (any case). A loose test (a match
/// in a body counts too): the agent parses the head exactly. Eight bytes at a time: a word
/// without a newline costs a few instructions; the bytes of one with a newline are looked at.
#[inline(always)]
fn has_traceparent(head: &Head) -> bool {
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

/// The user buffer and byte count of the send (single-buffer and iovec sends). The `iov_iter`
/// is read in one window into `window` (the loader checked its fields lie in it, the 8-byte
/// ones aligned).
#[inline(always)]
fn user_data(msg: u64, l: &SendLayout, window: &mut [u64; ITER_WINDOW / 8]) -> Option<(u64, u64)> {
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
        Some((ptr + offset, count))
    } else if iter_type == l.iter_iovec {
        // The first iovec: { iov_base, iov_len } (uapi layout), in one read.
        let [base, len]: [u64; 2] = read_kernel(ptr, 0)?;
        let len = if len > offset { len - offset } else { 0 };
        Some((base + offset, if len < count { len } else { count }))
    } else {
        None
    }
}

#[inline(always)]
fn emit(sk: u64, head: &Head, l: &SendLayout) {
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
    let n = head.len();
    // SAFETY: `ev` points at a reserved event; every field is written before submit.
    unsafe {
        let mut len = n as u32;
        if let Some(dst) = (*ev).data.get_mut(..n)
            && bpf_probe_read_kernel_buf(head.data.as_ptr(), dst).is_err()
        {
            len = 0;
        }
        (*ev).header = header;
        (*ev).saddr = saddr;
        (*ev).daddr = daddr;
        (*ev).sport = read_kernel::<u16>(sk, l.skc_num).unwrap_or(0);
        (*ev).dport = u16::from_be(read_kernel::<u16>(sk, l.skc_dport).unwrap_or(0));
        (*ev).family = fam;
        (*ev)._pad = 0;
        (*ev).len = len;
        (*ev)._reserved = 0;
    }
    entry.submit(wakeup_flags());
}
