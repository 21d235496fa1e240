//! Test helper for the signal e2e tests: crashes (or survives) in a chosen way.
//! Usage: crasher segv | abort | handle-segv | sleep | reset-then-segv HOST:PORT | resets TO FROM
//!        | refuse N HOST:PORT | refuse-for MS HOST:PORT | serve ADDR THEN
//! It sets RLIMIT_CORE from CRASHER_RLIMIT_CORE ("0" or "unlimited") first when given.

use std::{io::Write as _, time::Duration};

extern "C" fn on_segv(_: libc::c_int) {
    // Async-signal-safe: write(2) only.
    let msg = b"handled SIGSEGV\n";
    // SAFETY: valid buffer.
    unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
}

fn set_rlimit_core() {
    let Ok(value) = std::env::var("CRASHER_RLIMIT_CORE") else {
        return;
    };
    let limit = if value == "unlimited" {
        libc::RLIM_INFINITY
    } else {
        value.parse().expect("CRASHER_RLIMIT_CORE")
    };
    let rl = libc::rlimit {
        rlim_cur: limit,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: valid rlimit.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_CORE, &rl) }, 0);
}

/// Closes `conn` with SO_LINGER {1, 0}: the kernel sends a reset instead of a FIN.
fn abort(conn: std::net::TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt with a valid linger struct.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&conn),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
}

/// A read from an unmapped page: the kernel raises SIGSEGV (SEGV_MAPERR) on this thread.
fn segv() -> ! {
    let addr = std::hint::black_box(8usize) as *const u8;
    // SAFETY: deliberately not; this is the crash under test.
    let v = unsafe { std::ptr::read_volatile(addr) };
    std::process::exit(i32::from(v));
}

/// Reads one request from an accepted connection (recv(2)): what it read, for the test.
fn read_request(conn: &mut std::net::TcpStream) -> usize {
    let mut buf = [0u8; 2048];
    std::io::Read::read(conn, &mut buf).expect("read the request")
}

/// A server on ADDR that prints `listening PORT`, then, as THEN says:
/// - `segv`: reads one request, then crashes on the thread that read it;
/// - `segv-elsewhere`: reads one request, then another thread of the process crashes;
/// - `answer-segv`: reads one request, answers it (204), then crashes;
/// - `answer-next-segv`: reads one request, answers it, reads the next request on the same
///   connection, then crashes;
/// - `reset`: reads one request, then aborts the connection (a reset);
/// - `kill-child`: reads one request, then sends SIGABRT to a child (`crasher sleep`) and
///   prints `child PID`;
/// - `two-segv`: two threads each read a request and hold their connection, then a third
///   thread crashes while both are being served;
/// - `two-segv-reader`: the same, and the thread that read the first request crashes.
fn serve(addr: &str, then: &str) -> ! {
    let listener = std::net::TcpListener::bind(addr).expect("bind");
    println!(
        "listening {}",
        listener.local_addr().expect("address").port()
    );
    std::io::stdout().flush().expect("stdout");
    let accept = || listener.accept().expect("accept").0;
    match then {
        "kill-child" => {
            let mut conn = accept();
            read_request(&mut conn);
            kill_child();
            std::process::exit(0)
        }
        "segv" | "segv-elsewhere" | "answer-segv" | "answer-next-segv" | "reset" => {
            let mut conn = accept();
            read_request(&mut conn);
            match then {
                "segv" => segv(),
                "segv-elsewhere" => {
                    let _ = std::thread::spawn(|| segv()).join();
                    unreachable!("the process died")
                }
                "reset" => {
                    abort(conn);
                    std::process::exit(0)
                }
                _ => {
                    std::io::Write::write_all(&mut conn, b"HTTP/1.1 204 No Content\r\n\r\n")
                        .expect("answer");
                    if then == "answer-next-segv" {
                        read_request(&mut conn);
                    }
                    segv()
                }
            }
        }
        "two-segv" | "two-segv-reader" => {
            let (tx, rx) = std::sync::mpsc::channel();
            let (crash_tx, crash_rx) = std::sync::mpsc::channel::<()>();
            let mut crash_rx = Some(crash_rx);
            for _ in 0..2 {
                let mut conn = accept();
                let tx = tx.clone();
                // The first reader crashes when told to (`two-segv-reader`).
                let told = crash_rx.take();
                std::thread::spawn(move || {
                    read_request(&mut conn);
                    tx.send(()).expect("main thread");
                    match told {
                        Some(rx) if rx.recv().is_ok() => segv(),
                        _ => std::thread::sleep(Duration::from_secs(30)),
                    }
                    drop(conn);
                });
            }
            rx.recv().expect("first request");
            rx.recv().expect("second request");
            if then == "two-segv-reader" {
                crash_tx.send(()).expect("the first reader");
                std::thread::sleep(Duration::from_secs(30));
            }
            let _ = std::thread::spawn(|| segv()).join();
            unreachable!("the process died")
        }
        other => panic!("unknown serve mode {other:?}"),
    }
}

/// Starts `crasher sleep` (this binary), waits until it is ready, sends it SIGABRT, prints
/// `child PID` and waits for it.
fn kill_child() {
    use std::io::BufRead as _;
    let mut child = std::process::Command::new("/proc/self/exe")
        .arg("sleep")
        .env("CRASHER_RLIMIT_CORE", "0")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the child");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("the child's ready line");
    // SAFETY: kill has no memory preconditions.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGABRT) }, 0);
    println!("child {}", child.id());
    std::io::stdout().flush().expect("stdout");
    let _ = child.wait();
}

fn main() {
    // Rust's runtime installs SIGSEGV/SIGBUS handlers (stack overflow detection) that
    // re-raise with the default action: two signals per crash. Act like a C program.
    // SAFETY: restoring the default dispositions.
    unsafe {
        libc::signal(libc::SIGSEGV, libc::SIG_DFL);
        libc::signal(libc::SIGBUS, libc::SIG_DFL);
    }
    set_rlimit_core();
    match std::env::args().nth(1).as_deref() {
        Some("segv") => {
            // A read from an unmapped page: the kernel raises SIGSEGV with SEGV_MAPERR.
            let addr = std::hint::black_box(8usize) as *const u8;
            // SAFETY: deliberately not; this is the crash under test.
            let v = unsafe { std::ptr::read_volatile(addr) };
            std::process::exit(i32::from(v));
        }
        Some("abort") => std::process::abort(),
        Some("reset-then-segv") => {
            // A connection closed with SO_LINGER {1, 0}: this process sends a reset...
            let to = std::env::args().nth(2).expect("HOST:PORT");
            abort(std::net::TcpStream::connect(to).expect("connect"));
            // ...then crashes.
            let addr = std::hint::black_box(8usize) as *const u8;
            // SAFETY: deliberately not; this is the crash under test.
            let v = unsafe { std::ptr::read_volatile(addr) };
            std::process::exit(i32::from(v));
        }
        Some("resets") => {
            // A reset sent (as above) to the first address, then one received: the second
            // address's server aborts the connection. Exit 0 only if the connection saw the reset;
            // otherwise a code saying what happened, and a line on stderr (never a panic).
            let fail = |code: i32, what: String| -> ! {
                let _ = writeln!(std::io::stderr(), "resets: {what}");
                std::process::exit(code)
            };
            let (to, from) = (
                std::env::args().nth(2).unwrap_or_default(),
                std::env::args().nth(3).unwrap_or_default(),
            );
            match std::net::TcpStream::connect(&to) {
                Ok(conn) => abort(conn),
                Err(e) => fail(3, format!("connect {to}: {e}")),
            }
            // The server may abort before this task returns from connect (a slow guest):
            // then connect itself reports the reset.
            let mut conn = match std::net::TcpStream::connect(&from) {
                Ok(conn) => conn,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
                Err(e) => fail(4, format!("connect {from}: {e}")),
            };
            let mut buf = [0u8; 16];
            match std::io::Read::read(&mut conn, &mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
                other => fail(5, format!("expected a reset from {from}, got {other:?}")),
            }
        }
        Some("refuse") => {
            // N connects to a closed port, each refused (a reset received, and one sent by
            // the peer's kernel): exit 0 only if every one was; else 6 and a line on stderr.
            let n: u64 = std::env::args()
                .nth(2)
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let to = std::env::args().nth(3).unwrap_or_default();
            for i in 0..n {
                match std::net::TcpStream::connect(&to) {
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
                    other => {
                        let _ =
                            writeln!(std::io::stderr(), "refuse: connect {i} to {to}: {other:?}");
                        std::process::exit(6)
                    }
                }
            }
        }
        Some("refuse-for") => {
            // Refused connects for MS milliseconds; prints `refused N` (every one refused, or
            // exit 6 as above).
            let ms: u64 = std::env::args()
                .nth(2)
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let to = std::env::args().nth(3).unwrap_or_default();
            let end = std::time::Instant::now() + Duration::from_millis(ms);
            let mut n = 0u64;
            while std::time::Instant::now() < end {
                match std::net::TcpStream::connect(&to) {
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => n += 1,
                    other => {
                        let _ = writeln!(
                            std::io::stderr(),
                            "refuse-for: connect {n} to {to}: {other:?}"
                        );
                        std::process::exit(6)
                    }
                }
            }
            println!("refused {n}");
        }
        Some("serve") => serve(
            &std::env::args().nth(2).unwrap_or_default(),
            &std::env::args().nth(3).unwrap_or_default(),
        ),
        Some("handle-segv") => {
            // SAFETY: installs a valid handler.
            unsafe { libc::signal(libc::SIGSEGV, on_segv as *const () as libc::sighandler_t) };
            // SAFETY: raise has no preconditions.
            unsafe { libc::raise(libc::SIGSEGV) };
            std::process::exit(0);
        }
        Some("sleep") => {
            // Tell the test that the dispositions are set: a signal sent now meets them.
            println!("ready");
            std::thread::sleep(Duration::from_secs(30));
        }
        other => panic!("unknown mode {other:?}"),
    }
}
