//! HTTP/1.x request heads seen on the TCP send and receive paths, for the W3C `traceparent`
//! they carry, and the end of a traced request a server answered; the header-block frames of
//! HTTP/2 connections in clear text (h2c), which the agent decodes with each connection's
//! HPACK table.

use core::mem::size_of;

use crate::EventHeader;

/// Bytes of a request head copied at most (the traceparent header is searched in them).
pub const HTTP_HEAD: usize = 1024;

/// The start of a plaintext HTTP/1.x request a task sent ([`side::SENT`]) or received
/// ([`side::RECEIVED`]) on a TCP socket, or the first send after a traced request it received
/// ([`side::ANSWERED`], no data). Addresses are the socket's: `saddr:sport` is the local end.
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
    /// [`side`].
    pub side: u16,
    /// Valid bytes in `data`.
    pub len: u32,
    /// [`h2`] flags (HTTP/2 sides only; 0 otherwise).
    pub flags: u32,
    pub data: [u8; HTTP_HEAD],
}
const _: () = assert!(size_of::<HttpRequestEvent>() == 56 + 48 + HTTP_HEAD);

/// Which end of a request an [`HttpRequestEvent`] is.
pub mod side {
    /// A request the task sent (the client's end).
    pub const SENT: u16 = 0;
    /// A request the task received (the server's end).
    pub const RECEIVED: u16 = 1;
    /// The server's first send after a traced request it received on the socket: the request
    /// was answered. On an HTTP/2 connection: a send with a HEADERS frame (a response's start).
    pub const ANSWERED: u16 = 2;
    /// The header-block frames (HEADERS, CONTINUATION) an HTTP/2 client sent in one send:
    /// `data` is a window of the send from the first of them (a frame boundary), holding every
    /// one of them whole, unless [`super::h2::LOST`].
    pub const H2_SENT: u16 = 3;
    /// The header-block frames an HTTP/2 server received in one read (as [`H2_SENT`]).
    pub const H2_RECEIVED: u16 = 4;
}

/// How an HTTP/2 event stands in its connection's frames (`HttpRequestEvent::flags`).
pub mod h2 {
    /// Header blocks of the connection were not copied whole (a header-block frame past the
    /// send, its first buffer or an event's room, more frames in a send than are followed): its
    /// HPACK table is no longer known, and the kernel follows its frames no more (`data` empty).
    pub const LOST: u32 = 1;
    /// The connection's first window: the first that names `traceparent` (the agent starts
    /// its table here, the entries before unknown to it; one that sees a later window of a
    /// connection it has no table for cannot).
    pub const FIRST: u32 = 2;
    /// The connection's request header blocks named no `traceparent` in the first
    /// `UNTRACED_BLOCKS`: taken as uninstrumented, no longer followed (`data` empty).
    pub const UNTRACED: u32 = 4;
    /// Request header blocks of a connection looked through for `traceparent` before it is
    /// taken as uninstrumented (an instrumented client names it in every request).
    pub const UNTRACED_BLOCKS: u64 = 16;

    /// The header name `traceparent` as an HPACK string literal (RFC 7541 5.2), Huffman-coded:
    /// its length byte (H set, 8) and the 8 bytes. Until a connection's request direction
    /// carries one of the two literals, the kernel sends none of its header blocks: the name
    /// is not in the static table, so a connection's first `traceparent` names it literally.
    pub const TRACEPARENT_HUFFMAN: [u8; 9] = [0x88, 0x4d, 0x83, 0x21, 0x6b, 0x1d, 0x85, 0xa9, 0x3f];
    /// The same literal uncoded: its length byte (11) and the first 8 of its 11 bytes.
    pub const TRACEPARENT_RAW: [u8; 9] = *b"\x0btracepar";
}

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

/// Where the receive hooks find what a task read from a TCP socket, from BTF (and the
/// architecture's syscall numbers); `ABSENT` where the kernel lacks it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecvLayout {
    /// In the `struct pt_regs` of the task's syscall: the syscall number and its second
    /// argument (the buffer, the `iovec` array or the `msghdr`). Used after the receive, where
    /// the kernel's `msghdr` is gone (`sock_recv_length`).
    pub regs_nr: u32,
    pub regs_arg1: u32,
    /// The syscalls whose second argument is a buffer (`read`, `recvfrom`), an `iovec` array
    /// (`readv`) or a `msghdr` (`recvmsg`).
    pub nr_read: u32,
    pub nr_recvfrom: u32,
    pub nr_readv: u32,
    pub nr_recvmsg: u32,
    /// `struct sock::sk_protocol` (u16).
    pub sk_protocol: u32,
    /// In `struct tcp_sock`: `bytes_received` (u64), `rcv_nxt` and `copied_seq` (u32): the bytes
    /// the task had read before, so only a connection's first read is looked at unless it was
    /// a request.
    pub bytes_received: u32,
    pub rcv_nxt: u32,
    pub copied_seq: u32,
    /// The `iov_iter` type byte of a user iovec read on this kernel (with the READ direction
    /// before 5.14).
    pub iter_iovec: u32,
    /// `struct socket::sk`: the function hooks (`inet_recvmsg`, `inet6_recvmsg`) get the socket.
    pub socket_sk: u32,
}
const _: () = assert!(size_of::<RecvLayout>() == 48);

impl RecvLayout {
    pub const ABSENT: Self = Self {
        regs_nr: crate::ABSENT,
        regs_arg1: crate::ABSENT,
        nr_read: crate::ABSENT,
        nr_recvfrom: crate::ABSENT,
        nr_readv: crate::ABSENT,
        nr_recvmsg: crate::ABSENT,
        sk_protocol: crate::ABSENT,
        bytes_received: crate::ABSENT,
        rcv_nxt: crate::ABSENT,
        copied_seq: crate::ABSENT,
        iter_iovec: crate::ABSENT,
        socket_sk: crate::ABSENT,
    };
}
