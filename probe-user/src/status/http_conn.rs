//! The endpoint's connections, bounded: at most `max` open at once (at the cap the connection
//! idle the longest is closed, so a new kubelet probe or scrape is always served), each closed
//! after `idle` without a byte in either direction, and a request head must arrive within
//! `header` (hyper's header read timeout: a client that sends a byte now and then cannot hold
//! a connection). Accept errors (EMFILE) back off instead of ending the server.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{Extension, Router, extract::ConnectInfo};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{Notify, watch},
};

/// The limits of the endpoint's connections.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max: usize,
    pub idle: Duration,
    pub header: Duration,
}

/// What the connection limits did, for /metrics.
#[derive(Clone, Default)]
pub struct ConnMetrics {
    pub open: Gauge,
    pub closed_idle: Counter,
    pub evicted: Counter,
}

/// One open connection: when it last moved a byte (ms since the server started), and how to
/// close it.
struct Entry {
    active_ms: Arc<AtomicU64>,
    close: Arc<Notify>,
}

#[derive(Default)]
struct Registry {
    next: u64,
    open: HashMap<u64, Entry>,
}

/// A stream that notes the time of its last read or write.
struct Tracked {
    inner: TcpStream,
    active_ms: Arc<AtomicU64>,
    epoch: Instant,
}

impl Tracked {
    fn touch(&self) {
        self.active_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Accepts and serves connections until `stop`; then closes every open one.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    metrics: ConnMetrics,
    mut stop: watch::Receiver<bool>,
) {
    let registry = Arc::new(Mutex::new(Registry::default()));
    let epoch = Instant::now();
    let mut accept_failures = 0u32;
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => {
                accept_failures = 0;
                a
            }
            Err(e) => {
                // Out of descriptors (EMFILE/ENFILE) or a connection reset before accept: the
                // server goes on after a pause, whatever the cause.
                accept_failures += 1;
                if accept_failures == 1 {
                    tracing::warn!("http: accepting a connection: {e}; retrying");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let entry = Entry {
            active_ms: Arc::new(AtomicU64::new(epoch.elapsed().as_millis() as u64)),
            close: Arc::new(Notify::new()),
        };
        let (id, active_ms, close) = {
            let mut r = registry.lock().unwrap_or_else(|e| e.into_inner());
            // Out of the registry at once: the next accept picks another one.
            if r.open.len() >= limits.max
                && let Some(oldest) = r
                    .open
                    .iter()
                    .min_by_key(|(_, e)| e.active_ms.load(Ordering::Relaxed))
                    .map(|(id, _)| *id)
                && let Some(evicted) = r.open.remove(&oldest)
            {
                evicted.close.notify_one();
            }
            r.next += 1;
            let id = r.next;
            let handles = (id, entry.active_ms.clone(), entry.close.clone());
            r.open.insert(id, entry);
            handles
        };
        metrics.open.inc();
        let io = Tracked {
            inner: stream,
            active_ms: active_ms.clone(),
            epoch,
        };
        let service = router.clone().layer(Extension(ConnectInfo(peer)));
        let registry = registry.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            match connection(io, service, limits, &active_ms, epoch, &close).await {
                Closed::Idle => metrics.closed_idle.inc(),
                Closed::Evicted => metrics.evicted.inc(),
                Closed::Ended => 0,
            };
            metrics.open.dec();
            registry
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .open
                .remove(&id);
        });
    }
    for entry in registry
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .open
        .values()
    {
        entry.close.notify_one();
    }
}

/// How a connection ended.
enum Closed {
    /// The client closed it, or asked for it to be closed (`Connection: close`).
    Ended,
    /// No byte for `limits.idle`, or no whole request head within `limits.header`.
    Idle,
    /// Closed at the cap, or at the server's stop.
    Evicted,
}

/// Serves one connection until it ends, is told to close, or stays idle for `limits.idle`.
async fn connection(
    io: Tracked,
    service: Router,
    limits: Limits,
    active_ms: &AtomicU64,
    epoch: Instant,
    close: &Notify,
) -> Closed {
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header)
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
    let mut conn = std::pin::pin!(conn);
    let check = (limits.idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    loop {
        tokio::select! {
            ended = conn.as_mut() => {
                return match ended {
                    Err(e) if e.is_timeout() => Closed::Idle,
                    _ => Closed::Ended,
                };
            }
            () = close.notified() => return Closed::Evicted,
            () = tokio::time::sleep(check) => {
                let last = Duration::from_millis(active_ms.load(Ordering::Relaxed));
                if epoch.elapsed().saturating_sub(last) >= limits.idle {
                    return Closed::Idle;
                }
            }
        }
    }
}
