//! The idle-Redis topology of the conntrack tests: a client netns, a router netns that DNATs a
//! "service" address to a server netns running a real redis-server.

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use super::{Netns, veth};

pub const CLIENT: &str = "10.77.1.2";
pub const SERVICE: &str = "10.77.9.9";
pub const BACKEND: &str = "10.77.2.2";
pub const TIMEOUT_SYSCTL: &str = "net.netfilter.nf_conntrack_tcp_timeout_established";
pub const SHORT_TIMEOUT: u64 = 3;
pub struct Topology {
    pub client: Netns,
    pub router: Netns,
    pub server: Netns,
    redis: Child,
}

impl Topology {
    /// `invalid_drop`: the router drops INVALID packets, as kube-proxy's KUBE-FORWARD and
    /// many host firewalls do; the connection then dies silently instead of with a reset.
    pub fn start(invalid_drop: bool) -> Self {
        let (client, router, server) = (Netns::new("cli"), Netns::new("rtr"), Netns::new("srv"));
        veth(&client, "c0", "10.77.1.2/24", &router, "rc", "10.77.1.1/24");
        veth(&server, "s0", "10.77.2.2/24", &router, "rs", "10.77.2.1/24");
        client.ip(&["route", "add", "default", "via", "10.77.1.1"]);
        server.ip(&["route", "add", "default", "via", "10.77.2.1"]);
        router.sysctl("net.ipv4.ip_forward", "1");
        // The service address is the router's own: a packet that misses the DNAT meets the
        // router's TCP stack, which has no socket for it (as on a node where the ClusterIP
        // is local, e.g. kube-proxy IPVS mode).
        router.ip(&["addr", "add", "10.77.9.9/32", "dev", "lo"]);
        router.exec(&[
            "iptables",
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-d",
            SERVICE,
            "-p",
            "tcp",
            "--dport",
            "6379",
            "-j",
            "DNAT",
            "--to-destination",
            "10.77.2.2:6379",
        ]);
        // Strict TCP tracking: a mid-stream packet without an entry is INVALID, not picked up.
        router.sysctl("net.netfilter.nf_conntrack_tcp_loose", "0");
        if invalid_drop {
            router.exec(&[
                "iptables",
                "-A",
                "INPUT",
                "-m",
                "conntrack",
                "--ctstate",
                "INVALID",
                "-j",
                "DROP",
            ]);
        }
        let redis = server
            .command("redis-server")
            .args([
                "--bind",
                BACKEND,
                "--port",
                "6379",
                "--protected-mode",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting redis-server (`cargo xtask test` installs it)");
        let topo = Self {
            client,
            router,
            server,
            redis,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while topo
            .server
            .enter(|| TcpStream::connect((BACKEND, 6379)).is_err())
        {
            assert!(Instant::now() < deadline, "redis-server did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        topo
    }

    /// A client connection to the service, PINGed once.
    pub fn connect(&self) -> (TcpStream, u16) {
        let mut conn = self
            .client
            .enter(|| TcpStream::connect((SERVICE, 6379)).expect("connect to the service"));
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(ping(&mut conn).expect("first PING"), "+PONG\r\n");
        let port = conn.local_addr().unwrap().port();
        (conn, port)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let _ = self.redis.kill();
        let _ = self.redis.wait();
    }
}

pub fn ping(conn: &mut TcpStream) -> std::io::Result<String> {
    conn.write_all(b"PING\r\n")?;
    let mut buf = [0u8; 64];
    let n = conn.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}
