//! The real binary rejects bad configuration with exit status 2 and a message naming the
//! field; good configuration (the deploy ConfigMap included) is accepted. No root needed:
//! validation happens before anything is loaded. As root, secrets of the OTLP configuration
//! are looked for on every surface of a running agent.

use probe_tests::*;

/// Writes `text` to `name` in `dir` and returns the path as a string.
fn file(dir: &TempDir, name: &str, text: &str) -> String {
    let path = dir.0.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn bad_configuration_exits_2_naming_the_field() {
    let dir = TempDir::new("config-errors");
    let bad_value = file(&dir, "bad-value.toml", "output = \"xml\"\n");
    let unknown_key = file(&dir, "unknown-key.toml", "outptu = \"json\"\n");
    let unreadable = dir.0.join("missing.toml").to_str().unwrap().to_owned();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--output", "xml"], "--output"),
        (vec!["--http-addr", "http://[::1"], "--http-addr"),
        (vec!["--queue-size", "-5"], "--queue-size"),
        (vec!["--ringbuf-bytes=-1"], "--ringbuf-bytes"),
        (vec!["--ringbuf-bytes", "1000"], "--ringbuf-bytes"),
        (vec!["--loss-interval", "-1s"], "--loss-interval"),
        (vec!["--signals", "SIGSEGV,SIGFOO"], "SIGFOO"),
        (vec!["--config", &unreadable], "--config"),
        (vec!["--config", &bad_value], "--output"),
        (vec!["--config", &unknown_key], "outptu"),
        (vec!["--log-level", "probe=[[["], "--log-level"),
        (vec!["--loss-interval", "1ns"], "--loss-interval"),
        (vec!["--ringbuf-bytes", "2147483648"], "--ringbuf-bytes"),
        (vec!["--otlp-endpoint", "not a url"], "--otlp-endpoint"),
        (
            vec!["--otlp-endpoint", "ftp://collector:21"],
            "--otlp-endpoint",
        ),
        (
            vec!["--otlp-headers", "novalue"],
            "OTEL_EXPORTER_OTLP_HEADERS",
        ),
    ];
    for (args, field) in cases {
        let out = run_probe(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(field),
            "{args:?} should name {field}: {stderr}"
        );
    }
}

#[test]
fn environment_and_config_file_are_honoured() {
    let dir = TempDir::new("config-good");
    let good = file(
        &dir,
        "good.toml",
        "queue-size = 77\nsignals = [\"SIGSEGV\"]\n",
    );
    let config = print_config(std::path::Path::new(&good), &[("PROBE_OUTPUT", "json")]);
    assert_eq!(config["queue-size"], 77);
    assert_eq!(config["signals"], serde_json::json!(["SIGSEGV"]));
    assert_eq!(config["output"], "json");
}

const SECRET: &str = "S3CR3T-4711";

fn assert_clean(surface: &str, text: &str) {
    assert!(
        !text.contains(SECRET),
        "the secret appears in {surface}:\n{text}"
    );
}

#[test]
fn secrets_never_appear_on_any_surface() {
    // Malformed values: exit 2 naming the flag, never echoing the value.
    for args in [
        vec![
            "--otlp-headers".to_owned(),
            format!("authorization: Bearer {SECRET}"),
        ],
        vec!["--otlp-headers".to_owned(), format!("Bearer {SECRET}=x")],
        vec![
            "--otlp-endpoint".to_owned(),
            format!("ftp://user:{SECRET}@collector:21"),
        ],
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run_probe(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(args[0]), "{stderr}");
        assert_clean("a configuration error", &stderr);
        assert_clean("stdout", &String::from_utf8_lossy(&out.stdout));
    }
    let endpoint = format!("http://user:{SECRET}@127.0.0.1:9/otlp?token={SECRET}");
    let headers = format!("authorization=Bearer {SECRET},x-api-key={SECRET}");
    let dir = TempDir::new("secrets");
    let empty = dir.0.join("empty.toml");
    std::fs::write(&empty, "").unwrap();
    let config = print_config(
        &empty,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_HEADERS", headers.as_str()),
        ],
    );
    assert_clean("--print-config", &config.to_string());
    assert_eq!(
        config["otlp-endpoint"],
        "http://<redacted>@127.0.0.1:9/otlp?<redacted>"
    );

    if !require_root("config_errors::secrets_never_appear_on_any_surface (running agent)") {
        return;
    }
    // A running agent exporting to a collector that refuses (errors get logged), at debug.
    let mut probe = Probe::start_with_env(
        &["--output", "otlp", "--log-level", "debug"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_ref()),
            ("OTEL_EXPORTER_OTLP_HEADERS", headers.as_ref()),
        ],
    );
    let addr = probe.http_addr();
    let ip = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    let client = refused_connect(ip, closed_port(ip));
    probe
        .wait_for(std::time::Duration::from_secs(10), |r| {
            r["direction"] == "received" && r["sport"] == client
        })
        .expect("the reset was not reported");
    // Let the exporter try (and fail) at least once.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let status: Value = serde_json::from_str(&http_get(addr, "/health/status").2).unwrap();
        if status["exporter"]["state"] == "retrying" {
            assert_clean("/health/status", &status.to_string());
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no export attempt: {status}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_clean("/metrics", &http_get(addr, "/metrics").2);
    let (_, records, log) = probe.stop_with_log();
    assert!(log.contains("otlp: export failed"), "{log}");
    assert!(log.contains("DEBUG"), "the log was not at debug level");
    assert_clean("the log (debug)", &log);
    assert_clean(
        "stdout",
        &records.iter().map(Value::to_string).collect::<String>(),
    );
}

/// Runs the agent with `args` and `envs`, killing it after 30 s (a config read that blocks
/// would hang the test otherwise); returns the exit code and stderr.
fn run_bounded(args: &[&str], envs: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut child = probe_command()
        .args(args)
        .envs(envs.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running the probe");
    let stderr = stderr_of(&mut child);
    let (status, _) = wait_child_exit(&mut child, std::time::Duration::from_secs(30));
    (status.code(), stderr.join().unwrap_or_default())
}

#[test]
fn config_files_are_bounded_and_never_echoed() {
    let dir = TempDir::new("config-bounds");
    let fifo = dir.0.join("fifo.toml");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let fifo = fifo.to_str().unwrap().to_owned();
    let big = file(&dir, "big.toml", &"#".repeat(2 << 20));
    let long_key = file(
        &dir,
        "long-key.toml",
        &format!("{} = 1\n", "k".repeat(200_000)),
    );
    let unterminated = file(
        &dir,
        "secret.toml",
        &format!("queue-size = 64\notlp-headers = \"x-api-key={SECRET}\n"),
    );
    // Not a regular file: refused before it is opened (a device would be read until the agent
    // runs out of memory, a FIFO without a writer would block for ever).
    for (path, what) in [
        ("/dev/zero", "a character device"),
        ("/dev/urandom", "a character device"),
        (fifo.as_str(), "a FIFO"),
        ("/tmp", "a directory"),
    ] {
        let (code, stderr) = run_bounded(&["--config", path, "--print-config"], &[]);
        assert_eq!(code, Some(2), "{path}: {stderr}");
        assert!(
            stderr.contains(&format!("--config {path}: not a regular file ({what})")),
            "{path}: {stderr}"
        );
    }
    let (code, stderr) = run_bounded(&["--config", &big, "--print-config"], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("larger than the 1048576 bytes"), "{stderr}");
    // A key of 200,000 characters is shown in 64 (the error stays short).
    let (code, stderr) = run_bounded(&["--config", &long_key, "--print-config"], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("unknown key"), "{stderr}");
    assert!(stderr.len() < 1024, "{} bytes of error", stderr.len());
    // A syntax error names the file, the line and the key, never the text of the line.
    let (code, stderr) = run_bounded(&["--config", &unterminated], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "--config {unterminated}: not valid TOML at line 2, column"
        )) && stderr.contains("(key \"otlp-headers\")"),
        "{stderr}"
    );
    assert_clean("a TOML syntax error", &stderr);
}

#[test]
fn errors_name_where_the_value_came_from_and_conflicts_exit_2() {
    let dir = TempDir::new("config-sources");
    let from_file = file(&dir, "queue.toml", "queue-size = -5\n");
    for (args, envs, expected) in [
        (
            vec!["--print-config"],
            vec![("PROBE_QUEUE_SIZE", "-5")],
            "the value came from the environment variable PROBE_QUEUE_SIZE".to_owned(),
        ),
        (
            vec!["--config", from_file.as_str(), "--print-config"],
            vec![],
            format!("the value came from key \"queue-size\" of {from_file}"),
        ),
        (
            vec!["--output", "terminal,json"],
            vec![],
            "--output: terminal and json both write to stdout".to_owned(),
        ),
        (
            vec!["--print-config"],
            vec![("PROBE_OUTPUT", "json,terminal")],
            "--output: terminal and json both write to stdout".to_owned(),
        ),
        (
            vec!["--print-config", "--check-kernel"],
            vec![],
            "'--print-config' cannot be used with '--check-kernel'".to_owned(),
        ),
        (
            vec!["--print-requirements"],
            vec![("PROBE_CHECK_KERNEL", "true")],
            "cannot be used with".to_owned(),
        ),
    ] {
        let (code, stderr) = run_bounded(&args, &envs);
        assert_eq!(code, Some(2), "{args:?} {envs:?}: {stderr}");
        assert!(stderr.contains(&expected), "{args:?} {envs:?}: {stderr}");
    }
    // On the command line, the flag is the source: no tip.
    let (code, stderr) = run_bounded(&["--queue-size", "-5", "--print-config"], &[]);
    assert_eq!(code, Some(2));
    assert!(!stderr.contains("came from"), "{stderr}");
}
