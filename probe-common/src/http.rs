//! HTTP/1.x request heads seen on the TCP send path, for the W3C `traceparent` they carry.

use core::mem::size_of;

use crate::EventHeader;

/// Bytes of a request head copied at most (the traceparent header is searched in them).
pub const HTTP_HEAD: usize = 1024;

/// The start of a plaintext HTTP/1.x request a task sent on a TCP socket. Addresses are the
/// socket's: `saddr:sport` is the local (client) end.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpRequestEvent {
    pub header: EventHeader,
    /// IPv4 addresses use the first 4 bytes.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Host byte order.
    pub sport: u16,
    pub dport: u16,
    /// [`crate::family`].
    pub family: u16,
    pub _pad: u16,
    /// Valid bytes in `data`.
    pub len: u32,
    pub _reserved: u32,
    pub data: [u8; HTTP_HEAD],
}
const _: () = assert!(size_of::<HttpRequestEvent>() == 56 + 48 + HTTP_HEAD);

/// Bytes of `struct iov_iter` the send hook reads in one go (its type, offset, count and buffer
/// pointer are in the first 32 bytes on every kernel since 4.x); the loader leaves the layout
/// absent where a field lies beyond, or an 8-byte field is not 8-byte aligned in it.
pub const ITER_WINDOW: usize = 48;

/// Offsets for reading the data of a `tcp_sendmsg_locked` call and its socket's addresses,
/// from BTF; `ABSENT` where the kernel lacks them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendLayout {
    /// `struct msghdr::msg_iter`.
    pub msg_iter: u32,
    /// In `struct iov_iter`: `iter_type` (u8), `iov_offset`, `ubuf`/`__iov` (one union), `count`.
    pub iter_type: u32,
    pub iov_offset: u32,
    pub iter_ptr: u32,
    pub count: u32,
    /// `ITER_UBUF` and `ITER_IOVEC` on this kernel.
    pub iter_ubuf: u32,
    pub iter_iovec: u32,
    /// In `struct sock_common`.
    pub skc_family: u32,
    pub skc_rcv_saddr: u32,
    pub skc_daddr: u32,
    pub skc_num: u32,
    pub skc_dport: u32,
    pub skc_v6_rcv_saddr: u32,
    pub skc_v6_daddr: u32,
    /// `struct tcp_sock::bytes_sent` (u64): 0 until the socket's first send went out, so only
    /// a connection's first send is read unless that send was an HTTP request.
    pub bytes_sent: u32,
    pub _reserved: u32,
}
const _: () = assert!(size_of::<SendLayout>() == 64);

impl SendLayout {
    pub const ABSENT: Self = Self {
        msg_iter: crate::ABSENT,
        iter_type: crate::ABSENT,
        iov_offset: crate::ABSENT,
        iter_ptr: crate::ABSENT,
        count: crate::ABSENT,
        iter_ubuf: crate::ABSENT,
        iter_iovec: crate::ABSENT,
        skc_family: crate::ABSENT,
        skc_rcv_saddr: crate::ABSENT,
        skc_daddr: crate::ABSENT,
        skc_num: crate::ABSENT,
        skc_dport: crate::ABSENT,
        skc_v6_rcv_saddr: crate::ABSENT,
        skc_v6_daddr: crate::ABSENT,
        bytes_sent: crate::ABSENT,
        _reserved: 0,
    };
}
