//! Loopback traffic and the reset records it makes; identity of this test process.

use std::{io::Write as _, time::Duration};

use crate::Value;

/// Records of `kind:"tcp_reset"` whose local or remote port is `port`.
pub fn resets_on_port(records: &[Value], port: u16) -> Vec<Value> {
    records
        .iter()
        .filter(|r| r["kind"] == "tcp_reset" && (r["sport"] == port || r["dport"] == port))
        .cloned()
        .collect()
}

/// Records a refused connect to `port` makes: its two resets and its `connect_failure`.
pub fn refused_records_on_port(records: &[Value], port: u16) -> Vec<Value> {
    records
        .iter()
        .filter(|r| {
            (r["kind"] == "tcp_reset" || r["kind"] == "connect_failure")
                && (r["sport"] == port || r["dport"] == port)
        })
        .cloned()
        .collect()
}

/// Records one refused connect makes: the reset sent, the reset received and, where the
/// kernel tells connect failures (`sock:inet_sock_set_state`, every kernel of the matrix), the
/// connect failure.
pub const RECORDS_PER_REFUSED_CONNECT: u64 = 3;

/// Resets on `port` in `direction` ("sent" or "received").
pub fn resets(records: &[Value], port: u16, direction: &str) -> Vec<Value> {
    resets_on_port(records, port)
        .into_iter()
        .filter(|r| r["direction"] == direction)
        .collect()
}

/// An established loopback connection whose client end closes with SO_LINGER {1, 0}.
pub struct LingerPair {
    pub client: std::net::TcpStream,
    pub accepted: std::net::TcpStream,
    pub client_port: u16,
    pub server_port: u16,
}

impl LingerPair {
    pub fn connect() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let server_port = listener.local_addr().expect("addr").port();
        let client = std::net::TcpStream::connect(("127.0.0.1", server_port)).expect("connect");
        let (accepted, _) = listener.accept().expect("accept");
        let client_port = client.local_addr().expect("addr").port();
        socket2::SockRef::from(&client)
            .set_linger(Some(Duration::ZERO))
            .expect("SO_LINGER");
        Self {
            client,
            accepted,
            client_port,
            server_port,
        }
    }

    /// Closes the client end (the reset goes out) and returns the still-open server end.
    pub fn reset(self) -> std::net::TcpStream {
        drop(self.client);
        self.accepted
    }
}

/// The network namespace inode of this process.
pub fn own_netns() -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self/ns/net").expect("netns").ino()
}

/// Where cgroup v2 is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts).
/// cgroup directories a test made, removed (deepest first) on drop.
pub struct Cgroups(Vec<std::path::PathBuf>);

impl Drop for Cgroups {
    fn drop(&mut self) {
        for dir in self.0.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Makes the cgroup `rel` under the cgroup2 root (and its missing parents); what it made is
/// removed when the guard drops.
pub fn make_cgroup(rel: &str) -> (Cgroups, std::path::PathBuf) {
    let mut made = Vec::new();
    let mut path = cgroup2_root();
    for part in rel.split('/') {
        path.push(part);
        if !path.exists() {
            std::fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
            made.push(path.clone());
        }
    }
    (Cgroups(made), path)
}

pub fn cgroup2_root() -> std::path::PathBuf {
    let text = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    text.lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2")
                .then(|| left.split_whitespace().nth(4).map(std::path::PathBuf::from))?
        })
        .expect("no cgroup2 mount")
}

/// The cgroup v2 id (inode of the cgroup directory) of this process.
pub fn own_cgroup_id() -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let text = std::fs::read_to_string("/proc/self/cgroup").expect("/proc/self/cgroup");
    let path = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup v2 line");
    std::fs::metadata(cgroup2_root().join(path.trim_start_matches('/')))
        .expect("cgroup directory")
        .ino()
}

/// The calling thread's id and kernel task name.
pub fn current_thread() -> (u32, String) {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() } as u32;
    let comm = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).expect("comm");
    (tid, comm.trim_end().to_owned())
}

/// SO_COOKIE of a socket (generating it if the kernel had not yet).
pub fn socket_cookie(fd: std::os::fd::RawFd) -> u64 {
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid out-pointers of the right size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    assert_eq!(
        rc,
        0,
        "getsockopt(SO_COOKIE): {}",
        std::io::Error::last_os_error()
    );
    cookie
}

/// A port on `ip` with nothing listening, below the ephemeral range so that no client socket
/// can be given the same port (which would make a TCP self-connect instead of a refusal).
pub fn closed_port(ip: std::net::IpAddr) -> u16 {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .expect("ip_local_port_range");
    let low: u16 = range
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("ephemeral range");
    // Spread tests over the range below it; a port that binds is free at this moment.
    let seed = std::process::id() as u16 ^ current_thread().0 as u16;
    let span = low.saturating_sub(10_000).max(1);
    (0..span)
        .map(|i| 10_000 + (seed.wrapping_add(i.wrapping_mul(7919)) % span))
        .find(|&p| std::net::TcpListener::bind((ip, p)).is_ok())
        .expect("a free port below the ephemeral range")
}

/// Connects from a bound client socket to `ip:port` where nothing listens; returns the client
/// port. The connect must be refused.
pub fn refused_connect(ip: std::net::IpAddr, port: u16) -> u16 {
    use socket2::{Domain, Socket, Type};
    let domain = if ip.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::STREAM, None).expect("socket");
    s.bind(&std::net::SocketAddr::new(ip, 0).into())
        .expect("bind");
    let client_port = s
        .local_addr()
        .expect("addr")
        .as_socket()
        .expect("inet")
        .port();
    let err = s
        .connect(&std::net::SocketAddr::new(ip, port).into())
        .expect_err("connect to a closed port must fail");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    client_port
}

/// Resets sent without a socket, whichever hook serves them on this kernel (the all-resets
/// tracepoint of 6.10+, else fentry/kprobe on `tcp_v4_send_reset`/`tcp_v6_send_reset`): three
/// SYNs to a closed port give exactly three `sent` resets, each once (the tracepoint and the
/// function hook never both report one), with the exact 4-tuple and no task, socket or state.
pub fn unowned_resets_are_reported_once_each(ip: std::net::IpAddr, family: &str) {
    let mut probe = crate::Probe::start(&[]);
    let hook = probe
        .hook("reset_sent_unowned")
        .expect("a hook for resets sent without a socket on every kernel of the matrix");
    let _ = writeln!(
        std::io::stderr(),
        "resets without a socket come from: {hook}"
    );
    let port = closed_port(ip);
    let clients: Vec<u16> = (0..3).map(|_| refused_connect(ip, port)).collect();
    let last = clients[2];
    probe
        .wait_for(std::time::Duration::from_secs(10), |r| {
            r["direction"] == "received" && r["sport"] == last
        })
        .expect("the last client's reset was not reported");
    let records = probe.stop();
    let sent = resets(&records, port, "sent");
    let dports: Vec<u64> = sent.iter().map(|r| r["dport"].as_u64().unwrap()).collect();
    assert_eq!(
        dports,
        clients.iter().map(|c| u64::from(*c)).collect::<Vec<_>>(),
        "one sent reset per SYN, in order: {sent:#?}"
    );
    for r in &sent {
        assert_eq!(r["family"], family);
        assert_eq!(r["saddr"], ip.to_string());
        assert_eq!(r["sport"], port);
        assert_eq!(r["daddr"], ip.to_string());
        assert_eq!(r["tcp_state"], Value::Null);
        assert_eq!(r["socket_cookie"], Value::Null);
        assert_eq!(r["pid"], Value::Null);
        assert_eq!(r["netns"], own_netns());
    }
}

/// Sends `bytes` with sendfile(2) from a memfd: page references the send hook does not read.
pub fn send_unseen(conn: &std::net::TcpStream, bytes: &[u8]) {
    // SAFETY: plain syscalls on descriptors this function owns or borrows.
    unsafe {
        let fd = libc::memfd_create(c"request".as_ptr(), 0);
        assert!(fd >= 0, "memfd_create");
        assert_eq!(
            libc::write(fd, bytes.as_ptr().cast(), bytes.len()),
            bytes.len() as isize
        );
        let mut offset: libc::off_t = 0;
        let sent = libc::sendfile(
            std::os::fd::AsRawFd::as_raw_fd(conn),
            fd,
            &mut offset,
            bytes.len(),
        );
        libc::close(fd);
        assert_eq!(sent, bytes.len() as isize, "sendfile");
    }
}
