//! A real Prometheus server (Debian's `prometheus` package, installed by `cargo xtask test`)
//! scraping the agent: started on a loopback port with its own data directory and exemplar
//! storage on, queried through its HTTP API; and `promtool`.

use std::{
    io::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{TempDir, Value, http_get};

pub struct Prometheus {
    child: Child,
    pub addr: SocketAddr,
    dir: TempDir,
}

impl Prometheus {
    /// Scrapes `target` (the agent's HTTP endpoint) every second, adding `node=<node>` as the
    /// shipped scrape config does; waits until the server is ready.
    pub fn start(target: SocketAddr, node: &str) -> Self {
        let dir = TempDir::new("prometheus");
        let config = dir.0.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: node-probe\n    honor_labels: true\n\
                 \x20   static_configs:\n      - targets: [\"{target}\"]\n\
                 \x20       labels: {{node: \"{node}\"}}\n"
            ),
        )
        .unwrap();
        promtool(&["check", "config", config.to_str().unwrap()], "");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = std::fs::File::create(dir.0.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--enable-feature=exemplar-storage")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus (Debian's prometheus package: cargo xtask test installs it)");
        let me = Self { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !me.ready() {
            assert!(
                Instant::now() < deadline,
                "prometheus did not get ready: {}",
                me.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        me
    }

    fn ready(&self) -> bool {
        std::net::TcpStream::connect(self.addr).is_ok() && http_get(self.addr, "/-/ready").0 == 200
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query's result vector (`[{"metric": {...}, "value": [t, "v"]}]`); panics on
    /// an error answer (a query that does not parse).
    pub fn query(&self, promql: &str) -> Vec<Value> {
        let doc = self.api(&format!("/api/v1/query?query={}", encode(promql)));
        doc["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The exemplars of the series `selector` matches over the last `since`.
    pub fn exemplars(&self, selector: &str, since: Duration) -> Vec<Value> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        let path = format!(
            "/api/v1/query_exemplars?query={}&start={}&end={}",
            encode(selector),
            (now - since).as_secs(),
            (now + Duration::from_secs(60)).as_secs()
        );
        self.api(&path)["data"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn api(&self, path: &str) -> Value {
        let (code, _, body) = http_get(self.addr, path);
        let doc: Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {code} {e}: {body}"));
        assert_eq!(doc["status"], "success", "{path}: {doc:#}");
        doc
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs promtool with `args` and `stdin`; panics with its output unless it succeeds.
pub fn promtool(args: &[&str], stdin: &str) -> String {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package: cargo xtask test installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}: {text}\n{stdin}");
    text
}

/// The shipped dashboard's Prometheus queries: (panel title, expression), with Grafana's
/// `$__rate_interval` as one minute.
pub fn dashboard_queries(dashboard: &Path) -> Vec<(String, String)> {
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(dashboard).unwrap()).unwrap();
    let mut out = Vec::new();
    for panel in doc["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if target["datasource"]["type"] == "prometheus" {
                let expr = target["expr"].as_str().expect("a Prometheus target's expr");
                out.push((
                    panel["title"].as_str().unwrap_or_default().to_owned(),
                    expr.replace("$__rate_interval", "1m"),
                ));
            }
        }
    }
    out
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The repository's file at `rel` (deploy/...).
pub fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}
