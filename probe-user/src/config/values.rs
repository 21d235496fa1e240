//! Value parsers of the flags, with their ranges, and the types that keep secrets (the OTLP
//! endpoint's userinfo and query, header values) off every surface: their `Debug` and
//! `Display` are redacted, and a value that fails to parse is never echoed in the error.

use std::{ffi::OsStr, fmt, time::Duration};

use clap::{Arg, Command, builder::TypedValueParser, error::ErrorKind};

/// What stands where a secret was.
pub const REDACTED: &str = "<redacted>";

/// Why a flag's value is refused (clap prefixes the flag; a secret value is never echoed).
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    #[error("not a URL ({0}); expected http://HOST:PORT or https://HOST:PORT")]
    NotUrl(#[from] http::uri::InvalidUri),
    #[error("scheme {0:?} is not supported: use http:// or https://")]
    Scheme(String),
    #[error("no scheme: expected http://HOST:PORT or https://HOST:PORT")]
    NoScheme,
    #[error("no host: expected http://HOST:PORT or https://HOST:PORT")]
    NoHost,
    #[error("an entry is not KEY=VALUE (KEY=VALUE,KEY=VALUE)")]
    HeaderNotKeyValue,
    #[error("an entry's KEY is not a valid header name")]
    HeaderName,
    #[error("an entry's VALUE has characters an HTTP header cannot carry")]
    HeaderValue,
    #[error("{0} (examples: 5s, 500ms)")]
    Duration(#[from] humantime::DurationError),
    #[error("must be between {} and {}", humantime::format_duration(*.min), humantime::format_duration(*.max))]
    Range { min: Duration, max: Duration },
    #[error("{0}")]
    Integer(#[from] std::num::ParseIntError),
    #[error("must be a power of two from 4096 to {RINGBUF_MAX} (256 MiB)")]
    RingbufSize,
    #[error("{0} (examples: info, debug, probe=debug,kube=warn)")]
    LogFilter(#[from] tracing_subscriber::filter::ParseError),
    #[error("{0:?} is not KEY=VALUE")]
    KeyValue(String),
    #[error("{0} (expected HOST:PORT such as 0.0.0.0:9464, or none)")]
    SocketAddr(#[from] std::net::AddrParseError),
    #[error(transparent)]
    Signals(#[from] crate::model::signals::SignalListError),
    #[error(transparent)]
    Runtimes(#[from] crate::runtimes::RuntimePatternError),
    #[error(transparent)]
    Hook(#[from] crate::loader::hooks::PinError),
    #[error("empty: expected {0}")]
    Empty(&'static str),
}

/// `--otlp-endpoint`: an `http://` or `https://` URL. Shown without userinfo and query.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint(String);

impl Endpoint {
    /// The URL as given, for the exporter only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Scheme, host, port and path: what logs, status and errors may show.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// A URL with its userinfo and query replaced by [`REDACTED`].
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let (rest, query) = match rest.split_once('?') {
        Some((r, _)) => (r, format!("?{REDACTED}")),
        None => (rest, String::new()),
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host = match authority.rsplit_once('@') {
        Some((_, host)) => format!("{REDACTED}@{host}"),
        None => authority.to_owned(),
    };
    let sep = if scheme.is_empty() { "" } else { "://" };
    format!("{scheme}{sep}{host}{path}{query}")
}

pub fn parse_endpoint(s: &str) -> Result<Endpoint, ValueError> {
    let uri: http::Uri = s.parse()?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => return Err(ValueError::Scheme(other.to_owned())),
        None => return Err(ValueError::NoScheme),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(ValueError::NoHost);
    }
    Ok(Endpoint(s.to_owned()))
}

/// One `--otlp-headers` entry. The value is never shown.
#[derive(Clone, PartialEq, Eq)]
pub struct Header {
    pub key: String,
    value: String,
}

impl Header {
    pub fn value(&self) -> &str {
        &self.value
    }
}

impl fmt::Debug for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={REDACTED}", self.key)
    }
}

pub fn parse_header(s: &str) -> Result<Header, ValueError> {
    let (key, value) = s.split_once('=').ok_or(ValueError::HeaderNotKeyValue)?;
    let key = key.trim().to_ascii_lowercase();
    let value = value.trim();
    http::HeaderName::from_bytes(key.as_bytes()).map_err(|_| ValueError::HeaderName)?;
    http::HeaderValue::from_str(value).map_err(|_| ValueError::HeaderValue)?;
    Ok(Header {
        key,
        value: value.to_owned(),
    })
}

/// Runs a parser of values that may hold a secret: its error names the flag and its
/// environment variable and says why, never what the value was.
#[derive(Clone)]
pub struct Secretive<T>(pub fn(&str) -> Result<T, ValueError>);

impl<T: Clone + Send + Sync + 'static> TypedValueParser for Secretive<T> {
    type Value = T;

    fn parse_ref(&self, cmd: &Command, arg: Option<&Arg>, value: &OsStr) -> Result<T, clap::Error> {
        let mut name = arg
            .and_then(Arg::get_long)
            .map_or_else(|| "a value".to_owned(), |l| format!("--{l}"));
        if let Some(env) = arg.and_then(Arg::get_env) {
            name = format!("{name} / {}", env.to_string_lossy());
        }
        let fail = |why: String| {
            clap::Error::raw(
                ErrorKind::ValueValidation,
                format!("invalid value for {name} (not shown: it may hold a secret): {why}\n"),
            )
            .with_cmd(cmd)
        };
        let text = value.to_str().ok_or_else(|| fail("not UTF-8".into()))?;
        (self.0)(text).map_err(|e| fail(e.to_string()))
    }
}

/// A duration in `[min, max]` (humantime syntax: 5s, 500ms, 1m).
pub fn duration_between(
    min: Duration,
    max: Duration,
) -> impl Fn(&str) -> Result<Duration, ValueError> + Clone + Send + Sync + 'static {
    move |s| check_range(humantime::parse_duration(s)?, min, max)
}

fn check_range(d: Duration, min: Duration, max: Duration) -> Result<Duration, ValueError> {
    if d < min || d > max {
        return Err(ValueError::Range { min, max });
    }
    Ok(d)
}

/// `--otlp-timeout`: milliseconds (OTEL_EXPORTER_OTLP_TIMEOUT's unit) or a duration.
pub fn parse_otlp_timeout(s: &str) -> Result<Duration, ValueError> {
    let (min, max) = OTLP_TIMEOUT_RANGE;
    match s.parse::<u64>() {
        Ok(ms) => check_range(Duration::from_millis(ms), min, max),
        Err(_) => duration_between(min, max)(s),
    }
}

pub const OTLP_TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(300));

/// The largest `--ringbuf-bytes`: 256 MiB of locked kernel memory per node is already much.
pub const RINGBUF_MAX: u32 = 256 << 20;

pub fn parse_ringbuf_bytes(s: &str) -> Result<u32, ValueError> {
    let n: u32 = s.parse()?;
    if !n.is_power_of_two() || !(4096..=RINGBUF_MAX).contains(&n) {
        return Err(ValueError::RingbufSize);
    }
    Ok(n)
}

/// The agent's log filter from `--log-level`. kube's client logs an ERROR per failed request
/// (several a second while an API server is away); the agent says that itself, once, so those
/// lines are off unless the filter names `kube_client`.
pub fn env_filter(spec: &str) -> tracing_subscriber::EnvFilter {
    let spec = if spec.contains("kube_client") {
        spec.to_owned()
    } else {
        format!("{spec},kube_client=off")
    };
    tracing_subscriber::EnvFilter::try_new(spec)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube_client=off"))
}

/// `--log-level`: a tracing filter (`info`, `probe=debug,kube=warn`).
pub fn parse_log_filter(s: &str) -> Result<String, ValueError> {
    tracing_subscriber::EnvFilter::builder().parse(s)?;
    Ok(s.to_owned())
}

pub fn parse_key_value(s: &str) -> Result<(String, String), ValueError> {
    s.split_once('=')
        .filter(|(k, _)| !k.trim().is_empty())
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .ok_or_else(|| ValueError::KeyValue(s.to_owned()))
}

/// `--verifier-log`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VerifierLog {
    /// The verifier's reason and statistics.
    Stats,
    /// Also each instruction it walked (large: for porting a program to a new kernel).
    Verbose,
}

impl super::Color {
    /// Whether the terminal output is coloured.
    pub fn enabled(self) -> bool {
        match self {
            Self::Always => true,
            Self::Never => false,
            Self::Auto => {
                std::io::IsTerminal::is_terminal(&std::io::stdout())
                    && std::env::var_os("NO_COLOR").is_none()
            }
        }
    }
}

/// `--hooks` values: CAPABILITY=KIND against the hook table.
pub fn hook_pin(s: &str) -> Result<crate::loader::hooks::HookPin, ValueError> {
    Ok(crate::loader::hooks::HookPin::parse(
        s,
        crate::loader::hooks::CAPABILITIES,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_userinfo_and_query() {
        assert_eq!(
            redact_url("https://user:SECRET@collector:4317/otlp?token=SECRET"),
            "https://<redacted>@collector:4317/otlp?<redacted>"
        );
        assert_eq!(redact_url("http://[::1]:4317"), "http://[::1]:4317");
        let e = parse_endpoint("http://u:SECRET@h:1").unwrap();
        assert!(!format!("{e:?} {e}").contains("SECRET"));
        assert_eq!(e.expose(), "http://u:SECRET@h:1");
    }

    #[test]
    fn endpoints_are_http_urls() {
        for bad in ["not a url", "ftp://h:21", "localhost:4317", "http://"] {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }
        assert!(parse_endpoint("https://otel.example:4318").is_ok());
    }

    #[test]
    fn headers_keep_their_values_hidden() {
        let h = parse_header("Authorization=Bearer SECRET").unwrap();
        assert_eq!(
            (h.key.as_str(), h.value()),
            ("authorization", "Bearer SECRET")
        );
        assert_eq!(format!("{h:?}"), "authorization=<redacted>");
        for bad in [
            "authorization: Bearer SECRET",
            "bad key=SECRET",
            "k=SECRET\u{1}",
        ] {
            let err = parse_header(bad).unwrap_err().to_string();
            assert!(!err.contains("SECRET"), "{err}");
        }
    }

    #[test]
    fn ranges() {
        let p = duration_between(Duration::from_millis(100), Duration::from_secs(3600));
        assert!(p("1ns").is_err());
        assert!(p("2h").is_err());
        assert_eq!(p("5s").ok(), Some(Duration::from_secs(5)));
        assert!(parse_ringbuf_bytes("2147483648").is_err());
        assert!(parse_ringbuf_bytes("268435456").is_ok());
        assert!(parse_otlp_timeout("0").is_err());
        assert_eq!(
            parse_otlp_timeout("2500").ok(),
            Some(Duration::from_millis(2500))
        );
        assert!(parse_log_filter("probe=[[[").is_err());
        assert!(parse_log_filter("info,kube=warn").is_ok());
    }
}
