//! An HTTP fake of the Kubernetes API server, enough for list+watch clients (kube-rs
//! reflectors): LIST with field selectors and a resourceVersion, WATCH as a chunked stream of
//! JSON events (ADDED, MODIFIED, DELETED, BOOKMARK), `410 Gone` to force a relist, and GET of
//! single objects. Plain HTTP/1.1 on loopback, std threads, no TLS. The agent under test talks
//! to it through a kubeconfig (`KUBECONFIG`).

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, mpsc},
    thread,
    time::Duration,
};

use serde_json::{Value, json};

/// Collections the fake serves: (path, resource name, list kind).
const COLLECTIONS: [(&str, &str, &str); 4] = [
    ("/api/v1/pods", "pods", "PodList"),
    ("/api/v1/services", "services", "ServiceList"),
    (
        "/apis/discovery.k8s.io/v1/endpointslices",
        "endpointslices",
        "EndpointSliceList",
    ),
    ("/api/v1/nodes", "nodes", "NodeList"),
];

#[derive(Default)]
struct State {
    rv: u64,
    objects: HashMap<&'static str, Vec<Value>>,
    watchers: HashMap<&'static str, Vec<mpsc::Sender<Option<Value>>>>,
    /// Watches from a resourceVersion below this get 410 Gone.
    oldest_rv: u64,
    requests: Vec<String>,
    /// 410 Gone at a watch's start as an HTTP status (not an event in the stream).
    gone_as_status: bool,
    /// The next lists of a resource that return a resourceVersion already compacted away.
    stale_lists: HashMap<&'static str, usize>,
    /// Resources every watch of which gets a 410 Gone event at once.
    always_gone: std::collections::HashSet<&'static str>,
    /// Resources whose next watch streams this many bytes without a newline.
    endless: HashMap<&'static str, usize>,
}

/// A running fake; stops serving when dropped (its threads end with their connections).
pub struct KubeFake {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl KubeFake {
    pub fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap())
    }

    /// Serves on `addr` (an API server that comes back where it was).
    pub fn start_on(addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).expect("bind the fake API server");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            rv: 100,
            ..State::default()
        }));
        let shared = state.clone();
        thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let state = shared.clone();
                thread::spawn(move || serve(conn, &state));
            }
        });
        Self { addr, state }
    }

    /// Writes a kubeconfig pointing at the fake into `dir`; returns its path.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        Self::kubeconfig_for(self.addr, dir)
    }

    /// A kubeconfig for a fake at `addr`, running or not (yet).
    pub fn kubeconfig_for(addr: SocketAddr, dir: &Path) -> PathBuf {
        let path = dir.join(format!("kubeconfig-{}", addr.port()));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\n\
             users:\n- name: fake\n  user:\n    token: fake-token\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
             current-context: fake\n",
            addr
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }

    fn collection(resource: &str) -> &'static str {
        COLLECTIONS
            .iter()
            .find(|(_, r, _)| *r == resource)
            .map(|(_, r, _)| *r)
            .unwrap_or_else(|| panic!("the fake does not serve {resource}"))
    }

    fn notify(state: &mut State, resource: &'static str, event: Value) {
        if let Some(list) = state.watchers.get_mut(resource) {
            list.retain(|w| w.send(Some(event.clone())).is_ok());
        }
    }

    /// Adds or replaces (same namespace/name) an object; watchers get ADDED or MODIFIED.
    pub fn apply(&self, resource: &str, mut obj: Value) {
        let resource = Self::collection(resource);
        let mut s = self.state.lock().unwrap();
        s.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(s.rv.to_string());
        let (namespace, name) = (
            obj["metadata"]["namespace"].clone(),
            obj["metadata"]["name"].clone(),
        );
        let list = s.objects.entry(resource).or_default();
        let same =
            |o: &Value| o["metadata"]["name"] == name && o["metadata"]["namespace"] == namespace;
        let kind = match list.iter_mut().find(|o| same(o)) {
            Some(old) => {
                *old = obj.clone();
                "MODIFIED"
            }
            None => {
                list.push(obj.clone());
                "ADDED"
            }
        };
        Self::notify(&mut s, resource, json!({"type": kind, "object": obj}));
    }

    /// Adds many new objects at once (names not used yet: no look-up), without events: a
    /// cluster's worth of objects for the benchmarks.
    pub fn extend(&self, resource: &str, objs: Vec<Value>) {
        let resource = Self::collection(resource);
        let mut s = self.state.lock().unwrap();
        s.rv += 1;
        let rv = json!(s.rv.to_string());
        let list = s.objects.entry(resource).or_default();
        for mut obj in objs {
            obj["metadata"]["resourceVersion"] = rv.clone();
            list.push(obj);
        }
    }

    /// Deletes an object; watchers get DELETED.
    pub fn delete(&self, resource: &str, namespace: &str, name: &str) {
        let resource = Self::collection(resource);
        let mut s = self.state.lock().unwrap();
        s.rv += 1;
        let rv = s.rv;
        let list = s.objects.entry(resource).or_default();
        let Some(pos) = list
            .iter()
            .position(|o| key_of(o) == (namespace.to_owned(), name.to_owned()))
        else {
            return;
        };
        let mut obj = list.remove(pos);
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        Self::notify(&mut s, resource, json!({"type": "DELETED", "object": obj}));
    }

    /// Sends a BOOKMARK at the current resourceVersion to the open watches of `resource`.
    pub fn bookmark(&self, resource: &str, kind: &str) {
        let resource = Self::collection(resource);
        let mut s = self.state.lock().unwrap();
        let rv = s.rv.to_string();
        let event = json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": "v1",
            "metadata": {"resourceVersion": rv}}});
        Self::notify(&mut s, resource, event);
    }

    /// Compacts history: open watches of `resource` get a 410 Gone error event and end, and
    /// watches from older resourceVersions are refused with 410 until the client relists.
    pub fn expire_history(&self, resource: &str) {
        let resource = Self::collection(resource);
        let mut s = self.state.lock().unwrap();
        s.rv += 1;
        s.oldest_rv = s.rv;
        let gone = gone_event();
        Self::notify(&mut s, resource, gone);
        if let Some(list) = s.watchers.get_mut(resource) {
            for w in list.drain(..) {
                let _ = w.send(None);
            }
        }
    }

    /// Misbehaviours of real API servers and proxies, for the watch tests: a 410 at a watch's
    /// start as an HTTP status; the next `n` lists of `resource` answering with a
    /// resourceVersion that is already gone (what a list served from a cache that compaction
    /// overtook looks like).
    pub fn stale_lists(&self, resource: &str, n: usize) {
        let resource = Self::collection(resource);
        let mut s = self.state.lock().unwrap();
        s.gone_as_status = true;
        s.rv += 1;
        s.oldest_rv = s.rv;
        s.stale_lists.insert(resource, n);
    }

    /// Every watch of `resource` gets a 410 Gone event at once (a server that cannot serve it).
    pub fn always_gone(&self, resource: &str) {
        let resource = Self::collection(resource);
        self.state.lock().unwrap().always_gone.insert(resource);
    }

    /// The next watch of `resource` streams `bytes` without a newline, then ends.
    pub fn endless_line(&self, resource: &str, bytes: usize) {
        let resource = Self::collection(resource);
        self.state.lock().unwrap().endless.insert(resource, bytes);
    }

    /// Lists (not watches) of `resource` so far.
    pub fn lists(&self, resource: &str) -> usize {
        let path = COLLECTIONS
            .iter()
            .find(|(_, r, _)| *r == resource)
            .map(|(p, _, _)| *p)
            .expect("a collection");
        self.requests()
            .iter()
            .filter(|r| {
                r.split_once('?').map_or(r.as_str(), |(p, _)| p) == format!("GET {path}")
                    && !r.contains("watch=true")
            })
            .count()
    }

    /// Request lines seen so far ("GET /api/v1/pods?..."), in order.
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Open watch streams of `resource`.
    pub fn watchers(&self, resource: &str) -> usize {
        let resource = Self::collection(resource);
        let mut s = self.state.lock().unwrap();
        let list = s.watchers.entry(resource).or_default();
        list.len()
    }
}

fn gone_event() -> Value {
    json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "message": "too old resource version", "reason": "Expired", "code": 410}})
}

fn key_of(obj: &Value) -> (String, String) {
    let m = &obj["metadata"];
    (
        m["namespace"].as_str().unwrap_or("").to_owned(),
        m["name"].as_str().unwrap_or("").to_owned(),
    )
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `spec.nodeName=node-1` (one term; `a.b=c`).
fn matches_fields(obj: &Value, selector: Option<&str>) -> bool {
    let Some(selector) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    selector.split(',').all(|term| {
        let Some((path, want)) = term.split_once('=') else {
            return true;
        };
        let pointer = format!("/{}", path.replace('.', "/"));
        obj.pointer(&pointer).and_then(Value::as_str) == Some(want)
    })
}

fn respond(conn: &mut TcpStream, status: &str, body: &Value) -> std::io::Result<()> {
    let body = body.to_string();
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn serve(conn: TcpStream, state: &Mutex<State>) {
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let mut conn = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        // Headers (GET requests carry no body).
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" {
                break;
            }
        }
        let target = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
        state.lock().unwrap().requests.push(format!("GET {target}"));
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let ok = if let Some((_, resource, list_kind)) =
            COLLECTIONS.iter().find(|(p, _, _)| *p == path)
        {
            let fields = query_param(query, "fieldSelector");
            if query_param(query, "watch").is_some_and(|w| w == "true" || w == "1") {
                watch(&mut conn, state, resource, query, fields.as_deref());
                return;
            }
            let mut s = state.lock().unwrap();
            let rv = match s.stale_lists.get_mut(resource) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    s.oldest_rv - 1
                }
                _ => s.rv,
            };
            // Pages as the API server does: `limit` items from the `continue` offset (only the
            // page is copied).
            let from: usize = query_param(query, "continue")
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            let limit = query_param(query, "limit")
                .and_then(|l| l.parse::<usize>().ok())
                .filter(|&l| l > 0)
                .unwrap_or(usize::MAX);
            let all: &[Value] = s.objects.get(resource).map_or(&[], Vec::as_slice);
            let matching = || all.iter().filter(|o| matches_fields(o, fields.as_deref()));
            let total = matching().count();
            let items: Vec<Value> = matching().skip(from).take(limit).cloned().collect();
            let mut metadata = json!({"resourceVersion": rv.to_string()});
            if from.saturating_add(limit) < total {
                metadata["continue"] = json!((from + limit).to_string());
            }
            let list = json!({"kind": list_kind, "apiVersion": "v1",
                "metadata": metadata, "items": items});
            drop(s);
            respond(&mut conn, "200 OK", &list)
        } else if let Some(name) = path.strip_prefix("/api/v1/nodes/") {
            let s = state.lock().unwrap();
            let node = s
                .objects
                .get("nodes")
                .and_then(|l| l.iter().find(|o| o["metadata"]["name"] == name).cloned());
            drop(s);
            match node {
                Some(n) => respond(&mut conn, "200 OK", &n),
                None => respond(
                    &mut conn,
                    "404 Not Found",
                    &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "reason": "NotFound", "code": 404, "message": format!("nodes \"{name}\" not found")}),
                ),
            }
        } else {
            respond(
                &mut conn,
                "404 Not Found",
                &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "reason": "NotFound", "code": 404}),
            )
        };
        if ok.is_err() {
            return;
        }
    }
}

fn watch(
    conn: &mut TcpStream,
    state: &Mutex<State>,
    resource: &'static str,
    query: &str,
    fields: Option<&str>,
) {
    let from: u64 = query_param(query, "resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (tx, rx) = mpsc::channel();
    let (too_old, as_status, endless) = {
        let mut s = state.lock().unwrap();
        let too_old = from < s.oldest_rv || s.always_gone.contains(resource);
        let endless = s.endless.remove(resource);
        if !too_old && endless.is_none() {
            s.watchers.entry(resource).or_default().push(tx);
        }
        (too_old, s.gone_as_status, endless)
    };
    if too_old && as_status {
        let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": "too old resource version", "reason": "Expired", "code": 410});
        let _ = respond(conn, "410 Gone", &status);
        return;
    }
    let head =
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    if conn.write_all(head.as_bytes()).is_err() {
        return;
    }
    let chunk = |conn: &mut TcpStream, event: &Value| {
        let line = format!("{event}\n");
        write!(conn, "{:x}\r\n{line}\r\n", line.len()).and_then(|()| conn.flush())
    };
    if let Some(bytes) = endless {
        // An ADDED event whose line never ends.
        let piece = vec![b'x'; 64 * 1024];
        let mut sent = 0;
        let start = b"{\"type\":\"ADDED\",\"object\":{\"x\":\"";
        let _ = write!(conn, "{:x}\r\n", start.len())
            .and_then(|()| conn.write_all(start))
            .and_then(|()| conn.write_all(b"\r\n"));
        while sent < bytes {
            let ok = write!(conn, "{:x}\r\n", piece.len())
                .and_then(|()| conn.write_all(&piece))
                .and_then(|()| conn.write_all(b"\r\n"));
            if ok.is_err() {
                return;
            }
            sent += piece.len();
        }
        let _ = conn.write_all(b"0\r\n\r\n");
        return;
    }
    if too_old {
        let _ = chunk(conn, &gone_event());
        let _ = conn.write_all(b"0\r\n\r\n");
        return;
    }
    loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Some(event)) => {
                if event["type"] != "BOOKMARK"
                    && event["type"] != "ERROR"
                    && !matches_fields(&event["object"], fields)
                {
                    continue;
                }
                if chunk(conn, &event).is_err() {
                    return;
                }
            }
            // History expired: the error event went out, end the stream.
            Ok(None) => {
                let _ = conn.write_all(b"0\r\n\r\n");
                return;
            }
            // Keep long watches open; end idle ones like the API server's timeout would.
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = conn.write_all(b"0\r\n\r\n");
                return;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Waits until the agent at `agent` has synced its Kubernetes caches with `pods` pods of its
/// node; panics with its status document after `limit`.
pub fn wait_synced(agent: SocketAddr, pods: u64, limit: std::time::Duration) {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let (_, _, body) = crate::http_get(agent, "/health/status");
        let doc: Value = serde_json::from_str(&body).unwrap();
        if doc["kubernetes"]["state"] == "synced" && doc["kubernetes"]["pods"] == pods {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the pod cache did not sync: {doc:#}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
