//! Test helper for the writev tests: `writer writev PART...` writes all parts to stdout with
//! one writev(2); `writer writev-closed PART...` closes stdout first (Rust's runtime reopens a
//! closed fd 1 as /dev/null at start, so the test cannot close it for us). Copied under a
//! runtime's name (e.g. `wasmer`) so the probe selects it.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("writev") => {}
        // SAFETY: closing our own stdout.
        Some("writev-closed") => unsafe {
            libc::close(1);
        },
        _ => panic!("usage: writer writev|writev-closed PART..."),
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
