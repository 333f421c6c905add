//! The REST listener's HTTP server: hyper (HTTP/1.1 and HTTP/2) serving
//! the router, with the limits a server facing the network needs and
//! `axum::serve` does not set:
//!
//! - **Header timeout**: a connection that sends nothing for
//!   [`HttpLimits::header_timeout`] after it opens, or whose request
//!   headers have not all arrived by then (counted from the start of the
//!   request, or from the previous response: an idle keep-alive
//!   connection is closed after that long too, as nginx's
//!   `keepalive_timeout` does), is closed. Slowloris-style clients no
//!   longer hold connections open for good. (A body that stalls is the
//!   handler's business: `rest::put_key` gives it the same time.)
//! - **Connection cap**: at most [`HttpLimits::max_connections`] at once;
//!   one more is answered `503` (problem+json, `too_many_connections`,
//!   `Retry-After`) and closed, never left waiting in the accept queue.
//! - **Header size**: hyper's own limits (which answer `431` with an empty
//!   body) sit far above ours, so that `rest` answers a request with too
//!   many or too large headers itself, with a problem document.
//!
//! A planned stop (`stopped`) lets each connection finish the request it
//! is in and closes it (HTTP/2: GOAWAY), then returns once all are gone.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::serve::Listener;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{Semaphore, watch};

/// Header limits hyper enforces (far above `rest`'s own, which answer
/// with problem documents): past these, hyper answers `431` itself.
const HYPER_MAX_HEADERS: usize = 1_000;
const HYPER_MAX_BUF_BYTES: usize = 1 << 20;

/// A REST listener's limits (`ringkv server --max-connections
/// --client-timeout`).
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    pub header_timeout: Duration,
    pub max_connections: usize,
}

/// Serves `app` on `listener` until `stopped` turns true, then lets the
/// open connections finish (see the module docs).
pub async fn serve<L>(
    mut listener: L,
    app: Router,
    limits: HttpLimits,
    mut stopped: watch::Receiver<bool>,
) -> Result<(), String>
where
    L: Listener,
    L::Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let open = Arc::new(Semaphore::new(limits.max_connections));
    // Connections hold a receiver each; `closing` tells them to finish.
    let (closing, connections) = watch::channel(false);
    loop {
        let (io, _remote) = tokio::select! {
            biased;
            _ = async { drop(stopped.wait_for(|s| *s).await) } => break,
            accepted = listener.accept() => accepted,
        };
        let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
            tokio::spawn(refuse(io, limits.max_connections));
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        let mut closing = connections.clone();
        tokio::spawn(async move {
            let mut builder = Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_headers(HYPER_MAX_HEADERS)
                .max_buf_size(HYPER_MAX_BUF_BYTES);
            builder
                .http2()
                .timer(TokioTimer::new())
                .keep_alive_interval(limits.header_timeout)
                .keep_alive_timeout(limits.header_timeout);
            let io = FirstByteDeadline::new(io, limits.header_timeout);
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
            let mut conn = std::pin::pin!(conn);
            let mut finishing = false;
            loop {
                tokio::select! {
                    result = conn.as_mut() => {
                        if let Err(e) = result {
                            tracing::debug!("REST connection ended: {e}");
                        }
                        break;
                    }
                    _ = async { drop(closing.wait_for(|c| *c).await) }, if !finishing => {
                        finishing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
            drop(closing);
            drop(permit);
        });
    }
    let _ = closing.send(true);
    drop(connections);
    closing.closed().await;
    Ok(())
}

/// Answers a connection over the cap, in HTTP/1.1 (what nearly every
/// client opens with), and closes it.
async fn refuse<Io: AsyncWrite + Unpin>(mut io: Io, max: usize) {
    let body = serde_json::json!({
        "type": "https://ringkv.dev/problems/too_many_connections",
        "title": "Service Unavailable",
        "status": 503,
        "detail": format!("this node serves at most {max} REST connections at once (--max-connections); retry, or use another node"),
        "code": "too_many_connections",
    })
    .to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\nretry-after: {}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        super::errors::RETRY_AFTER_SECS,
        body.len()
    );
    let write = async {
        io.write_all(response.as_bytes()).await?;
        io.shutdown().await
    };
    // A client that does not read its refusal gets no more of our time.
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}

/// A connection whose first byte must arrive within a deadline: hyper's
/// header timeout starts only once it knows the protocol (HTTP/1.1 or
/// HTTP/2), which takes a first byte; a client that sends none would hold
/// its connection (and a place under the cap) for good.
struct FirstByteDeadline<Io> {
    io: Io,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<Io> FirstByteDeadline<Io> {
    fn new(io: Io, within: Duration) -> Self {
        FirstByteDeadline {
            io,
            deadline: Some(Box::pin(tokio::time::sleep(within))),
        }
    }
}

impl<Io: AsyncRead + Unpin> AsyncRead for FirstByteDeadline<Io> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.io).poll_read(cx, buf);
        if self.deadline.is_some() {
            if read.is_ready() {
                if buf.filled().len() > before {
                    self.deadline = None;
                }
            } else if let Some(deadline) = self.deadline.as_mut()
                && deadline.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client sent nothing",
                )));
            }
        }
        read
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for FirstByteDeadline<Io> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
