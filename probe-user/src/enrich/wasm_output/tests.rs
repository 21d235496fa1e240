//! Unit tests of line reassembly, flushing and escaping.

use super::*;

fn common(pid: u32, tid: u32) -> Common {
    Common {
        pid: Some(pid),
        tid: Some(tid),
        comm: Some("wasmtime".into()),
        ..Common::none()
    }
}

fn chunk(fd: u32, data: &[u8], truncated: bool) -> WasmWrite {
    WasmWrite {
        fd,
        runtime: 1,
        offset: 0,
        total_len: data.len() as u64,
        truncated,
        unreadable: false,
        data: data.to_vec(),
    }
}

const LINE_MAX: usize = 16;

fn assembler() -> WasmAssembler {
    WasmAssembler::new(
        vec!["wasmedge".into(), "wasmtime".into()],
        Duration::from_millis(500),
        LINE_MAX,
        Box::new(|_, fd| {
            Some(if fd == 1 {
                "pipe".into()
            } else {
                "/dev/null".into()
            })
        }),
    )
}

fn write(a: &mut WasmAssembler, fd: u32, data: &[u8], now: Instant) -> Vec<String> {
    a.on_chunk(common(10, 11), chunk(fd, data, false));
    a.on_result(
        &common(10, 11),
        fd,
        data.len() as i64,
        Some(if fd == 1 { "pipe" } else { "/dev/null" }),
        now,
    )
    .into_iter()
    .map(|(_, o)| o.text)
    .collect()
}

#[test]
fn lines_across_writes_and_chunks() {
    let mut a = assembler();
    let t = Instant::now();
    assert_eq!(write(&mut a, 1, b"hel", t), Vec::<String>::new());
    assert_eq!(write(&mut a, 1, b"lo\n\nwor", t), vec!["hello", ""]);
    // Two chunks of one write.
    a.on_chunk(common(10, 11), chunk(1, b"ld\nx", false));
    a.on_chunk(
        common(10, 11),
        WasmWrite {
            offset: 4,
            ..chunk(1, b"y\n", false)
        },
    );
    let out = a.on_result(&common(10, 11), 1, 6, Some("pipe"), t);
    let texts: Vec<&str> = out.iter().map(|(_, o)| o.text.as_str()).collect();
    assert_eq!(texts, ["world", "xy"]);
    let (c, o) = &out[0];
    assert_eq!(c.pid, Some(10));
    assert_eq!(
        (o.stream, o.runtime.as_str(), o.write_result),
        (Stream::Stdout, "wasmtime", Some(6))
    );
    assert_eq!(o.fd_target.as_deref(), Some("pipe"));
    assert!(!o.truncated);
}

#[test]
fn streams_are_separate_and_partial_writes_count_only_written_bytes() {
    let mut a = assembler();
    let t = Instant::now();
    assert_eq!(write(&mut a, 2, b"err", t), Vec::<String>::new());
    assert_eq!(write(&mut a, 1, b"out\n", t), vec!["out"]);
    a.on_chunk(common(10, 11), chunk(2, b"or\nlost\n", false));
    let out = a.on_result(&common(10, 11), 2, 3, Some("/dev/null"), t);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].1.text, "error");
    assert_eq!(out[0].1.stream, Stream::Stderr);
    assert_eq!(out[0].1.fd_target.as_deref(), Some("/dev/null"));
}

#[test]
fn failed_writes_report_errno_and_the_attempted_bytes() {
    let mut a = assembler();
    a.on_chunk(common(10, 11), chunk(1, b"to a closed pipe\n", false));
    let out = a.on_result(&common(10, 11), 1, -32, None, Instant::now());
    assert_eq!(out[0].1.text, "to a closed pipe");
    assert_eq!(out[0].1.write_result, Some(-32));
    assert_eq!(
        out[0].1.fd_target, None,
        "the kernel saw no file behind the fd"
    );
}

#[test]
fn partial_lines_flush_after_idle_and_at_exit() {
    let mut a = assembler();
    let t = Instant::now();
    write(&mut a, 1, b"prompt> ", t);
    assert!(a.flush_idle(t + Duration::from_millis(100)).is_empty());
    let out = a.flush_idle(t + Duration::from_millis(500));
    assert_eq!(out[0].1.text, "prompt> ");
    assert!(out[0].1.partial);
    assert!(
        a.flush_idle(t + Duration::from_secs(5)).is_empty(),
        "flushed once"
    );
    write(&mut a, 2, b"bye", t);
    let out = a.on_exit(10);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].1.text, "bye");
    assert_eq!(a.buffered(), 0);
}

#[test]
fn truncated_writes_are_flagged() {
    let mut a = assembler();
    a.on_chunk(common(10, 11), chunk(1, b"abc", true));
    let out = a.on_result(&common(10, 11), 1, 100_000, Some("pipe"), Instant::now());
    assert_eq!(out.len(), 1);
    assert!(out[0].1.truncated);
    assert!(out[0].1.partial);
    assert_eq!(out[0].1.text, "abc");
    // Whole lines of a truncated write go out as lines; what follows the last newline is the
    // truncated rest (empty when the cap fell right after a newline).
    a.on_chunk(common(10, 11), chunk(1, b"one\ntw", true));
    let out = a.on_result(&common(10, 11), 1, 100_000, Some("pipe"), Instant::now());
    let got: Vec<(&str, bool, bool)> = out
        .iter()
        .map(|(_, o)| (o.text.as_str(), o.partial, o.truncated))
        .collect();
    assert_eq!(got, [("one", false, false), ("tw", true, true)]);
}

/// (text, partial) of every record `bytes` written in one write make.
fn records(a: &mut WasmAssembler, bytes: &[u8]) -> Vec<(String, bool)> {
    a.on_chunk(common(10, 11), chunk(1, bytes, false));
    a.on_result(
        &common(10, 11),
        1,
        bytes.len() as i64,
        Some("pipe"),
        Instant::now(),
    )
    .into_iter()
    .map(|(_, o)| (o.text, o.partial))
    .collect()
}

#[test]
fn output_without_newlines_goes_out_in_capped_partial_records() {
    let mut a = assembler();
    // 40 bytes without a newline: two full records of 16, 8 bytes held.
    let out = records(&mut a, &[b'a'; 40]);
    assert_eq!(
        out,
        [("a".repeat(16), true), ("a".repeat(16), true)],
        "records at the cap"
    );
    assert_eq!(a.buffered(), 1);
    // Exactly the cap before a newline is one whole line, not a partial and an empty one.
    let out = records(&mut a, b"bbbbbbbb\n");
    assert_eq!(out, [(format!("{}bbbbbbbb", "a".repeat(8)), false)]);
    assert_eq!(
        records(&mut a, b"cccccccccccccccc\n"),
        [("c".repeat(16), false)]
    );
    // Held bytes never exceed the cap, however much arrives.
    let out = records(&mut a, &[b'z'; 16 * 1000 + 5]);
    assert_eq!(out.len(), 1000);
    assert!(out.iter().all(|(t, p)| t.len() == 16 && *p));
    let rest = a.flush_idle(Instant::now() + Duration::from_secs(1));
    assert_eq!(rest[0].1.text, "zzzzz");
}

#[test]
fn the_cap_never_splits_a_character() {
    let mut a = assembler();
    // 14 ASCII bytes, then a 3-byte character across the 16-byte cap.
    let mut bytes = b"xxxxxxxxxxxxxx".to_vec();
    bytes.extend_from_slice("✓✓".as_bytes());
    bytes.push(b'\n');
    let out = records(&mut a, &bytes);
    assert_eq!(
        out,
        [
            ("xxxxxxxxxxxxxx".to_owned(), true),
            ("✓✓".to_owned(), false)
        ]
    );
    // Bytes that are not UTF-8 are cut at the cap and stay exact (escaped, base64).
    let out = records(&mut a, &[0xffu8; 20]);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, "\\xff".repeat(16));
}

#[test]
fn a_write_whose_result_was_lost_goes_out_with_a_null_result_never_grown() {
    let mut a = assembler();
    assert!(
        a.on_chunk(common(10, 11), chunk(1, b"lost write\n", false))
            .is_empty()
    );
    // Its result never arrives; the next write of the thread starts at offset 0: the first
    // goes out as captured, without a result, and is not grown by the second.
    let out = a.on_chunk(common(10, 11), chunk(1, b"next\n", false));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].1.text, "lost write");
    assert_eq!(out[0].1.write_result, None);
    let out = a.on_result(&common(10, 11), 1, 5, Some("pipe"), Instant::now());
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].1.text, "next");
    assert_eq!(out[0].1.write_result, Some(5));
    // The last write of a process whose result never came goes out at its exit.
    a.on_chunk(common(10, 11), chunk(1, b"last words", false));
    let out = a.on_exit(10);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].1.text, "last words");
    assert!(out[0].1.partial);
    assert_eq!(out[0].1.write_result, None);
    assert_eq!(a.buffered(), 0);
}

fn unescape(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && b.get(i + 1) == Some(&b'\\') {
            out.push(b'\\');
            i += 2;
        } else if b[i] == b'\\' && b.get(i + 1) == Some(&b'x') {
            out.push(u8::from_str_radix(&text[i + 2..i + 4], 16).unwrap());
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

#[test]
fn escaping_round_trip() {
    assert_eq!(
        render("héllo ✓ 日本".as_bytes()),
        ("héllo ✓ 日本".into(), None)
    );
    assert_eq!(render(b"back\\slash"), ("back\\slash".into(), None));
    for raw in [
        &b"\xff\xfeA\\x41"[..],
        b"ok \xc3\x28 \\ end",
        b"\x80",
        b"caf\xc3\xa9\xff",
    ] {
        let (text, b64) = render(raw);
        assert_eq!(unescape(&text), raw, "{text}");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(b64.unwrap())
            .unwrap();
        assert_eq!(decoded, raw);
    }
    assert_eq!(render(b"\xffA").0, "\\xffA");
}

#[test]
fn fd_targets() {
    for (link, want) in [
        ("pipe:[4711]", "pipe"),
        ("socket:[1]", "socket"),
        ("/dev/pts/3", "tty"),
        ("/dev/null", "/dev/null"),
        ("/var/log/app.log", "/var/log/app.log"),
        ("anon_inode:[eventfd]", "anon_inode:[eventfd]"),
        ("/memfd:out (deleted)", "/memfd:out (deleted)"),
    ] {
        assert_eq!(classify_fd_target(link.parse().unwrap()), want, "{link}");
    }
}
