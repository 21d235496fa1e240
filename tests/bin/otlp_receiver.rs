//! A test OTLP receiver: the collector's trace, logs and metrics services over gRPC (tonic,
//! with the opentelemetry-proto server stubs) and over HTTP/protobuf (POST /v1/traces,
//! /v1/logs, /v1/metrics, decoded with prost). Every span, log record and metric (a sum, with
//! its points) received is printed as one JSON line on stdout; the first line is
//! `{"grpc":"ADDR","http":"ADDR"}`. Usage: otlp_receiver [GRPC_PORT HTTP_PORT].
//! With `OTLP_RECEIVER_TLS=DIR` (DIR/cert.pem: the server's chain, DIR/key.pem) both listen
//! with TLS only and name their transport `grpcs` / `https`.
//! With `OTLP_RECEIVER_FAULTS` (comma-separated) the HTTP endpoint misbehaves as collectors do:
//! `max-body=N` answers 413 to a body over N bytes; `status=CODE:COUNT[:RETRY_AFTER]` answers
//! the first COUNT requests with CODE (and a `Retry-After` of RETRY_AFTER seconds). Each HTTP
//! request is printed too: `{"signal":"request","path","status","bytes","records","at_ms"}`
//! (records: how many spans or log records the body held).

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener},
};

use opentelemetry_proto::tonic::{
    collector::{
        logs::v1::{
            ExportLogsServiceRequest, ExportLogsServiceResponse,
            logs_service_server::{LogsService, LogsServiceServer},
        },
        metrics::v1::{
            ExportMetricsServiceRequest, ExportMetricsServiceResponse,
            metrics_service_server::{MetricsService, MetricsServiceServer},
        },
        trace::v1::{
            ExportTraceServiceRequest, ExportTraceServiceResponse,
            trace_service_server::{TraceService, TraceServiceServer},
        },
    },
    common::v1::{AnyValue, KeyValue, any_value::Value as V},
};
use prost::Message as _;
use serde_json::{Map, Value, json};

fn value(v: &Option<AnyValue>) -> Value {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(V::StringValue(s)) => json!(s),
        Some(V::BoolValue(b)) => json!(b),
        Some(V::IntValue(i)) => json!(i),
        Some(V::DoubleValue(d)) => json!(d),
        Some(V::ArrayValue(a)) => {
            Value::Array(a.values.iter().map(|x| value(&Some(x.clone()))).collect())
        }
        Some(other) => json!(format!("{other:?}")),
        None => Value::Null,
    }
}

fn attrs(kvs: &[KeyValue]) -> Value {
    Value::Object(
        kvs.iter()
            .map(|kv| (kv.key.clone(), value(&kv.value)))
            .collect::<Map<_, _>>(),
    )
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn print_traces(req: &ExportTraceServiceRequest, transport: &str) {
    let mut out = std::io::stdout().lock();
    for rs in &req.resource_spans {
        let resource = rs.resource.as_ref().map(|r| attrs(&r.attributes));
        for ss in &rs.scope_spans {
            for s in &ss.spans {
                let line = json!({
                    "signal": "span", "transport": transport, "name": s.name,
                    "trace_id": hex(&s.trace_id), "span_id": hex(&s.span_id),
                    "parent_span_id": hex(&s.parent_span_id),
                    "start_time_unix_nano": s.start_time_unix_nano,
                    "end_time_unix_nano": s.end_time_unix_nano,
                    "status_code": s.status.as_ref().map(|st| st.code),
                    "status_message": s.status.as_ref().map(|st| st.message.clone()),
                    "attributes": attrs(&s.attributes), "resource": resource,
                });
                let _ = writeln!(out, "{line}");
            }
        }
    }
    let _ = out.flush();
}

fn print_logs(req: &ExportLogsServiceRequest, transport: &str) {
    let mut out = std::io::stdout().lock();
    for rl in &req.resource_logs {
        let resource = rl.resource.as_ref().map(|r| attrs(&r.attributes));
        for sl in &rl.scope_logs {
            for l in &sl.log_records {
                let line = json!({
                    "signal": "log", "transport": transport, "event_name": l.event_name,
                    "time_unix_nano": l.time_unix_nano, "severity_text": l.severity_text,
                    "body": value(&l.body), "trace_id": hex(&l.trace_id),
                    "span_id": hex(&l.span_id),
                    "attributes": attrs(&l.attributes), "resource": resource,
                });
                let _ = writeln!(out, "{line}");
            }
        }
    }
    let _ = out.flush();
}

fn print_metrics(req: &ExportMetricsServiceRequest, transport: &str) {
    use opentelemetry_proto::tonic::metrics::v1::{
        exemplar, metric::Data, number_data_point::Value as N,
    };
    let mut out = std::io::stdout().lock();
    for rm in &req.resource_metrics {
        let resource = rm.resource.as_ref().map(|r| attrs(&r.attributes));
        for sm in &rm.scope_metrics {
            for m in &sm.metrics {
                let Some(Data::Sum(sum)) = &m.data else {
                    let line = json!({"signal": "metric", "transport": transport,
                                      "name": m.name, "type": "not a sum"});
                    let _ = writeln!(out, "{line}");
                    continue;
                };
                let points: Vec<Value> = sum
                    .data_points
                    .iter()
                    .map(|p| {
                        let exemplars: Vec<Value> = p
                            .exemplars
                            .iter()
                            .map(|e| {
                                json!({"trace_id": hex(&e.trace_id), "span_id": hex(&e.span_id),
                                       "time_unix_nano": e.time_unix_nano,
                                       "value": match e.value { Some(exemplar::Value::AsInt(i)) => json!(i), _ => Value::Null }})
                            })
                            .collect();
                        json!({"attributes": attrs(&p.attributes),
                               "value": match p.value { Some(N::AsInt(i)) => json!(i), Some(N::AsDouble(d)) => json!(d), None => Value::Null },
                               "start_time_unix_nano": p.start_time_unix_nano,
                               "time_unix_nano": p.time_unix_nano, "exemplars": exemplars})
                    })
                    .collect();
                let line = json!({
                    "signal": "metric", "transport": transport, "name": m.name, "unit": m.unit,
                    "description": m.description, "type": "sum", "monotonic": sum.is_monotonic,
                    "temporality": sum.aggregation_temporality, "points": points,
                    "resource": resource,
                });
                let _ = writeln!(out, "{line}");
            }
        }
    }
    let _ = out.flush();
}

/// The transport name printed with each span and log record.
struct Receiver(&'static str);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        print_traces(request.get_ref(), self.0);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl LogsService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        print_logs(request.get_ref(), self.0);
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        print_metrics(request.get_ref(), self.0);
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// The server's certificate chain and key, when TLS is asked for.
fn tls_files() -> Option<(Vec<u8>, Vec<u8>)> {
    let dir = std::path::PathBuf::from(std::env::var_os("OTLP_RECEIVER_TLS")?);
    Some((
        std::fs::read(dir.join("cert.pem")).expect("cert.pem"),
        std::fs::read(dir.join("key.pem")).expect("key.pem"),
    ))
}

fn rustls_config((cert, key): &(Vec<u8>, Vec<u8>)) -> std::sync::Arc<rustls::ServerConfig> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .expect("cert.pem");
    let key = PrivateKeyDer::from_pem_slice(key).expect("key.pem");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    std::sync::Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server certificate"),
    )
}

/// HTTP/1.1 POST /v1/traces | /v1/logs with a protobuf body.
fn serve_http(listener: TcpListener, tls: Option<std::sync::Arc<rustls::ServerConfig>>) {
    for conn in listener.incoming().flatten() {
        let tls = tls.clone();
        std::thread::spawn(move || match tls {
            Some(config) => {
                let session = rustls::ServerConnection::new(config).expect("TLS session");
                handle_http(rustls::StreamOwned::new(session, conn), "https");
            }
            None => handle_http(conn, "http"),
        });
    }
}

/// The faults of `OTLP_RECEIVER_FAULTS`.
#[derive(Default)]
struct Faults {
    max_body: Option<usize>,
    /// (code, requests left to answer with it, Retry-After seconds)
    status: Option<(u16, usize, Option<u64>)>,
}

static FAULTS: std::sync::Mutex<Option<Faults>> = std::sync::Mutex::new(None);

fn faults_from_env() -> Faults {
    let mut f = Faults::default();
    for part in std::env::var("OTLP_RECEIVER_FAULTS")
        .unwrap_or_default()
        .split(',')
    {
        if let Some(n) = part.strip_prefix("max-body=") {
            f.max_body = Some(n.parse().expect("max-body=BYTES"));
        } else if let Some(spec) = part.strip_prefix("status=") {
            let mut it = spec.split(':');
            let code = it
                .next()
                .and_then(|c| c.parse().ok())
                .expect("status=CODE:COUNT");
            let count = it
                .next()
                .and_then(|c| c.parse().ok())
                .expect("status=CODE:COUNT");
            f.status = Some((code, count, it.next().and_then(|r| r.parse().ok())));
        }
    }
    f
}

/// The fault this request gets: (status line, extra headers), or None to take it.
fn fault(len: usize) -> Option<(String, String)> {
    let mut guard = FAULTS.lock().unwrap();
    let f = guard.get_or_insert_with(faults_from_env);
    if f.max_body.is_some_and(|max| len > max) {
        return Some(("413 Payload Too Large".into(), String::new()));
    }
    match &mut f.status {
        Some((code, left, retry_after)) if *left > 0 => {
            *left -= 1;
            let extra = retry_after.map_or_else(String::new, |s| format!("Retry-After: {s}\r\n"));
            Some((format!("{code} Fault"), extra))
        }
        _ => None,
    }
}

fn print_request(path: &str, status: &str, bytes: usize, body: &[u8]) {
    let records = match path {
        "/v1/traces" => ExportTraceServiceRequest::decode(body).map_or(0, |r| {
            r.resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .map(|s| s.spans.len())
                .sum::<usize>()
        }),
        "/v1/logs" => ExportLogsServiceRequest::decode(body).map_or(0, |r| {
            r.resource_logs
                .iter()
                .flat_map(|r| &r.scope_logs)
                .map(|s| s.log_records.len())
                .sum::<usize>()
        }),
        "/v1/metrics" => ExportMetricsServiceRequest::decode(body).map_or(0, |r| {
            r.resource_metrics
                .iter()
                .flat_map(|r| &r.scope_metrics)
                .map(|s| s.metrics.len())
                .sum::<usize>()
        }),
        _ => 0,
    };
    let at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let status: u16 = status.split(' ').next().unwrap_or("0").parse().unwrap_or(0);
    let line = json!({"signal": "request", "path": path, "status": status, "bytes": bytes,
                      "records": records, "at_ms": at_ms});
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn handle_http<S: Read + Write>(stream: S, transport: &str) {
    {
        {
            let mut reader = BufReader::new(stream);
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
                let mut len = 0usize;
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 {
                        return;
                    }
                    if h == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':')
                        && k.eq_ignore_ascii_case("content-length")
                    {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0u8; len];
                if reader.read_exact(&mut body).is_err() {
                    return;
                }
                let (status, extra, reply) = if let Some((status, extra)) = fault(body.len()) {
                    (status, extra, Vec::new())
                } else {
                    let (status, reply) = taken(&path, &body, transport);
                    (status.to_owned(), String::new(), reply)
                };
                print_request(&path, &status, body.len(), &body);
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/x-protobuf\r\n{extra}Content-Length: {}\r\n\r\n",
                    reply.len()
                );
                let conn = reader.get_mut();
                if conn
                    .write_all(head.as_bytes())
                    .and_then(|()| conn.write_all(&reply))
                    .and_then(|()| conn.flush())
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

/// A request the receiver takes: printed, answered 200 (400 when it does not decode).
fn taken(path: &str, body: &[u8], transport: &str) -> (&'static str, Vec<u8>) {
    match path {
        "/v1/traces" => match ExportTraceServiceRequest::decode(body) {
            Ok(req) => {
                print_traces(&req, transport);
                let reply = ExportTraceServiceResponse::default().encode_to_vec();
                ("200 OK", reply)
            }
            Err(_) => ("400 Bad Request", Vec::new()),
        },
        "/v1/logs" => match ExportLogsServiceRequest::decode(body) {
            Ok(req) => {
                print_logs(&req, transport);
                let reply = ExportLogsServiceResponse::default().encode_to_vec();
                ("200 OK", reply)
            }
            Err(_) => ("400 Bad Request", Vec::new()),
        },
        "/v1/metrics" => match ExportMetricsServiceRequest::decode(body) {
            Ok(req) => {
                print_metrics(&req, transport);
                let reply = ExportMetricsServiceResponse::default().encode_to_vec();
                ("200 OK", reply)
            }
            Err(_) => ("400 Bad Request", Vec::new()),
        },
        _ => ("404 Not Found", Vec::new()),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let port = |i: usize| args.get(i).and_then(|p| p.parse::<u16>().ok()).unwrap_or(0);
    let grpc = std::net::TcpListener::bind(("127.0.0.1", port(1))).expect("bind grpc");
    let http = TcpListener::bind(("127.0.0.1", port(2))).expect("bind http");
    let grpc_addr: SocketAddr = grpc.local_addr().unwrap();
    println!(
        "{}",
        json!({"grpc": grpc_addr.to_string(), "http": http.local_addr().unwrap().to_string()})
    );
    let tls = tls_files();
    let http_tls = tls.as_ref().map(rustls_config);
    std::thread::spawn(move || serve_http(http, http_tls));
    grpc.set_nonblocking(true).unwrap();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(
        tokio::net::TcpListener::from_std(grpc).unwrap(),
    );
    let mut server = tonic::transport::Server::builder();
    let transport = if let Some((cert, key)) = &tls {
        let identity = tonic::transport::Identity::from_pem(cert, key);
        server = server
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .expect("gRPC TLS");
        "grpcs"
    } else {
        "grpc"
    };
    server
        .add_service(TraceServiceServer::new(Receiver(transport)))
        .add_service(LogsServiceServer::new(Receiver(transport)))
        .add_service(MetricsServiceServer::new(Receiver(transport)))
        .serve_with_incoming(incoming)
        .await
        .expect("grpc server");
}
