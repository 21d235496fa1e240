//! The real binary rejects bad configuration with exit status 2 and a message naming the
//! field; good configuration (the deploy ConfigMap included) is accepted. No root needed:
//! validation happens before anything is loaded.

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
