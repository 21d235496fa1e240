//! The real binary rejects bad configuration with exit status 2 and a message naming the
//! field; good configuration (the deploy ConfigMap included) is accepted. No root needed:
//! validation happens before anything is loaded.

use probe_tests::*;

struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new(name: &str, text: &str) -> Self {
        let path = std::env::temp_dir().join(format!("probe-{}-{name}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        Self(path)
    }
    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn bad_configuration_exits_2_naming_the_field() {
    let bad_value = TempFile::new("bad-value.toml", "output = \"xml\"\n");
    let unknown_key = TempFile::new("unknown-key.toml", "outptu = \"json\"\n");
    let unreadable = TempFile::new("unreadable.toml", "");
    std::fs::remove_file(&unreadable.0).unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--output", "xml"], "--output"),
        (vec!["--http-addr", "http://[::1"], "--http-addr"),
        (vec!["--queue-size", "-5"], "--queue-size"),
        (vec!["--ringbuf-bytes=-1"], "--ringbuf-bytes"),
        (vec!["--ringbuf-bytes", "1000"], "--ringbuf-bytes"),
        (vec!["--loss-interval", "-1s"], "--loss-interval"),
        (vec!["--signals", "SIGSEGV,SIGFOO"], "SIGFOO"),
        (vec!["--config", unreadable.path()], "--config"),
        (vec!["--config", bad_value.path()], "--output"),
        (vec!["--config", unknown_key.path()], "outptu"),
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
    let file = TempFile::new("good.toml", "queue-size = 77\nsignals = [\"SIGSEGV\"]\n");
    let out = probe_command()
        .args(["--config", file.path(), "--print-config"])
        .env("PROBE_OUTPUT", "json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(config["queue-size"], 77);
    assert_eq!(config["signals"], serde_json::json!(["SIGSEGV"]));
    assert_eq!(config["output"], "json");
}
