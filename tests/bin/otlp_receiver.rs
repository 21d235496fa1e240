//! A test OTLP receiver: the collector's trace and logs services over gRPC (tonic, with the
//! opentelemetry-proto server stubs) and over HTTP/protobuf (POST /v1/traces, /v1/logs, decoded
//! with prost). Every span and log record received is printed as one JSON line on stdout; the
//! first line is `{"grpc":"ADDR","http":"ADDR"}`. Usage: otlp_receiver [GRPC_PORT HTTP_PORT].
//! With `OTLP_RECEIVER_TLS=DIR` (DIR/cert.pem: the server's chain, DIR/key.pem) both listen
//! with TLS only and name their transport `grpcs` / `https`.

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
                    "attributes": attrs(&l.attributes), "resource": resource,
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
                let (status, reply) = match path.as_str() {
                    "/v1/traces" => match ExportTraceServiceRequest::decode(body.as_slice()) {
                        Ok(req) => {
                            print_traces(&req, transport);
                            (
                                "200 OK",
                                ExportTraceServiceResponse::default().encode_to_vec(),
                            )
                        }
                        Err(_) => ("400 Bad Request", Vec::new()),
                    },
                    "/v1/logs" => match ExportLogsServiceRequest::decode(body.as_slice()) {
                        Ok(req) => {
                            print_logs(&req, transport);
                            (
                                "200 OK",
                                ExportLogsServiceResponse::default().encode_to_vec(),
                            )
                        }
                        Err(_) => ("400 Bad Request", Vec::new()),
                    },
                    _ => ("404 Not Found", Vec::new()),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\n\r\n",
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
        .serve_with_incoming(incoming)
        .await
        .expect("grpc server");
}
