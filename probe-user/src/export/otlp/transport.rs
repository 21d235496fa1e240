//! Sends one encoded OTLP export request over HTTP/protobuf (hyper, rustls for https://) or
//! gRPC (tonic, the request's bytes as they are), and classifies the answer as the OTLP
//! specification says: accepted (with the records a partial success rejected), retryable
//! (HTTP 429/502/503/504, gRPC UNAVAILABLE and kin, transport errors; `Retry-After` and gRPC
//! `RetryInfo` honoured), too large (HTTP 413; gRPC RESOURCE_EXHAUSTED without RetryInfo: the
//! batch is split), or rejected for good (every other status, e.g. 400: dropped and counted).
//! Errors carry their whole source chain, so a TLS failure names the certificate problem.

use std::{marker::PhantomData, time::Duration};

use bytes::{Buf as _, BufMut as _, Bytes};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic_types::StatusExt as _;

use super::{OtlpConfig, OtlpError, Protocol, Redactor};

/// The largest response body read (a partial success with its message).
const RESPONSE_MAX: usize = 64 * 1024;
/// The longest wait a collector's Retry-After or RetryInfo may ask for.
const RETRY_AFTER_MAX: Duration = Duration::from_secs(300);

/// What the collector made of one request.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Taken; `rejected` of its records were refused by a partial success.
    Accepted { rejected: u64 },
    /// Try again later (at least `after`, when the collector said so).
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    /// The request is too large for the collector: split it.
    TooLarge { reason: String },
    /// Refused for good: its records are dropped.
    Rejected { reason: String },
}

/// One signal's service: its HTTP path and gRPC method.
#[derive(Debug, Clone, Copy)]
pub struct Service {
    pub http_path: &'static str,
    pub grpc_path: &'static str,
}

enum Kind {
    Grpc {
        channel: tonic::transport::Channel,
        metadata: tonic::metadata::MetadataMap,
    },
    Http {
        client: Client<HttpConnector, Full<Bytes>>,
    },
    Https {
        client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    },
}

pub struct Transport {
    kind: Kind,
    /// The endpoint without a trailing slash (HTTP paths are added).
    base: String,
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
    timeout: Duration,
}

impl Transport {
    pub fn new(config: &OtlpConfig) -> Result<Self, OtlpError> {
        let endpoint = config.endpoint();
        let redactor = Redactor::new(config);
        let build_err = |reason: String| OtlpError::Build {
            endpoint: config.shown.clone(),
            reason: redactor.clean(&reason),
        };
        let tls = endpoint.starts_with("https://");
        let mut headers = Vec::new();
        for (k, v) in &config.headers {
            let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(k.as_bytes()),
                http::HeaderValue::from_str(v),
            ) else {
                return Err(OtlpError::Header(k.clone()));
            };
            headers.push((name, value));
        }
        let kind = match config.protocol {
            Protocol::Grpc => {
                let mut metadata = tonic::metadata::MetadataMap::new();
                for (k, v) in &config.headers {
                    let (Ok(k), Ok(v)) = (
                        tonic::metadata::MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes()),
                        v.parse(),
                    ) else {
                        return Err(OtlpError::Header(k.clone()));
                    };
                    metadata.insert(k, v);
                }
                let mut ep = tonic::transport::Endpoint::from_shared(endpoint.clone())
                    .map_err(|e| build_err(chain(&e)))?
                    .timeout(config.timeout)
                    .connect_timeout(config.timeout)
                    .user_agent(concat!("node-probe/", env!("CARGO_PKG_VERSION")))
                    .map_err(|e| build_err(chain(&e)))?;
                if tls {
                    // The node's CA bundle (SSL_CERT_FILE, SSL_CERT_DIR, else the system's).
                    let tls = tonic::transport::ClientTlsConfig::new()
                        .with_native_roots()
                        .assume_http2(true);
                    ep = ep.tls_config(tls).map_err(|e| build_err(chain(&e)))?;
                }
                Kind::Grpc {
                    channel: ep.connect_lazy(),
                    metadata,
                }
            }
            Protocol::HttpProtobuf if tls => {
                let connector = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_native_roots()
                    .map_err(|e| build_err(format!("no CA certificates for https:// ({e})")))?
                    .https_only()
                    .enable_http1()
                    .build();
                Kind::Https {
                    client: Client::builder(TokioExecutor::new()).build(connector),
                }
            }
            Protocol::HttpProtobuf => Kind::Http {
                client: Client::builder(TokioExecutor::new()).build_http(),
            },
        };
        Ok(Self {
            kind,
            base: endpoint.trim_end_matches('/').to_owned(),
            headers,
            timeout: config.timeout,
        })
    }

    /// Sends one encoded request; `rejected` reads a partial success from the response.
    pub async fn send<R: prost::Message + Default + Send + 'static>(
        &self,
        service: Service,
        body: Vec<u8>,
        rejected: fn(&R) -> u64,
    ) -> Outcome {
        let sent = async {
            match &self.kind {
                Kind::Grpc { channel, metadata } => {
                    grpc(channel.clone(), metadata, service, body, rejected).await
                }
                Kind::Http { client } => self.http(client, service, body, rejected).await,
                Kind::Https { client } => self.http(client, service, body, rejected).await,
            }
        };
        match tokio::time::timeout(self.timeout, sent).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome::Retry {
                after: None,
                reason: format!("no answer within --otlp-timeout {:?}", self.timeout),
            },
        }
    }

    async fn http<C, R>(
        &self,
        client: &Client<C, Full<Bytes>>,
        service: Service,
        body: Vec<u8>,
        rejected: fn(&R) -> u64,
    ) -> Outcome
    where
        C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
        R: prost::Message + Default,
    {
        let mut request = http::Request::post(format!("{}{}", self.base, service.http_path))
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .header(
                http::header::USER_AGENT,
                concat!("node-probe/", env!("CARGO_PKG_VERSION")),
            );
        for (k, v) in &self.headers {
            request = request.header(k, v);
        }
        let request = match request.body(Full::new(Bytes::from(body))) {
            Ok(r) => r,
            Err(e) => return Outcome::Rejected { reason: chain(&e) },
        };
        let response = match client.request(request).await {
            Ok(r) => r,
            Err(e) => {
                return Outcome::Retry {
                    after: None,
                    reason: chain(&e),
                };
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let body = Limited::new(response.into_body(), RESPONSE_MAX)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let what = || {
            let text = String::from_utf8_lossy(&body);
            let text = text.trim();
            if text.is_empty() || !text.is_ascii() {
                format!("HTTP {status}")
            } else {
                format!(
                    "HTTP {status}: {}",
                    text.chars().take(200).collect::<String>()
                )
            }
        };
        match status.as_u16() {
            200..=299 => Outcome::Accepted {
                rejected: R::decode(body).map_or(0, |r| rejected(&r)),
            },
            413 => Outcome::TooLarge { reason: what() },
            429 | 502 | 503 | 504 => Outcome::Retry {
                after: retry_after,
                reason: what(),
            },
            _ => Outcome::Rejected { reason: what() },
        }
    }
}

async fn grpc<R: prost::Message + Default + Send + 'static>(
    channel: tonic::transport::Channel,
    metadata: &tonic::metadata::MetadataMap,
    service: Service,
    body: Vec<u8>,
    rejected: fn(&R) -> u64,
) -> Outcome {
    let mut grpc = tonic::client::Grpc::new(channel);
    if let Err(e) = grpc.ready().await {
        return Outcome::Retry {
            after: None,
            reason: chain(&e),
        };
    }
    let mut request = tonic::Request::new(body);
    *request.metadata_mut() = metadata.clone();
    let path = http::uri::PathAndQuery::from_static(service.grpc_path);
    match grpc.unary(request, path, RawCodec::<R>(PhantomData)).await {
        Ok(response) => Outcome::Accepted {
            rejected: rejected(response.get_ref()),
        },
        Err(status) => classify(&status),
    }
}

/// gRPC status codes as the OTLP specification classifies them.
fn classify(status: &tonic::Status) -> Outcome {
    use tonic::Code;
    let after = status
        .get_details_retry_info()
        .and_then(|i| i.retry_delay)
        .map(|d| d.min(RETRY_AFTER_MAX));
    let reason = status_text(status);
    match status.code() {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss => Outcome::Retry { after, reason },
        Code::ResourceExhausted if after.is_some() => Outcome::Retry { after, reason },
        // Without RetryInfo: the message is larger than the server takes.
        Code::ResourceExhausted => Outcome::TooLarge { reason },
        _ => Outcome::Rejected { reason },
    }
}

/// A gRPC status as a person reads it: the code, the message, then what caused it.
fn status_text(status: &tonic::Status) -> String {
    let out = format!("gRPC {:?}: {}", status.code(), status.message());
    with_sources(out, std::error::Error::source(status))
}

/// `Retry-After`: seconds, or an HTTP date; capped at [`RETRY_AFTER_MAX`].
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    let wait = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    };
    Some(wait.min(RETRY_AFTER_MAX))
}

/// An error and its sources, joined (a TLS error's certificate problem is a source).
pub fn chain(e: &dyn std::error::Error) -> String {
    with_sources(e.to_string(), e.source())
}

/// `out`, then each error of the chain from `source` that it does not say already.
fn with_sources(mut out: String, mut source: Option<&dyn std::error::Error>) -> String {
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// The request goes out as the bytes it was encoded to; the response is decoded with prost.
struct RawCodec<R>(PhantomData<R>);

struct RawEncoder;

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

struct ProstDecoder<R>(PhantomData<R>);

impl<R: prost::Message + Default> Decoder for ProstDecoder<R> {
    type Item = R;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<R>, tonic::Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        R::decode(bytes)
            .map(Some)
            .map_err(|e| tonic::Status::internal(format!("decoding the response: {e}")))
    }
}

impl<R: prost::Message + Default + Send + 'static> Codec for RawCodec<R> {
    type Encode = Vec<u8>;
    type Decode = R;
    type Encoder = RawEncoder;
    type Decoder = ProstDecoder<R>;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> ProstDecoder<R> {
        ProstDecoder(PhantomData)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_seconds_or_as_a_date_capped() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("86400"), Some(RETRY_AFTER_MAX));
        let later = std::time::SystemTime::now() + Duration::from_secs(30);
        let wait = parse_retry_after(&httpdate::fmt_http_date(later)).unwrap();
        assert!((28..=30).contains(&wait.as_secs()), "{wait:?}");
        assert_eq!(parse_retry_after("yesterday"), None);
    }

    #[test]
    fn grpc_codes_as_the_spec_classifies_them() {
        use tonic::{Code, Status};
        let retry = |s: &Status| matches!(classify(s), Outcome::Retry { .. });
        assert!(retry(&Status::unavailable("down")));
        assert!(retry(&Status::deadline_exceeded("slow")));
        assert!(matches!(
            classify(&Status::resource_exhausted("message larger than max")),
            Outcome::TooLarge { .. }
        ));
        let with_info = Status::with_error_details(
            Code::ResourceExhausted,
            "throttled",
            tonic_types::ErrorDetails::with_retry_info(Some(Duration::from_secs(3))),
        );
        assert_eq!(
            classify(&with_info),
            Outcome::Retry {
                after: Some(Duration::from_secs(3)),
                reason: "gRPC ResourceExhausted: throttled".into()
            }
        );
        assert!(matches!(
            classify(&Status::invalid_argument("bad")),
            Outcome::Rejected { .. }
        ));
        assert!(matches!(
            classify(&Status::unauthenticated("who")),
            Outcome::Rejected { .. }
        ));
    }
}
