//! The Kubernetes client, with a bound on what a watch stream may make the agent hold: kube's
//! line decoder buffers a watch event until its newline, without a limit, so a stream that
//! never ends a line (a broken proxy, a misbehaving server) would grow the agent until it is
//! killed. Every watch response body here fails once a line passes [`WATCH_LINE_MAX`] bytes;
//! the watch then retries with backoff like after any other error.

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use http_body::{Body, Frame};
use tower::{Layer, Service};

/// The longest watch event line: three times etcd's default limit on an object (1.5 MiB).
pub const WATCH_LINE_MAX: usize = 4 << 20;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Builds the client from a configuration, with watch lines bounded.
pub fn build(config: kube::Config) -> Result<kube::Client, kube::Error> {
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&LineLimit(WATCH_LINE_MAX))
        .build())
}

/// The layer: watch responses get a [`LimitedLines`] body.
#[derive(Clone, Copy)]
pub struct LineLimit(pub usize);

impl<S> Layer<S> for LineLimit {
    type Service = LineLimitService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        LineLimitService { inner, max: self.0 }
    }
}

#[derive(Clone)]
pub struct LineLimitService<S> {
    inner: S,
    max: usize,
}

impl<S, ReqBody, B> Service<http::Request<ReqBody>> for LineLimitService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<B>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<LimitedLines<B>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let watch = request
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
        let max = watch.then_some(self.max);
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|inner| LimitedLines { inner, max, run: 0 }))
        })
    }
}

/// A response body that fails when more than `max` bytes arrive without a newline (watch
/// responses only; `max` is None for the others).
pub struct LimitedLines<B> {
    inner: B,
    max: Option<usize>,
    /// Bytes since the last newline.
    run: usize,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "a watch event line of more than {0} bytes (no object is that large): the stream is dropped and the watch retried"
)]
pub struct LineTooLong(usize);

impl<B> LimitedLines<B> {
    /// Counts `data`; an error once the current line is over the limit.
    fn count(&mut self, data: &[u8]) -> Result<(), LineTooLong> {
        let Some(max) = self.max else {
            return Ok(());
        };
        self.run = match data.iter().rposition(|&b| b == b'\n') {
            Some(at) => data.len() - at - 1,
            None => self.run + data.len(),
        };
        if self.run > max {
            return Err(LineTooLong(max));
        }
        Ok(())
    }
}

impl<B> Body for LimitedLines<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref()
                    && let Err(e) = this.count(data)
                {
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(e.into()))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_over_the_limit_fails_and_newlines_reset_the_count() {
        let mut b = LimitedLines {
            inner: (),
            max: Some(10),
            run: 0,
        };
        assert!(b.count(b"12345").is_ok());
        assert!(b.count(b"678\n12").is_ok(), "a newline starts a new line");
        assert_eq!(b.run, 2);
        assert!(b.count(b"34567890").is_ok(), "exactly the limit");
        assert!(b.count(b"x").is_err());
        let mut list = LimitedLines {
            inner: (),
            max: None,
            run: 0,
        };
        assert!(list.count(&[b'x'; 100]).is_ok(), "lists are not lines");
    }
}
