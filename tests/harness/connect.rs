//! Connects that fail, made on purpose: a socket bound to its destination's address, its
//! `TCP_INFO`, and a non-blocking connect left to the kernel until it ends.

use std::{
    net::SocketAddr,
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use socket2::{Domain, Socket, Type};

/// A socket bound to `to`'s loopback, its local port.
pub fn socket(to: SocketAddr) -> (Socket, u16) {
    let s = Socket::new(Domain::for_address(to), Type::STREAM, None).expect("socket");
    s.bind(&SocketAddr::new(to.ip(), 0).into()).expect("bind");
    let port = s.local_addr().unwrap().as_socket().unwrap().port();
    (s, port)
}

pub fn tcp_info(s: &Socket) -> libc::tcp_info {
    // SAFETY: a zeroed tcp_info is valid; getsockopt is given its size.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: a valid socket and buffer.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    info
}

/// A non-blocking connect left to the kernel until it closes the socket with `errno`: through
/// the DROP rule with `TCP_SYNCNT` 1 (the kernel sends the SYN again, how often depends on the
/// kernel: 6.5+ adds linear-timeout retries, then gives up with `ETIMEDOUT`), or through the
/// REJECT rule (on loopback the first ICMP error can arrive while `connect` still holds the
/// socket: the kernel keeps it as a soft error and the next SYN's ends the connect). The client
/// port and the SYNs sent, as the socket's own `TCP_INFO` counts them when it closed (a
/// blocking connect's failure would reset them).
pub fn kernel_ends(to: SocketAddr, syncnt: Option<libc::c_int>, errno: i32) -> (u16, u32) {
    let (s, port) = socket(to);
    if let Some(n) = syncnt {
        // SAFETY: a valid socket and option value.
        let rc = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_SYNCNT,
                (&raw const n).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "TCP_SYNCNT: {}", std::io::Error::last_os_error());
    }
    s.set_nonblocking(true).unwrap();
    let err = s.connect(&to.into()).expect_err("in progress");
    assert_eq!(err.raw_os_error(), Some(libc::EINPROGRESS), "{err}");
    let deadline = Instant::now() + Duration::from_secs(120);
    // TCP_CLOSE
    while tcp_info(&s).tcpi_state != 7 {
        assert!(
            Instant::now() < deadline,
            "the kernel did not end the connect"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let err = s.take_error().unwrap().expect("the connect's error");
    assert_eq!(err.raw_os_error(), Some(errno), "{err}");
    (port, tcp_info(&s).tcpi_total_retrans + 1)
}
