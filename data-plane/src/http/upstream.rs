//! The upstream side: keep-alive HTTP/1.1 connections to endpoints, pooled per worker thread.
//!
//! Each worker thread keeps its own idle connections per endpoint address, so a checkout or a
//! return takes no lock and spawns nothing (hyper_util's legacy client locks a shared pool twice
//! and spawns a task per request to return the connection). A connection goes back to the pool of
//! the thread that finishes its response body; a connection closed by the endpoint while idle is
//! noticed by its hyper task and skipped at checkout. A request that could not be written on a
//! pooled connection (it closed meanwhile) is sent again on another one, as hyper's client does.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::body::ProxyBody;
use crate::tls::upstream::UpstreamTlsConfig;

/// How long to wait for a TCP connection to an endpoint (the route timeout may cut it shorter).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle pooled connections are not reused after this long.
const POOL_IDLE: Duration = Duration::from_secs(90);
/// Idle connections kept per endpoint and worker thread; more are closed when returned.
const MAX_IDLE_PER_ENDPOINT: usize = 256;
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect: {0}")]
    Connect(#[source] io::Error),
    #[error("handshake: {0}")]
    Handshake(#[source] hyper::Error),
    #[error(transparent)]
    Request(hyper::Error),
}

impl UpstreamError {
    /// No connection could be made (as opposed to one that failed during the exchange).
    pub fn is_connect(&self) -> bool {
        matches!(self, UpstreamError::Connect(_) | UpstreamError::Handshake(_))
    }
}

/// Opens and reuses upstream connections. Cheap: the pools live in thread-locals.
#[derive(Debug, Default)]
pub struct UpstreamClient {
    _private: (),
}

pub fn client() -> UpstreamClient {
    UpstreamClient::default()
}

/// A connection lent to one exchange; [`release`](Self::release) it once the response is over.
pub struct Lease {
    addr: PoolKey,
    sender: SendRequest<ProxyBody>,
}

impl Lease {
    /// Returns the connection to this thread's pool (the response has been read to its end).
    pub fn release(self) {
        if self.sender.is_closed() {
            return;
        }
        POOL.with(|pool| {
            let mut pool = pool.borrow_mut();
            let idle = pool.entry(self.addr).or_default();
            let now = Instant::now();
            // The oldest are at the front: drop the ones that have expired or would overflow.
            let expired = idle.iter().take_while(|c| now.duration_since(c.since) > POOL_IDLE).count();
            let overflow = (idle.len() + 1).saturating_sub(MAX_IDLE_PER_ENDPOINT);
            let drop_front = expired.max(overflow);
            if drop_front > 0 {
                idle.drain(..drop_front);
            }
            idle.push(Idle { sender: self.sender, since: now });
        });
    }
}

struct Idle {
    sender: SendRequest<ProxyBody>,
    since: Instant,
}

thread_local! {
    static POOL: RefCell<HashMap<PoolKey, Vec<Idle>>> = RefCell::new(HashMap::new());
}

/// The most recently used live idle connection to `addr`, if any.
fn checkout(addr: PoolKey) -> Option<SendRequest<ProxyBody>> {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let idle = pool.get_mut(&addr)?;
        while let Some(c) = idle.pop() {
            if c.sender.is_closed() || c.since.elapsed() > POOL_IDLE {
                continue;
            }
            return Some(c.sender);
        }
        None
    })
}

impl UpstreamClient {
    /// Sends `req` (origin-form URI, `Host` set) to `endpoint` on a pooled or new connection,
    /// over TLS when the cluster has upstream TLS settings (`tls`).
    pub async fn request(
        &self,
        endpoint: SocketAddr,
        tls: Option<&UpstreamTlsConfig>,
        mut req: Request<ProxyBody>,
    ) -> Result<(Response<Incoming>, Lease), UpstreamError> {
        let addr: PoolKey = (endpoint, tls.map_or(0, UpstreamTlsConfig::id));
        // Bounded: every turn takes one connection out of the pool.
        while let Some(mut sender) = checkout(addr) {
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, Lease { addr, sender })),
                Err(mut e) => match e.take_message() {
                    // Never written: the connection closed under us; try another.
                    Some(r) => req = r,
                    None => return Err(UpstreamError::Request(e.into_error())),
                },
            }
        }
        let mut sender = connect(endpoint, tls).await?;
        match sender.send_request(req).await {
            Ok(resp) => Ok((resp, Lease { addr, sender })),
            Err(e) => Err(UpstreamError::Request(e)),
        }
    }
}

/// Pooled connections per endpoint and TLS settings (0: plaintext), see `UpstreamTlsConfig::id`.
type PoolKey = (SocketAddr, u64);

async fn connect(addr: SocketAddr, tls: Option<&UpstreamTlsConfig>) -> Result<SendRequest<ProxyBody>, UpstreamError> {
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(r) => r.map_err(UpstreamError::Connect)?,
        Err(_) => return Err(UpstreamError::Connect(io::ErrorKind::TimedOut.into())),
    };
    let _ = stream.set_nodelay(true);
    let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE));
    if let Some(tls) = tls {
        let stream = tls.connect(addr, stream).await.map_err(UpstreamError::Connect)?;
        return handshake(addr, stream).await;
    }
    handshake(addr, stream).await
}

async fn handshake<S>(addr: SocketAddr, stream: S) -> Result<SendRequest<ProxyBody>, UpstreamError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) =
        http1::Builder::new().writev(false).handshake(TokioIo::new(stream)).await.map_err(UpstreamError::Handshake)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(%addr, error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    use tokio::net::TcpListener;

    use super::*;

    /// An endpoint answering `ok` that counts its connections; with `close`, every answer closes
    /// its connection.
    async fn endpoint(close: bool) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let svc =
                        service_fn(|_req| async { Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from("ok")))) });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(!close)
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (addr, accepted)
    }

    /// One exchange, its body read to the end through the proxy's body type (which returns the
    /// connection to the pool).
    async fn get(addr: SocketAddr) -> Bytes {
        let req = Request::builder().uri("/").header("host", "x").body(ProxyBody::Empty).unwrap();
        let (resp, lease) = client().request(addr, None, req).await.unwrap();
        let (_, incoming) = resp.into_parts();
        let body = ProxyBody::Upstream { body: incoming, endpoint: None, lease: Some(lease) };
        body.collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn pooled_connections_are_reused() {
        let (addr, accepted) = endpoint(false).await;
        for _ in 0..5 {
            assert_eq!(get(addr).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_closed_while_idle_is_replaced() {
        let (addr, accepted) = endpoint(true).await;
        for _ in 0..3 {
            assert_eq!(get(addr).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }
}
