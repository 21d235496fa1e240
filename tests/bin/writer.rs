//! Test helper for the writev tests: `writer writev PART...` writes all parts to stdout with
//! one writev(2); `writer writev-closed PART...` closes stdout first (Rust's runtime reopens a
//! closed fd 1 as /dev/null at start, so the test cannot close it for us). Copied under a
//! runtime's name (e.g. `wasmer`) so the probe selects it. `writer write N` writes N bytes
//! ('a'..'z' repeated) and a newline with one write(2). `writer stream N EVERY_MS COUNT`
//! writes COUNT times N bytes without a newline, EVERY_MS apart: one stream of 'a'..'z'
//! repeated (byte i is 'a' + i % 26), as a runtime that never ends a line.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("write") => {
            let n: usize = args[1].parse().expect("a byte count");
            let mut buf: Vec<u8> = (0..n).map(|i| b'a' + (i % 26) as u8).collect();
            buf.push(b'\n');
            // SAFETY: a valid buffer.
            let w = unsafe { libc::write(1, buf.as_ptr().cast(), buf.len()) };
            std::process::exit(if w == buf.len() as isize { 0 } else { 1 });
        }
        Some("stream") => {
            let n: usize = args[1].parse().expect("a byte count");
            let every: u64 = args[2].parse().expect("milliseconds");
            let count: usize = args[3].parse().expect("a write count");
            for w in 0..count {
                let buf: Vec<u8> = (w * n..(w + 1) * n)
                    .map(|i| b'a' + (i % 26) as u8)
                    .collect();
                let mut at = 0;
                while at < buf.len() {
                    // SAFETY: a valid buffer.
                    let done = unsafe { libc::write(1, buf[at..].as_ptr().cast(), buf.len() - at) };
                    if done <= 0 {
                        std::process::exit(1);
                    }
                    at += done as usize;
                }
                std::thread::sleep(std::time::Duration::from_millis(every));
            }
            std::process::exit(0);
        }
        Some("writev") => {}
        // SAFETY: closing our own stdout.
        Some("writev-closed") => unsafe {
            libc::close(1);
        },
        _ => panic!(
            "usage: writer write N | stream N EVERY_MS COUNT | writev PART... | writev-closed PART..."
        ),
    }
    let parts: Vec<Vec<u8>> = args[1..]
        .iter()
        .map(|p| p.replace("\\n", "\n").into_bytes())
        .collect();
    let iov: Vec<libc::iovec> = parts
        .iter()
        .map(|p| libc::iovec {
            iov_base: p.as_ptr() as *mut libc::c_void,
            iov_len: p.len(),
        })
        .collect();
    // SAFETY: the iovecs point at live buffers.
    let n = unsafe { libc::writev(1, iov.as_ptr(), iov.len() as i32) };
    std::process::exit(if n < 0 { 1 } else { 0 });
}
