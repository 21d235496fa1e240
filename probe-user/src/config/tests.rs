use super::*;

#[test]
fn defaults() {
    let cli = Cli::try_parse_from(["probe"]).unwrap();
    assert_eq!(cli.output, [Output::Terminal]);
    let cli =
        Cli::try_parse_from(["probe", "--output", "json,otlp", "--otlp-timeout", "2500"]).unwrap();
    assert_eq!(cli.output, [Output::Json, Output::Otlp]);
    assert_eq!(cli.otlp_timeout, Duration::from_millis(2500));
    assert_eq!(cli.ringbuf_bytes, 4 << 20);
    assert_eq!(cli.loss_interval, Duration::from_secs(5));
    assert_eq!(cli.signals.count_ones(), 10);
    let cli = Cli::try_parse_from(["probe", "--signals", "SIGSEGV,6"]).unwrap();
    assert_eq!(cli.signals, (1 << 11) | (1 << 6));
    assert_eq!(cli.verifier_log, values::VerifierLog::Stats);
    let cli = Cli::try_parse_from(["probe", "--verifier-log", "verbose"]).unwrap();
    assert_eq!(cli.verifier_log, values::VerifierLog::Verbose);
}

fn load(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::load(args.iter().map(OsString::from).collect())
}

fn file(text: &str) -> tempfile_path::TempFile {
    tempfile_path::TempFile::new(text)
}

mod tempfile_path {
    pub struct TempFile(pub std::path::PathBuf);
    impl TempFile {
        pub fn new(text: &str) -> Self {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = std::env::temp_dir()
                .join(format!("probe-config-test-{}-{n}.toml", std::process::id()));
            std::fs::write(&path, text).unwrap();
            Self(path)
        }
        pub fn arg(&self) -> &str {
            self.0.to_str().unwrap()
        }
    }
    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

#[test]
fn config_file_fills_defaults_but_flags_win() {
    let f = file("output = \"json\"\nqueue-size = 128\nsignals = [\"SIGSEGV\", \"SIGABRT\"]\n");
    let cli = load(&["probe", "--config", f.arg(), "--queue-size", "64"]).unwrap();
    assert_eq!(cli.output, [Output::Json]);
    assert_eq!(cli.queue_size, 64, "the command line beats the file");
    assert_eq!(cli.signals, (1 << 11) | (1 << 6));
    let eff = cli.effective();
    assert_eq!(eff["output"], "json");
    assert_eq!(eff["signals"], serde_json::json!(["SIGABRT", "SIGSEGV"]));
    assert_eq!(eff["http-addr"], "127.0.0.1:9464");
}

#[test]
fn config_file_errors_name_the_key() {
    for (text, needle) in [
        ("output = \"xml\"", "--output"),
        ("queue-size = -3", "--queue-size"),
        ("bogus = 1", "bogus"),
        ("this is not toml", "not valid TOML"),
    ] {
        let f = file(text);
        let err = load(&["probe", "--config", f.arg()]).unwrap_err();
        assert_eq!(err.exit_code(), 2, "{text}");
        assert!(err.to_string().contains(needle), "{text}: {err}");
    }
    let err = load(&["probe", "--config", "/nonexistent/probe.toml"]).unwrap_err();
    assert_eq!(err.exit_code(), 2);
    assert!(
        err.to_string().contains("--config /nonexistent/probe.toml"),
        "{err}"
    );
}

#[test]
fn http_addr() {
    assert_eq!(
        load(&["probe", "--http-addr", "none"]).unwrap().http_addr,
        HttpAddr(None)
    );
    let err = load(&["probe", "--http-addr", "localhost"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("--http-addr"), "{err}");
}

#[test]
fn tls_processes_are_every_process_or_named_ones() {
    use crate::loader::libssl::Scope;
    let parse = |v: &str| Cli::try_parse_from(["probe", "--tls-processes", v]).unwrap();
    assert_eq!(
        Cli::try_parse_from(["probe"]).unwrap().tls_processes.0,
        Scope::All
    );
    assert_eq!(parse("*").tls_processes.0, Scope::All);
    let named = parse("nginx,python3*").tls_processes;
    assert_eq!(named.names(), "nginx,python3*");
    assert!(matches!(named.0, Scope::Processes(p) if p.len() == 2));
}

#[test]
fn rejects_bad_values_naming_the_flag() {
    for args in [
        &["probe", "--output", "xml"][..],
        &["probe", "--queue-size", "0"],
        &["probe", "--loss-interval", "0s"],
        &["probe", "--loss-interval", "soon"],
        &["probe", "--ringbuf-bytes=-1"],
        &["probe", "--ringbuf-bytes", "5000"],
        &["probe", "--ringbuf-bytes", "2048"],
        &["probe", "--signals", "SIGSEGV,SIGBOGUS"],
        &["probe", "--core-wait", "0s"],
        &["probe", "--capture-bytes", "5000"],
        &["probe", "--capture-bytes", "-1"],
        &["probe", "--wasm-runtimes", "/bin/wasmtime"],
        &["probe", "--tls-processes", ","],
        &["probe", "--tls-processes", "/usr/sbin/nginx"],
        &["probe", "--tls-processes", "nginx,*"],
        &["probe", "--conntrack", "maybe"],
        &["probe", "--otlp-protocol", "http/json"],
        &["probe", "--otlp-timeout", "0"],
        &["probe", "--resource-attributes", "novalue"],
        &["probe", "--conntrack-window", "0s"],
        &["probe", "--conntrack-settings-interval", "never"],
        &["probe", "--log-level", "probe=[[["],
        &["probe", "--loss-interval", "1ns"],
        &["probe", "--ringbuf-bytes", "2147483648"],
        &["probe", "--queue-size", "100000000"],
        &["probe", "--shutdown-timeout", "1h"],
        &["probe", "--otlp-endpoint", "not a url"],
        &["probe", "--otlp-endpoint", "ftp://collector:21"],
        &["probe", "--otlp-headers", "novalue"],
        &["probe", "--verifier-log", "loud"],
    ] {
        let err = Cli::try_parse_from(args).unwrap_err().to_string();
        let flag = args[1].split('=').next().unwrap();
        assert!(err.contains(flag), "{args:?}: {err}");
    }
}

#[test]
fn secrets_stay_out_of_errors_config_and_debug() {
    for args in [
        &["probe", "--otlp-endpoint", "ftp://user:SECRET@collector:21"][..],
        &["probe", "--otlp-headers", "authorization: Bearer SECRET"],
        &["probe", "--otlp-headers", "Bearer SECRET=x"],
        &[
            "probe",
            "--otlp-headers",
            "authorization=Bearer SECRET\u{7}",
        ],
    ] {
        let err = Cli::try_parse_from(args).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let text = err.to_string();
        assert!(text.contains(args[1]) && !text.contains("SECRET"), "{text}");
    }
    let cli = Cli::try_parse_from([
        "probe",
        "--otlp-endpoint",
        "http://user:SECRET@collector:4317/?token=SECRET",
        "--otlp-headers",
        "authorization=Bearer SECRET,x-team=blue",
    ])
    .unwrap();
    let shown = format!("{} {cli:?}", cli.effective());
    assert!(!shown.contains("SECRET"), "{shown}");
    assert_eq!(
        cli.effective()["otlp-endpoint"],
        "http://<redacted>@collector:4317/?<redacted>"
    );
    assert_eq!(
        cli.effective()["otlp-headers"],
        serde_json::json!(["authorization=<redacted>", "x-team=<redacted>"])
    );
}

#[test]
fn file_errors_name_line_and_key_never_the_text() {
    let f = file("queue-size = 1\n\notlp-headers = \"x-api-key=hunter2\nsignals = 1\n");
    let e = load(&["probe", "--config", f.arg()])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("not valid TOML at line 3, column") && e.contains("(key \"otlp-headers\")"),
        "{e}"
    );
    assert!(!e.contains("hunter2"), "{e}");
    let f = file(&format!("{} = 1\n", "k".repeat(500)));
    let e = load(&["probe", "--config", f.arg()])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("unknown key \"{}…\"", "k".repeat(64))),
        "{e}"
    );
    assert!(e.len() < 400, "{e}");
}

#[test]
fn conflicting_outputs_and_actions_are_usage_errors() {
    for args in [
        &["probe", "--output", "terminal,json"][..],
        &["probe", "--print-config", "--check-kernel"],
        &["probe", "--print-requirements", "--check-kernel"],
        &["probe", "--print-config", "--print-requirements"],
    ] {
        let e = load(args).unwrap_err();
        assert_eq!(e.exit_code(), 2, "{args:?}: {e}");
    }
}

#[test]
fn hook_pins_are_parsed_checked_and_shown() {
    let cli = load(&["probe", "--hooks", "reset_sent_unowned=kprobe,drops=raw-tp"]).unwrap();
    assert_eq!(
        cli.hooks
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["reset_sent_unowned=kprobe", "drops=raw-tp"]
    );
    assert_eq!(
        cli.effective()["hooks"],
        serde_json::json!(["reset_sent_unowned=kprobe", "drops=raw-tp"])
    );
    for (args, says) in [
        (
            &["probe", "--hooks", "wasm_write=raw-tp"][..],
            "wasm_write has no such hook (its kinds: fexit, kprobe, tracepoint)",
        ),
        (
            &["probe", "--hooks", "drops=raw-tp,drops=raw-tp"],
            "--hooks: drops is pinned twice",
        ),
    ] {
        let e = load(args).unwrap_err();
        assert_eq!(e.exit_code(), 2, "{args:?}: {e}");
        assert!(e.to_string().contains(says), "{args:?}: {e}");
    }
}

/// `--print-config` shows every setting the flags define, under the flag's name, and nothing
/// else: a flag added without its line in `effective()` (or a line left behind by a removed
/// flag) fails here.
#[test]
fn the_effective_configuration_has_every_setting_flag_and_no_other_key() {
    use clap::CommandFactory as _;
    // What the agent does instead of running: not settings.
    const ACTIONS: [&str; 3] = ["print-config", "print-requirements", "check-kernel"];
    let cli = Cli::try_parse_from(["probe"]).unwrap();
    let effective = cli.effective();
    let keys: std::collections::BTreeSet<&str> = effective
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    let command = Cli::command();
    let flags: std::collections::BTreeSet<&str> = command
        .get_arguments()
        .filter_map(clap::Arg::get_long)
        .filter(|l| !ACTIONS.contains(l))
        .collect();
    assert_eq!(keys, flags);
}
