//! Serving one downstream HTTP/1.1 connection with hyper, behind the head guard.

use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use super::guard::GuardedIo;
use crate::listeners::Phase;
use crate::state::ConnCtx;

/// A client gets this long to send a complete request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The hyper server settings for proxied connections.
pub fn builder() -> http1::Builder {
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true)
        // A refused head ends the stream early (see guard.rs); with half-close hyper still finishes
        // and answers the requests before it.
        .half_close(true)
        // Heads and small bodies are copied into one buffer and written with one `write`: cheaper
        // than queuing them for `writev` (hyper's default on sockets).
        .writev(false)
        .max_headers(super::head::MAX_HEADERS);
    b
}

/// Serves `stream` (a plain TCP connection, or a terminated TLS one for https listeners).
pub async fn serve<S>(stream: S, conn: Arc<ConnCtx>, builder: &http1::Builder, mut phase: watch::Receiver<Phase>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let metrics_conn = conn.clone();
    let io = GuardedIo::new(stream, move |reject| {
        metrics_conn.shared.metrics.unrouted.record(reject.status());
    });
    let down = Arc::new(super::proxy::Downstream::new(conn, phase.clone()));
    let svc = service_fn(move |req| super::proxy::handle(req, down.clone()));
    // Upgrades (WebSockets) hand the connection over to a tunnel task (see proxy.rs).
    let served = builder.serve_connection(TokioIo::new(io), svc).with_upgrades();
    tokio::pin!(served);
    let mut draining = false;
    if *phase.borrow_and_update() != Phase::Serving {
        draining = true;
        served.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            res = served.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            changed = phase.changed() => {
                // A dropped sender means the listener is gone for good: same as abort.
                let now = if changed.is_ok() { *phase.borrow_and_update() } else { Phase::Abort };
                match now {
                    Phase::Serving => {}
                    Phase::Draining if !draining => {
                        // Finish the request in flight, take no new one.
                        draining = true;
                        served.as_mut().graceful_shutdown();
                    }
                    Phase::Draining => {}
                    Phase::Abort => return,
                }
            }
        }
    }
}
