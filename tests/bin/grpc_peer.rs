//! A gRPC peer for the HTTP/2 root tests: tonic over h2c (HTTP/2 with prior knowledge, as gRPC
//! runs inside clusters), the collector's trace service from the opentelemetry-proto stubs.
//! `grpc_peer server ABORT_ON` serves on a loopback port (printed first) and, in call
//! ABORT_ON, exits: every connection was accepted with SO_LINGER 0, so each is reset.
//! `grpc_peer client PORT TRACEPARENT...` makes one call per traceparent (`-`: none), one
//! after the other on one connection, and prints `ok` or `error` for each.

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_client::TraceServiceClient,
    trace_service_server::{TraceService, TraceServiceServer},
};
use tokio_stream::{StreamExt as _, wrappers::TcpListenerStream};
use tonic::{Request, Response, Status, transport::Server};

struct Service {
    calls: AtomicUsize,
    abort_on: usize,
}

#[tonic::async_trait]
impl TraceService for Service {
    async fn export(
        &self,
        _request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        if self.calls.fetch_add(1, Ordering::SeqCst) + 1 == self.abort_on {
            // No answer: the process ends, and its connections with a reset.
            std::process::exit(0);
        }
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

async fn server(abort_on: usize) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    println!("{}", listener.local_addr().expect("bound").port());
    let incoming = TcpListenerStream::new(listener).map(|s| {
        s.inspect(|s| {
            socket2::SockRef::from(s)
                .set_linger(Some(Duration::ZERO))
                .expect("SO_LINGER");
        })
    });
    let service = Service {
        calls: AtomicUsize::new(0),
        abort_on,
    };
    Server::builder()
        .add_service(TraceServiceServer::new(service))
        .serve_with_incoming(incoming)
        .await
        .expect("serving");
}

async fn client(port: u16, traceparents: &[String]) {
    let mut client = TraceServiceClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .expect("connecting");
    for tp in traceparents {
        let mut request = Request::new(ExportTraceServiceRequest {
            resource_spans: Vec::new(),
        });
        if tp != "-" {
            request
                .metadata_mut()
                .insert("traceparent", tp.parse().expect("an ASCII value"));
        }
        match client.export(request).await {
            Ok(_) => println!("ok"),
            Err(e) => println!("error: {}", e.code()),
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    match args.first().map(String::as_str) {
        Some("server") => {
            let abort_on = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(0);
            runtime.block_on(server(abort_on));
        }
        Some("client") => {
            let port = args.get(1).and_then(|p| p.parse().ok()).expect("PORT");
            runtime.block_on(client(port, &args[2..]));
        }
        _ => {
            eprintln!("usage: grpc_peer server ABORT_ON | grpc_peer client PORT TRACEPARENT...");
            std::process::exit(2);
        }
    }
}
