//! The upstream side: keep-alive HTTP/1.1 connections to endpoints, pooled per worker thread.
//!
//! Each worker thread keeps its own idle connections per endpoint address, so a checkout or a
//! return takes no lock and spawns nothing (hyper_util's legacy client locks a shared pool twice
//! and spawns a task per request to return the connection). A connection goes back to the pool of
//! the thread that finishes its response body; a connection the endpoint closed while idle is
//! found at checkout (one read that would block tells it is still open) and skipped. A request
//! that could not be written on a pooled connection (it closed meanwhile) is sent again on another
//! one. The exchange itself is in `h1.rs` (HTTP/2: `h2.rs`).
//!
//! Clusters with a circuit breaker's `max_connections` are the exception: each of their
//! connections holds a permit of the cluster's breaker for its whole life, and their idle
//! connections sit in one pool shared by the threads (behind a mutex), so that a request waiting
//! for a permit can reuse or free any idle connection of the cluster rather than wait for one
//! idling on another thread. Such a connection finishing an exchange while requests wait goes
//! straight to a request waiting for its endpoint, or is closed (handing its permit to a request
//! waiting for another endpoint).

pub mod h1;
pub mod h2;
mod head;
#[cfg(test)]
mod tests_exchange;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use http::{Request, Response};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, OwnedSemaphorePermit};
use tokio_util::either::Either;

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use self::h1::{Conn, ExchangeError, ResponseBody, SendError, Stream};
use self::h2::H2Response;
use crate::fast_hash::FastMap;
use crate::http::codec::headers::PassedHead;
use crate::http::codec::outgoing::RequestOut;
use crate::http::codec::BoxError;
use crate::table::{Breaker, Overflow};
use crate::tls::upstream::UpstreamTlsConfig;

/// How long to wait for a TCP connection to an endpoint (the route timeout may cut it shorter).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle pooled connections are not reused after this long.
const POOL_IDLE: Duration = Duration::from_secs(90);
/// Idle connections kept per endpoint and worker thread; more are closed when returned.
const MAX_IDLE_PER_ENDPOINT: usize = 256;
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// An endpoint's response body, by the protocol spoken to it.
pub enum UpstreamBody {
    H1(ResponseBody),
    /// Boxed: rarer, and the HTTP/1.1 path's bodies stay as small as they were.
    H2(Box<H2Response>),
}

impl UpstreamBody {
    pub fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self {
            UpstreamBody::H1(b) => Pin::new(b).poll_frame(cx),
            UpstreamBody::H2(b) => b.poll_frame(cx),
        }
    }

    pub fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::H1(b) => b.is_end_stream(),
            UpstreamBody::H2(b) => b.body.is_end_stream(),
        }
    }

    pub fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::H1(b) => b.size_hint(),
            UpstreamBody::H2(b) => b.body.size_hint(),
        }
    }

    /// An HTTP/1.1 endpoint's header lines, taken out (to go into the response's map).
    pub fn take_passed_head(&mut self) -> Option<PassedHead> {
        match self {
            UpstreamBody::H1(b) => Some(b.take_passed_head()),
            UpstreamBody::H2(_) => None,
        }
    }

    /// An HTTP/1.1 endpoint's header lines, passed on as they came.
    pub fn passed_head(&self) -> Option<&PassedHead> {
        match self {
            UpstreamBody::H1(b) => Some(b.passed_head()),
            UpstreamBody::H2(_) => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection: TCP connect or the TLS handshake failed.
    #[error("connect: {0}")]
    Connect(#[source] io::Error),
    #[error(transparent)]
    Exchange(ExchangeError),
    /// The cluster's circuit breaker refused a connection (no room to wait for one).
    #[error("circuit breaker open: {}", .0.as_str())]
    Overflow(Overflow),
    /// An HTTP/2 endpoint refused the stream unprocessed (GOAWAY past it, REFUSED_STREAM): like a
    /// connect failure, it can be sent again whatever it is.
    #[error("stream refused: {0}")]
    Refused(#[source] ::h2::Error),
    /// The HTTP/2 exchange failed after the request went out.
    #[error("h2: {0}")]
    H2(#[source] ::h2::Error),
}

impl UpstreamError {
    /// No connection could be made (as opposed to one that failed during the exchange).
    pub fn is_connect(&self) -> bool {
        matches!(self, UpstreamError::Connect(_))
    }

    /// Nothing of the request was processed: it may go elsewhere even when not idempotent.
    pub fn is_unprocessed(&self) -> bool {
        matches!(self, UpstreamError::Connect(_) | UpstreamError::Refused(_))
    }
}

/// A failed exchange, with the request when none of it was sent (a connect failure, an overflow):
/// such a request can go to another endpoint whatever its body.
pub struct Failed {
    pub error: UpstreamError,
    pub unsent: Option<Request<RequestOut>>,
}

impl Failed {
    pub(super) fn unsent(error: UpstreamError, req: Request<RequestOut>) -> Failed {
        Failed { error, unsent: Some(req) }
    }

    fn sent(error: ExchangeError) -> Failed {
        Failed { error: UpstreamError::Exchange(error), unsent: None }
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

/// A connection lent to one exchange; the response body [`release`](Self::release)s it once the
/// response is over.
pub struct Lease {
    addr: PoolKey,
    /// Boxed: a lease travels inside every response (and its results and polls) by value, and a
    /// pointer moves cheaper than the connection; the box lives as long as the connection.
    pub(super) conn: Box<Conn>,
    /// Set for connections counted by a breaker's `max_connections` (see the module docs).
    limited: Option<Arc<Breaker>>,
}

impl Lease {
    /// Returns the connection to its pool (the response has been read to its end).
    pub fn release(self) {
        let now = Instant::now();
        match self.limited {
            Some(b) if b.has_waiters() => {
                let mut conn = self.conn;
                let mut waiting = WAITING.lock().unwrap_or_else(|e| e.into_inner());
                for tx in waiting.get_mut(&self.addr).into_iter().flat_map(|q| std::iter::from_fn(|| q.pop_front())) {
                    match tx.send(conn) {
                        Ok(()) => return,
                        Err(c) => conn = c,
                    }
                }
                // Nobody waits for this endpoint: closing frees the permit for whoever waits.
            }
            Some(breaker) => {
                let mut pool = SHARED_POOL.lock().unwrap_or_else(|e| e.into_inner());
                let idle = pool.entry(self.addr).or_default();
                trim(idle, now);
                idle.push(SharedIdle { idle: Idle { conn: self.conn, since: now }, breaker });
            }
            None => POOL.with(|pool| {
                let mut pool = pool.borrow_mut();
                let idle = pool.entry(self.addr).or_default();
                trim(idle, now);
                idle.push(Idle { conn: self.conn, since: now });
            }),
        }
    }
}

/// Drops the idle connections that have expired or would overflow (the oldest are at the front).
fn trim<T: AsRef<Idle>>(idle: &mut Vec<T>, now: Instant) {
    let expired = idle.iter().take_while(|c| now.duration_since(c.as_ref().since) > POOL_IDLE).count();
    let overflow = (idle.len() + 1).saturating_sub(MAX_IDLE_PER_ENDPOINT);
    let drop_front = expired.max(overflow);
    if drop_front > 0 {
        idle.drain(..drop_front);
    }
}

struct Idle {
    conn: Box<Conn>,
    since: Instant,
}

impl AsRef<Idle> for Idle {
    fn as_ref(&self) -> &Idle {
        self
    }
}

impl Idle {
    /// The connection, if it is fresh enough and the endpoint has not closed it meanwhile.
    fn usable(mut self) -> Option<Box<Conn>> {
        (self.since.elapsed() <= POOL_IDLE && self.conn.is_idle_open()).then_some(self.conn)
    }
}

/// An idle connection of a cluster with `max_connections`, with the breaker whose permit it holds.
struct SharedIdle {
    idle: Idle,
    breaker: Arc<Breaker>,
}

impl AsRef<Idle> for SharedIdle {
    fn as_ref(&self) -> &Idle {
        &self.idle
    }
}

thread_local! {
    static POOL: RefCell<FastMap<PoolKey, Vec<Idle>>> = RefCell::new(FastMap::default());
}

static SHARED_POOL: LazyLock<Mutex<FastMap<PoolKey, Vec<SharedIdle>>>> = LazyLock::new(Default::default);

/// Requests of connection-limited clusters waiting for a connection to an endpoint, oldest first.
static WAITING: LazyLock<Mutex<FastMap<PoolKey, VecDeque<Handoff>>>> = LazyLock::new(Default::default);

/// Where a finished exchange hands its connection to a waiting request.
type Handoff = oneshot::Sender<Box<Conn>>;

enum Waited {
    /// A connection handed over by the exchange that finished on it.
    Connection(Box<Conn>),
    /// A permit to open a new connection.
    Permit(OwnedSemaphorePermit),
}

/// Waits (as one of the breaker's pending requests) for a connection to `addr` or a permit.
async fn wait_for_connection(breaker: &Arc<Breaker>, addr: PoolKey) -> Option<Waited> {
    // Connections pooled before this request counted as waiting would never be handed over.
    if let Some(c) = checkout_shared(addr) {
        return Some(Waited::Connection(c));
    }
    let (tx, rx) = oneshot::channel();
    {
        let mut waiting = WAITING.lock().unwrap_or_else(|e| e.into_inner());
        let queue = waiting.entry(addr).or_default();
        queue.retain(|t| !t.is_closed());
        queue.push_back(tx);
    }
    // A connection idling for another endpoint holds a permit this request needs.
    evict_idle(breaker);
    tokio::select! {
        Ok(c) = rx => Some(Waited::Connection(c)),
        p = breaker.connection() => p.map(Waited::Permit),
    }
}

/// Sends `req` on the leased connection; the response body carries the lease.
async fn send_on(
    mut lease: Lease,
    req: Request<RequestOut>,
    forwarding: &[u8],
) -> Result<Response<ResponseBody>, SendError> {
    let (head, framing) = lease.conn.send(req, forwarding).await?;
    Ok(Response::from_parts(head, ResponseBody::new(lease, framing)))
}

/// The most recently used live idle connection to `addr` in this thread's pool, if any.
fn checkout(addr: PoolKey) -> Option<Box<Conn>> {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let idle = pool.get_mut(&addr)?;
        std::iter::from_fn(|| idle.pop()).find_map(Idle::usable)
    })
}

/// Like [`checkout`], from the shared pool of connection-limited clusters.
fn checkout_shared(addr: PoolKey) -> Option<Box<Conn>> {
    let mut pool = SHARED_POOL.lock().unwrap_or_else(|e| e.into_inner());
    let idle = pool.get_mut(&addr)?;
    std::iter::from_fn(|| idle.pop()).find_map(|c| c.idle.usable())
}

/// Closes one idle connection holding a permit of `breaker` (to any endpoint), if there is one,
/// so that a request (or an L4 connection) waiting for a connection elsewhere gets its permit.
pub(crate) fn evict_idle(breaker: &Arc<Breaker>) {
    let mut pool = SHARED_POOL.lock().unwrap_or_else(|e| e.into_inner());
    for idle in pool.values_mut() {
        if let Some(i) = idle.iter().position(|c| Arc::ptr_eq(&c.breaker, breaker)) {
            idle.remove(i);
            return;
        }
    }
}

impl UpstreamClient {
    /// Sends an upgrade request (a WebSocket handshake) on a new connection of its own, which
    /// becomes the tunnel when the endpoint answers 101. (It counts in the breaker's requests in
    /// flight for as long as it is open, not in its connections.)
    pub async fn request_upgrade(
        &self,
        endpoint: SocketAddr,
        dial: Dial<'_>,
        req: Request<RequestOut>,
        forwarding: &[u8],
    ) -> Result<Response<ResponseBody>, Failed> {
        let addr: PoolKey = (endpoint, dial.tls.map_or(0, UpstreamTlsConfig::id));
        send_on_new(addr, dial, None, None, req, forwarding).await
    }

    /// Sends `req` (origin-form URI, `Host` set) with the header lines `forwarding` after its own
    /// (see `headers::Forwarding`) to `endpoint` on a pooled or new connection (opened as `dial`
    /// says), within the connection limit of the cluster's circuit breaker (`breaker`) if it has
    /// one. The response body hands the connection back to the pool when it is over.
    pub async fn request(
        &self,
        endpoint: SocketAddr,
        dial: Dial<'_>,
        breaker: Option<&Arc<Breaker>>,
        mut req: Request<RequestOut>,
        forwarding: &[u8],
    ) -> Result<Response<ResponseBody>, Failed> {
        let addr: PoolKey = (endpoint, dial.tls.map_or(0, UpstreamTlsConfig::id));
        let limited = breaker.filter(|b| b.limits_connections());
        let lease = |conn| Lease { addr, conn, limited: limited.cloned() };
        // Bounded: every turn takes one connection out of the pool.
        while let Some(conn) = if limited.is_some() { checkout_shared(addr) } else { checkout(addr) } {
            match send_on(lease(conn), req, forwarding).await {
                Ok(resp) => return Ok(resp),
                Err(SendError::Unsent(r, _) | SendError::Dropped(r, _)) => req = r,
                Err(SendError::Failed(e)) => return Err(Failed::sent(e)),
            }
        }
        let permit = match limited {
            None => None,
            Some(b) => match b.try_connection() {
                Some(p) => Some(p),
                None => {
                    let _waiting = match b.enter_pending() {
                        Ok(w) => w,
                        Err(o) => return Err(Failed::unsent(UpstreamError::Overflow(o), req)),
                    };
                    loop {
                        match wait_for_connection(b, addr).await {
                            Some(Waited::Permit(p)) => break Some(p),
                            Some(Waited::Connection(conn)) => match send_on(lease(conn), req, forwarding).await {
                                Ok(resp) => return Ok(resp),
                                Err(SendError::Unsent(r, _) | SendError::Dropped(r, _)) => req = r,
                                Err(SendError::Failed(e)) => return Err(Failed::sent(e)),
                            },
                            None => {
                                let o = b.overflowed(Overflow::Connections);
                                return Err(Failed::unsent(UpstreamError::Overflow(o), req));
                            }
                        }
                    }
                }
            },
        };
        // Boxed: a new connection is the rare case, and its future (connect, TLS) would otherwise
        // make every request's future larger, and so every move of it (memcpy) dearer.
        Box::pin(send_on_new(addr, dial, permit, limited.cloned(), req, forwarding)).await
    }
}

/// Sends `req` on `stream`, a new connection to `addr` (holding `permit`) that ALPN made
/// HTTP/1.1 (a cluster with `protocol: auto`); the connection is pooled afterwards as usual.
pub(super) async fn send_on_opened(
    addr: PoolKey,
    stream: Stream,
    permit: Option<OwnedSemaphorePermit>,
    limited: Option<Arc<Breaker>>,
    req: Request<RequestOut>,
    forwarding: &[u8],
) -> Result<Response<ResponseBody>, Failed> {
    let conn = Box::new(Conn::new(stream, permit));
    send_on(Lease { addr, conn, limited }, req, forwarding).await.map_err(|e| match e {
        SendError::Unsent(r, e) => Failed::unsent(UpstreamError::Connect(e), r),
        SendError::Dropped(_, e) | SendError::Failed(e) => Failed::sent(e),
    })
}

/// Opens a connection (see [`connect`]) and sends `req` on it; a failed connect gives it back.
async fn send_on_new(
    addr: PoolKey,
    dial: Dial<'_>,
    permit: Option<OwnedSemaphorePermit>,
    limited: Option<Arc<Breaker>>,
    req: Request<RequestOut>,
    forwarding: &[u8],
) -> Result<Response<ResponseBody>, Failed> {
    let conn = match connect(addr.0, dial, permit).await {
        Ok(c) => c,
        Err(e) => return Err(Failed::unsent(UpstreamError::Connect(e), req)),
    };
    send_on(Lease { addr, conn, limited }, req, forwarding).await.map_err(|e| match e {
        // A connection just opened and closed before the first byte: the endpoint refused it.
        SendError::Unsent(r, e) => Failed::unsent(UpstreamError::Connect(e), r),
        // A new connection has no idle race to excuse: the endpoint dropped this request.
        SendError::Dropped(_, e) | SendError::Failed(e) => Failed::sent(e),
    })
}

/// How a new connection to an endpoint of a cluster is opened: over TLS when the cluster has
/// upstream TLS settings, and within its `connect_timeout_ms` ([`CONNECT_TIMEOUT`] when unset).
#[derive(Clone, Copy, Default)]
pub struct Dial<'a> {
    pub tls: Option<&'a UpstreamTlsConfig>,
    pub connect_timeout: Option<Duration>,
}

/// Pooled connections per endpoint and TLS settings (0: plaintext), see `UpstreamTlsConfig::id`.
pub(super) type PoolKey = (SocketAddr, u64);

/// A new connection to `addr` as `dial` says, holding `permit` (a breaker's connection permit)
/// until it closes.
async fn connect(addr: SocketAddr, dial: Dial<'_>, permit: Option<OwnedSemaphorePermit>) -> io::Result<Box<Conn>> {
    Ok(Box::new(Conn::new(open(addr, dial).await?, permit)))
}

/// A new connection to `addr` as `dial` says: TCP (no delay, keepalive), then TLS if set.
pub(super) async fn open(addr: SocketAddr, dial: Dial<'_>) -> io::Result<Stream> {
    let timeout = dial.connect_timeout.unwrap_or(CONNECT_TIMEOUT);
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(r) => r?,
        Err(_) => return Err(io::ErrorKind::TimedOut.into()),
    };
    let _ = stream.set_nodelay(true);
    let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE));
    Ok(match dial.tls {
        Some(tls) => Either::Right(Box::new(tls.connect(addr, stream).await?)),
        None => Either::Left(stream),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
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

    /// One exchange, its body read to the end (which returns the connection to the pool).
    async fn get(addr: SocketAddr) -> Bytes {
        let req = Request::builder().uri("/").header("host", "x").body(RequestOut::Empty).unwrap();
        let Ok(resp) = client().request(addr, Dial::default(), None, req, &[]).await else { panic!("request failed") };
        resp.into_body().collect().await.unwrap().to_bytes()
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
