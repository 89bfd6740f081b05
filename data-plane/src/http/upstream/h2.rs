//! HTTP/2 to endpoints (clusters with `protocol: http2`, or `auto` when ALPN picks h2): few
//! connections per worker thread and endpoint, each carrying many requests as streams.
//!
//! ```text
//!  request ──▶ a pooled connection with a free stream (the endpoint's MAX_CONCURRENT_STREAMS)
//!              └─ none: a new connection (TCP, TLS with ALPN h2, preface), pooled for the next
//!          ──▶ HEADERS (+ DATA pumped by a task of its own, with trailers) ──▶ response HEADERS
//!  H2Body ◀── DATA as the client takes it (flow control end to end), trailers
//! ```
//!
//! Each connection has a driver task (h2's connection future) that also PINGs the endpoint
//! when quiet and closes the connection when a PING goes unanswered. A connection that got a
//! GOAWAY or failed takes no new stream; streams the endpoint never processed (refused by a
//! GOAWAY past them, or REFUSED_STREAM) fail as [`UpstreamError::Refused`], which the proxy
//! retries like a connect failure. A stream counts as the cluster's request (breaker,
//! least_request, endpoint max_connections) through the guards the proxy holds; a connection
//! of a cluster with a breaker's `max_connections` holds one of its connection permits.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{Reason, SendStream};
use http::header::{self, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use http_body::{Body as _, Frame};
use tokio::sync::{oneshot, OwnedSemaphorePermit};
use tokio_util::either::Either;

use super::h1::{ExchangeError, Stream};
use super::{open, send_on_opened, Dial, Failed, PoolKey, UpstreamBody, UpstreamError};
use crate::fast_hash::FastMap;
use crate::http::codec::h2_body::{send_body, H2Body, Sent};
use crate::http::codec::headers::{append_lines, content_length, is_grpc};
use crate::http::codec::outgoing::RequestOut;
use crate::http::codec::{BodyTooLarge, BoxError, ClientBodyError};
use crate::table::{Breaker, Overflow};
use crate::tls::upstream::UpstreamTlsConfig;

/// A quiet connection is PINGed this often; one unanswered for [`PING_TIMEOUT`] ends it.
const PING_INTERVAL: Duration = Duration::from_secs(30);
const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// Until the endpoint's SETTINGS say otherwise (RFC 9113 recommends at least 100).
const INITIAL_MAX_STREAMS: usize = 100;
const STREAM_WINDOW: u32 = 1024 * 1024;
const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;
/// Connections kept per endpoint and worker thread (more are opened when these are full, and
/// closed once their streams end).
const MAX_POOLED_PER_ENDPOINT: usize = 8;

static TE: HeaderName = header::TE;

/// One HTTP/2 connection to an endpoint, as the pool holds it.
#[derive(Clone)]
struct H2Conn {
    send: SendRequest<Bytes>,
    state: Arc<ConnState>,
}

#[derive(Default)]
struct ConnState {
    /// The driver ended (GOAWAY, error, PING timeout): no new streams.
    closed: AtomicBool,
    /// Streams open on it from this side.
    streams: AtomicUsize,
}

impl H2Conn {
    fn has_room(&self) -> bool {
        !self.state.closed.load(Ordering::Relaxed)
            && self.state.streams.load(Ordering::Relaxed) < self.send.current_max_send_streams()
    }
}

/// An endpoint's response over HTTP/2: its stream's body, and the stream's place on its
/// connection, held until the body is done with.
pub struct H2Response {
    pub body: H2Body,
    _slot: StreamSlot,
    /// Told the trailers' `grpc-status` when the body ends (`None`: none came, or the body was
    /// dropped first).
    on_end: Option<OnEnd>,
}

type OnEnd = Box<dyn FnOnce(Option<&str>) + Send>;

impl H2Response {
    /// Adds `f` to what is told how the call ended.
    pub fn on_end(&mut self, f: impl FnOnce(Option<&str>) + Send + 'static) {
        self.on_end = Some(match self.on_end.take() {
            None => Box::new(f),
            Some(before) => Box::new(move |status| {
                before(status);
                f(status)
            }),
        });
    }

    pub fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = self.body.poll_frame(cx);
        if self.on_end.is_some() {
            match &polled {
                Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => {
                    let status = frame.trailers_ref().and_then(|t| t.get("grpc-status")).and_then(|v| v.to_str().ok());
                    self.end(status);
                }
                Poll::Ready(None | Some(Err(_))) => self.end(None),
                _ => {}
            }
        }
        polled
    }

    fn end(&mut self, status: Option<&str>) {
        if let Some(f) = self.on_end.take() {
            f(status);
        }
    }
}

impl Drop for H2Response {
    fn drop(&mut self) {
        self.end(None);
    }
}

/// A stream counted on its connection until dropped (with the response body that holds it).
struct StreamSlot(Arc<ConnState>);

impl StreamSlot {
    fn take(state: &Arc<ConnState>) -> StreamSlot {
        state.streams.fetch_add(1, Ordering::Relaxed);
        StreamSlot(state.clone())
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

thread_local! {
    static POOL: RefCell<FastMap<PoolKey, Vec<H2Conn>>> = RefCell::new(FastMap::default());
}

/// A pooled connection to `key` with a free stream, dropping the closed ones on the way.
fn checkout(key: PoolKey) -> Option<H2Conn> {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let conns = pool.get_mut(&key)?;
        conns.retain(|c| !c.state.closed.load(Ordering::Relaxed));
        conns.iter().find(|c| c.has_room()).cloned()
    })
}

fn pool(key: PoolKey, conn: &H2Conn) {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let conns = pool.entry(key).or_default();
        conns.retain(|c| !c.state.closed.load(Ordering::Relaxed));
        if conns.len() < MAX_POOLED_PER_ENDPOINT {
            conns.push(conn.clone());
        }
    })
}

/// Whether requests of a `protocol: auto` cluster to this endpoint go over HTTP/2: until its
/// ALPN answer says otherwise (remembered per worker thread for [`ALPN_MEMORY`]).
pub fn auto_tries_h2(endpoint: SocketAddr, dial: Dial<'_>) -> bool {
    let key: PoolKey = (endpoint, dial.tls.map_or(0, UpstreamTlsConfig::id));
    CHOSE_HTTP1.with(|m| m.borrow().get(&key).is_none_or(|at| at.elapsed() > ALPN_MEMORY))
}

/// How long an endpoint's ALPN choice of HTTP/1.1 is taken as its answer.
const ALPN_MEMORY: Duration = Duration::from_secs(600);

thread_local! {
    /// Endpoints of `auto` clusters whose ALPN answer was HTTP/1.1, and when.
    static CHOSE_HTTP1: RefCell<FastMap<PoolKey, std::time::Instant>> = RefCell::new(FastMap::default());
}

/// Sends `req` (origin-form target, `Host` set, the header lines `forwarding` to add) to
/// `endpoint` over HTTP/2 (`:scheme` https when `dial` has TLS). `auto`: an endpoint whose ALPN
/// answer is HTTP/1.1 gets the request over that connection as HTTP/1.1.
pub async fn request(
    endpoint: SocketAddr,
    dial: Dial<'_>,
    breaker: Option<&Arc<Breaker>>,
    req: Request<RequestOut>,
    forwarding: &[u8],
    auto: bool,
) -> Result<Response<UpstreamBody>, Failed> {
    let key: PoolKey = (endpoint, dial.tls.map_or(0, UpstreamTlsConfig::id));
    let mut conn = checkout(key);
    if conn.is_none() {
        // A burst to an endpoint with no connection yet waits for the one being made.
        if let Some(arriving) = join_connect(key) {
            conn = arriving.await.ok().filter(H2Conn::has_room);
        }
    }
    let conn = match conn {
        Some(c) => c,
        None => match Box::pin(connect_announced(key, endpoint, dial, breaker, auto)).await {
            Ok(Connected::H2(c)) => c,
            Ok(Connected::Http1(stream, permit)) => {
                CHOSE_HTTP1.with(|m| m.borrow_mut().insert(key, std::time::Instant::now()));
                let limited = breaker.filter(|b| b.limits_connections()).cloned();
                let sent = send_on_opened(key, stream, permit, limited, req, forwarding).await;
                return sent.map(|r| r.map(UpstreamBody::H1));
            }
            Err(e) => return Err(Failed::unsent(e, req)),
        },
    };
    let slot = StreamSlot::take(&conn.state);
    let mut send = match conn.send.clone().ready().await {
        Ok(s) => s,
        Err(e) => {
            conn.state.closed.store(true, Ordering::Relaxed);
            return Err(Failed::unsent(UpstreamError::Refused(e), req));
        }
    };
    let (parts, body) = req.into_parts();
    let head = h2_head(parts, endpoint, dial.tls.is_some(), forwarding);
    let end = body.is_end_stream();
    let (response, stream) = match send.send_request(head, end) {
        Ok(r) => r,
        Err(e) => {
            conn.state.closed.store(true, Ordering::Relaxed);
            return Err(Failed { error: UpstreamError::Refused(e), unsent: None });
        }
    };
    let pump = (!end).then(|| tokio::spawn(pump_body(body, stream)));
    let resp = match response.await {
        Ok(r) => r,
        Err(e) => {
            if let Some(p) = pump {
                // A body that failed on the client's side (or passed its limit) says why.
                if let Ok(Some(client)) = p.await {
                    return Err(Failed { error: client, unsent: None });
                }
            }
            let unprocessed = e.reason() == Some(Reason::REFUSED_STREAM) || (e.is_go_away() && e.is_remote());
            let error = if unprocessed { UpstreamError::Refused(e) } else { UpstreamError::H2(e) };
            return Err(Failed { error, unsent: None });
        }
    };
    let (parts, recv) = resp.into_parts();
    let length = content_length(&parts.headers);
    let body = H2Response { body: H2Body::response(recv, length), _slot: slot, on_end: None };
    Ok(Response::from_parts(parts, UpstreamBody::H2(Box::new(body))))
}

/// The request head as HTTP/2 sends it: `:scheme` and `:authority` (from `Host`) in the URI,
/// the forwarding headers added, `te: trailers` for gRPC (which the hop-by-hop pass removed).
fn h2_head(parts: http::request::Parts, endpoint: SocketAddr, tls: bool, forwarding: &[u8]) -> Request<()> {
    let mut parts = parts;
    let authority = parts.headers.remove(header::HOST).and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok());
    let authority = authority.unwrap_or_else(|| {
        http::uri::Authority::try_from(endpoint.to_string()).unwrap_or(http::uri::Authority::from_static("localhost"))
    });
    let path = parts.uri.path_and_query().cloned().unwrap_or(PathAndQuery::from_static("/"));
    let scheme = if tls { Scheme::HTTPS } else { Scheme::HTTP };
    parts.uri = Uri::builder().scheme(scheme).authority(authority).path_and_query(path).build().unwrap_or_default();
    parts.version = Version::HTTP_2;
    append_lines(&mut parts.headers, forwarding);
    if is_grpc(&parts.headers) {
        parts.headers.insert(TE.clone(), HeaderValue::from_static("trailers"));
    }
    Request::from_parts(parts, ())
}

/// Sends the request body on its stream as the endpoint's window allows, trailers included.
/// Returns the client's error when the body failed on the client's side.
async fn pump_body(body: RequestOut, mut stream: SendStream<Bytes>) -> Option<UpstreamError> {
    match send_body(&mut stream, body, Reason::CANCEL, |_| false).await {
        Sent::Failed(e) if e.is::<ClientBodyError>() || e.is::<BodyTooLarge>() => {
            Some(UpstreamError::Exchange(ExchangeError::Body(e)))
        }
        Sent::Done | Sent::Reset | Sent::Failed(_) => None,
    }
}

/// Requests waiting for the connection being made to an endpoint, on this worker thread.
type Arrivals = FastMap<PoolKey, Vec<oneshot::Sender<H2Conn>>>;

thread_local! {
    static CONNECTING: RefCell<Arrivals> = RefCell::new(FastMap::default());
}

/// A receiver of the connection being made to `key`, if one is.
fn join_connect(key: PoolKey) -> Option<oneshot::Receiver<H2Conn>> {
    CONNECTING.with(|c| {
        let mut c = c.borrow_mut();
        let waiting = c.get_mut(&key)?;
        let (tx, rx) = oneshot::channel();
        waiting.push(tx);
        Some(rx)
    })
}

/// [`connect`], announced to the requests that arrive meanwhile: they get the new connection
/// (pooled first) instead of each opening one. Waiters of a failed or dropped connect get nothing
/// and connect themselves.
async fn connect_announced(
    key: PoolKey,
    endpoint: SocketAddr,
    dial: Dial<'_>,
    breaker: Option<&Arc<Breaker>>,
    auto: bool,
) -> Result<Connected, UpstreamError> {
    struct Announced(PoolKey);
    impl Drop for Announced {
        fn drop(&mut self) {
            CONNECTING.with(|c| c.borrow_mut().remove(&self.0));
        }
    }
    let fresh = CONNECTING.with(|c| c.borrow_mut().insert(key, Vec::new()).is_none());
    let _announced = fresh.then_some(Announced(key));
    let connected = connect(endpoint, dial, breaker, auto).await;
    if let Ok(Connected::H2(c)) = &connected {
        pool(key, c);
        let waiting = if fresh { CONNECTING.with(|m| m.borrow_mut().remove(&key)) } else { None };
        for tx in waiting.into_iter().flatten() {
            let _ = tx.send(c.clone());
        }
    }
    connected
}

enum Connected {
    H2(H2Conn),
    /// `auto`: ALPN chose HTTP/1.1 (the connection's breaker permit comes along).
    Http1(Stream, Option<OwnedSemaphorePermit>),
}

/// A new HTTP/2 connection: TCP, TLS (ALPN must pick h2 unless `auto`), the preface, and its
/// driver task.
async fn connect(
    endpoint: SocketAddr,
    dial: Dial<'_>,
    breaker: Option<&Arc<Breaker>>,
    auto: bool,
) -> Result<Connected, UpstreamError> {
    let permit = match breaker.filter(|b| b.limits_connections()) {
        Some(b) => match b.try_connection() {
            Some(p) => Some(p),
            None => return Err(UpstreamError::Overflow(b.overflowed(Overflow::Connections))),
        },
        None => None,
    };
    let stream = open(endpoint, dial).await.map_err(UpstreamError::Connect)?;
    if let Either::Right(tls) = &stream {
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            if auto {
                return Ok(Connected::Http1(stream, permit));
            }
            let e = std::io::Error::other("the endpoint did not choose h2 by ALPN");
            return Err(UpstreamError::Connect(e));
        }
    }
    let mut builder = h2::client::Builder::new();
    builder
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .initial_max_send_streams(INITIAL_MAX_STREAMS)
        .enable_push(false);
    let (send, connection) = match builder.handshake::<_, Bytes>(stream).await {
        Ok(c) => c,
        Err(e) => return Err(UpstreamError::Connect(std::io::Error::other(e))),
    };
    let state = Arc::new(ConnState::default());
    tokio::spawn(drive(connection, state.clone(), permit));
    Ok(Connected::H2(H2Conn { send, state }))
}

/// Runs a connection until it ends, PINGing the endpoint when quiet.
async fn drive<T>(
    connection: h2::client::Connection<T, Bytes>,
    state: Arc<ConnState>,
    _permit: Option<OwnedSemaphorePermit>,
) where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut connection = connection;
    let mut pings = connection.ping_pong();
    let mut connection = pin!(connection);
    loop {
        tokio::select! {
            r = &mut connection => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "upstream h2 connection ended");
                }
                break;
            }
            () = tokio::time::sleep(PING_INTERVAL) => {
                let Some(p) = pings.as_mut() else { continue };
                let pong = tokio::time::timeout(PING_TIMEOUT, p.ping(h2::Ping::opaque()));
                tokio::select! {
                    _ = &mut connection => break,
                    r = pong => if !matches!(r, Ok(Ok(_))) {
                        tracing::debug!("upstream h2 endpoint missed a PING");
                        break;
                    },
                }
            }
        }
    }
    state.closed.store(true, Ordering::Relaxed);
}
