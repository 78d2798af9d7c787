//! The HTTP listeners: HTTP/1.1 with a deadline for each request's head, a deadline for its body,
//! and a cap on open connections, so slow or idle clients cannot hold the service.
//!
//! hyper starts the head deadline when a connection opens and again whenever it turns idle after
//! a response, so the same deadline closes half-open connections, slow heads and idle keep-alive
//! connections. Connections past the cap wait in the kernel's accept queue until one closes.

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body::Frame;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::config::Config;
use crate::error::AppError;

/// What each listener allows a client.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// From opening a connection, or from its last response, until a request's head is complete.
    pub header_timeout: Duration,
    /// From a request's head until its whole body has arrived.
    pub body_timeout: Duration,
    pub max_connections: usize,
}

impl Limits {
    pub fn of(config: &Config) -> Self {
        Self {
            header_timeout: Duration::from_millis(config.http_header_timeout_ms),
            body_timeout: Duration::from_millis(config.http_body_timeout_ms),
            max_connections: config.http_max_connections,
        }
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then lets open requests finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let router = router.layer(axum::middleware::from_fn_with_state(limits.body_timeout, body_deadline));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    // Each connection holds a receiver: the sender sees them all gone when the last one ends.
    let (stopping, stop_seen) = watch::channel(false);
    let mut shutdown = pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = accept(&listener, &permits) => accepted,
            () = &mut shutdown => break,
        };
        let (stream, permit) = accepted;
        let _ = stream.set_nodelay(true);
        let connection = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(router.clone()));
        let mut stop = stop_seen.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut connection = pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                _ = stop.wait_for(|stopping| *stopping) => {}
            }
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        });
    }
    drop(listener);
    stopping.send_replace(true);
    drop(stop_seen);
    stopping.closed().await;
    Ok(())
}

/// The next connection, once one of the `permits` is free.
async fn accept(
    listener: &TcpListener,
    permits: &Arc<Semaphore>,
) -> (tokio::net::TcpStream, tokio::sync::OwnedSemaphorePermit) {
    let permit = permits
        .clone()
        .acquire_owned()
        .await
        .expect("the semaphore is never closed");
    loop {
        match listener.accept().await {
            Ok((stream, _)) => return (stream, permit),
            Err(error) => {
                // Out of file descriptors, or a connection reset before we took it: wait, go on.
                tracing::warn!(%error, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Gives each request's body `timeout` to arrive; a body that is late is answered 408 and its
/// connection closed, whatever the handler made of the cut-off body.
async fn body_deadline(State(timeout): State<Duration>, request: Request, next: Next) -> Response {
    let expired = Arc::new(AtomicBool::new(false));
    let request = request.map(|body| {
        Body::new(DeadlineBody {
            inner: body,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            expired: expired.clone(),
        })
    });
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    if !expired.load(Ordering::Relaxed) {
        return response;
    }
    tracing::info!(
        path,
        timeout_ms = timeout.as_millis() as u64,
        "a request body was too slow; answered 408"
    );
    let mut response = AppError::BodyTimeout(timeout).into_response();
    response
        .headers_mut()
        .insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
    response
}

struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
    expired: Arc<AtomicBool>,
}

#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
struct BodyTimedOut;

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if !self.inner.is_end_stream() && self.deadline.as_mut().poll(cx).is_ready() {
            self.expired.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(BodyTimedOut.into())));
        }
        Pin::new(&mut self.inner).poll_frame(cx).map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
