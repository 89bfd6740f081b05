//! Serving one client connection over HTTP/2 (h2 by ALPN on https listeners, h2c with prior
//! knowledge on http ones): every stream is a request through the same pipeline as HTTP/1.1's
//! (`proxy::handle`), in a task of its own on the connection's worker thread.
//!
//! ```text
//!  preface + SETTINGS ──▶ accept loop ──▶ stream task: Request<RequestBody::h2> ──▶ proxy::handle
//!     │  (drain, idle, age: GOAWAY;                         │
//!     │   rapid reset: GOAWAY ENHANCE_YOUR_CALM)            ▼
//!     └────────────────────────────────────── HEADERS, DATA (as the client's window allows), trailers
//! ```
//!
//! The edge limits are the listener's `http2` settings: concurrent streams, header list size
//! (HPACK bombs and CONTINUATION floods end there: h2 bounds what it decodes and buffers),
//! windows; resets of streams not yet accepted are bounded by h2, and a client that resets
//! most of the streams it opens (CVE-2023-44487) gets GOAWAY once it has reset
//! [`PREMATURE_RESETS`].

use std::future::{poll_fn, Future};
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::http::body::ProxyBody;
use crate::http::codec::h2_body::{self, Sent};
use crate::http::codec::head::{MAX_HEADERS, MAX_REQUEST_LINE};
use crate::http::codec::headers::{append_lines, content_length, PassedHead};
use crate::http::codec::request_body::RequestBody;
use crate::http::proxy::{self, Downstream};
use crate::lazy_timer::LazyTimer;
use crate::listeners::idle_allowance;
use crate::listeners::Phase;
use crate::phase_watch::PhaseWatch;
use crate::state::ConnCtx;
use crate::table::HttpOptions;

/// The client connection preface (RFC 9113 §3.4): how h2c with prior knowledge is told apart.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// A client gets this long for its preface and SETTINGS.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Streams a client may reset before the proxy accepts them (h2 counts these itself).
const MAX_PENDING_ACCEPT_RESETS: usize = 50;
/// Streams the proxy may reset for the client's protocol errors before it closes the connection.
const MAX_LOCAL_ERROR_RESETS: usize = 256;
/// Response bytes buffered per stream beyond what the client's window takes.
const SEND_BUFFER: usize = 256 * 1024;
/// A client that has reset this many streams before their response ended, and most of those it
/// opened, is closed with GOAWAY (ENHANCE_YOUR_CALM): each costs the proxy a request started.
pub const PREMATURE_RESETS: u32 = 100;

/// Streams of one connection, counted by their tasks.
#[derive(Default)]
struct StreamCounts {
    opened: AtomicU32,
    /// Reset by the client before their response ended.
    reset: AtomicU32,
}

impl StreamCounts {
    fn abusive(&self) -> bool {
        let reset = self.reset.load(Ordering::Relaxed);
        reset >= PREMATURE_RESETS && reset * 2 >= self.opened.load(Ordering::Relaxed)
    }
}

enum Event {
    /// Boxed: the other events are small.
    Stream(Box<(Request<RecvStream>, SendResponse<Bytes>)>),
    /// The connection is over (the client closed it, an error, or a GOAWAY finished).
    Closed,
    Drain,
    Abort,
    /// Idle for the idle timeout, or past the maximum age: a graceful GOAWAY.
    Retire(&'static str),
    Abusive,
}

/// Serves `io` as an HTTP/2 connection until the client or the listener ends it.
pub async fn serve<I>(io: I, conn: Arc<ConnCtx>, phase: watch::Receiver<Phase>, opts: HttpOptions)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = h2::server::Builder::new();
    builder
        .max_concurrent_streams(opts.max_concurrent_streams)
        .max_header_list_size(opts.max_header_list)
        .initial_window_size(opts.stream_window)
        .initial_connection_window_size(opts.connection_window)
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
        .max_send_buffer_size(SEND_BUFFER);
    let mut h2 = match tokio::time::timeout(HANDSHAKE_TIMEOUT, builder.handshake::<_, Bytes>(io)).await {
        Ok(Ok(h2)) => h2,
        Ok(Err(e)) => return tracing::debug!(error = %e, "h2 handshake failed"),
        Err(_) => return tracing::debug!("h2 handshake timed out"),
    };
    let down = Arc::new(Downstream::new(conn));
    let counts = Arc::new(StreamCounts::default());
    let mut watch = PhaseWatch::of_listener(phase.clone());
    let started = Instant::now();
    let mut idle_deadline = started + idle_allowance(opts.idle_timeout);
    let age_deadline = opts.max_connection_age.map(|age| started + age);
    let (mut idle_timer, mut age_timer) = (LazyTimer::default(), LazyTimer::default());
    let mut closing = false;
    loop {
        let event = poll_fn(|cx| {
            match watch.poll(cx) {
                Phase::Abort => return Poll::Ready(Event::Abort),
                Phase::Draining if !closing => return Poll::Ready(Event::Drain),
                _ => {}
            }
            match h2.poll_accept(cx) {
                Poll::Ready(Some(Ok(stream))) => return Poll::Ready(Event::Stream(Box::new(stream))),
                Poll::Ready(Some(Err(e))) => {
                    tracing::debug!(error = %e, "h2 connection error");
                    return Poll::Ready(Event::Closed);
                }
                Poll::Ready(None) => return Poll::Ready(Event::Closed),
                Poll::Pending => {}
            }
            if closing {
                return Poll::Pending;
            }
            if counts.abusive() {
                return Poll::Ready(Event::Abusive);
            }
            if age_deadline.is_some_and(|d| age_timer.poll_expired(cx, d)) {
                return Poll::Ready(Event::Retire("max connection age"));
            }
            if idle_timer.poll_expired(cx, idle_deadline) {
                if !h2.has_streams() {
                    return Poll::Ready(Event::Retire("idle timeout"));
                }
                idle_deadline = Instant::now() + idle_allowance(opts.idle_timeout);
                // Registers the timer for the new deadline.
                let _ = idle_timer.poll_expired(cx, idle_deadline);
            }
            Poll::Pending
        })
        .await;
        match event {
            Event::Stream(stream) => {
                let (req, respond) = *stream;
                idle_deadline = Instant::now() + idle_allowance(opts.idle_timeout);
                counts.opened.fetch_add(1, Ordering::Relaxed);
                let (down, counts, phase) = (down.clone(), counts.clone(), phase.clone());
                // Boxed: the task then moves a pointer, not the stream's whole state (spawning
                // copied it several times: about 7,000 instructions a stream, callgrind).
                tokio::spawn(Box::pin(async move {
                    if serve_stream(req, respond, &down, phase).await == Outcome::Reset {
                        counts.reset.fetch_add(1, Ordering::Relaxed);
                    }
                }));
            }
            Event::Closed => return,
            Event::Abort => return,
            Event::Drain => {
                closing = true;
                h2.graceful_shutdown();
            }
            Event::Retire(why) => {
                tracing::debug!(why, "h2 connection retired");
                closing = true;
                h2.graceful_shutdown();
            }
            Event::Abusive => {
                tracing::info!(
                    peer = %down.ctx.peer,
                    reset = counts.reset.load(Ordering::Relaxed),
                    opened = counts.opened.load(Ordering::Relaxed),
                    "h2 client resets most streams it opens: GOAWAY"
                );
                closing = true;
                h2.abrupt_shutdown(Reason::ENHANCE_YOUR_CALM);
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Done,
    /// The client reset the stream before its response ended (or the connection went).
    Reset,
    /// The response broke on the proxy's side (the endpoint's body failed): the stream is reset.
    Failed,
}

/// One stream: the request through the proxy, the response back with flow control.
async fn serve_stream(
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    down: &Downstream,
    phase: watch::Receiver<Phase>,
) -> Outcome {
    let (mut parts, recv) = req.into_parts();
    join_cookies(&mut parts.headers);
    if let Some(status) = over_limits(&parts) {
        // The HTTP/1.1 head limits, the same for HTTP/2: answered here, never forwarded.
        down.ctx.shared.metrics.unrouted.record(status.as_u16());
        let head = Response::builder().status(status).body(()).unwrap_or_default();
        let _ = respond.send_response(head, true);
        return Outcome::Done;
    }
    let body = RequestBody::h2(recv, content_length(&parts.headers));
    let mut timer = LazyTimer::default();
    let mut handling = pin!(proxy::handle(Request::from_parts(parts, body), down, &mut timer));
    let mut watch = PhaseWatch::of_listener(phase);
    let resp = poll_fn(|cx| {
        if watch.poll(cx) == Phase::Abort {
            return Poll::Ready(None);
        }
        if respond.poll_reset(cx).is_ready() {
            return Poll::Ready(None);
        }
        handling.as_mut().poll(cx).map(Some)
    })
    .await;
    let Some(resp) = resp else { return Outcome::Reset };
    let (parts, body) = resp.into_parts();
    let mut head = Response::from_parts(parts, ());
    response_headers(head.headers_mut(), body.passed_head());
    let end = body.is_end_stream();
    let send = match respond.send_response(head, end) {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e, "h2 response head not sent");
            return Outcome::Reset;
        }
    };
    if end {
        return Outcome::Done;
    }
    send_body(send, body, watch).await
}

/// Streams `body` to the client as its window allows; trailers end the stream when there are any.
async fn send_body(mut send: SendStream<Bytes>, body: ProxyBody, mut watch: PhaseWatch) -> Outcome {
    match h2_body::send_body(&mut send, body, Reason::INTERNAL_ERROR, |cx| watch.poll(cx) == Phase::Abort).await {
        Sent::Done => Outcome::Done,
        Sent::Reset => Outcome::Reset,
        Sent::Failed(e) => {
            tracing::debug!(error = %e, "response body failed");
            Outcome::Failed
        }
    }
}

/// Headers an HTTP/2 message may not carry (RFC 9113 §8.2.2).
static CONNECTION_SPECIFIC: [HeaderName; 5] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// A response head as HTTP/2 carries it: an HTTP/1.1 endpoint's header lines into the map, and
/// no connection-specific header.
pub(super) fn response_headers(headers: &mut HeaderMap, passed: Option<&PassedHead>) {
    // An endpoint's answer usually has its headers in the passed lines, the map empty.
    if !headers.is_empty() {
        for name in &CONNECTION_SPECIFIC {
            headers.remove(name);
        }
    }
    let Some(lines) = passed.map(PassedHead::lines).filter(|l| !l.is_empty()) else { return };
    // The lines hold no hop-by-hop header: the endpoint's head parser left them out.
    append_lines(headers, lines);
}

/// A request past the HTTP/1.1 head limits: 414 for a target over [`MAX_REQUEST_LINE`], 431 for
/// more than [`MAX_HEADERS`] fields (the header list's size is bounded by h2 itself, with a 431).
fn over_limits(parts: &http::request::Parts) -> Option<StatusCode> {
    let target = parts.uri.path_and_query().map_or(0, |p| p.as_str().len());
    if target + parts.method.as_str().len() > MAX_REQUEST_LINE {
        return Some(StatusCode::URI_TOO_LONG);
    }
    (parts.headers.len() > MAX_HEADERS).then_some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
}

/// HTTP/2 clients may split `cookie` into one field per pair; an HTTP/1.1 endpoint gets them
/// joined with "; " (RFC 9113 §8.2.3), and route matching sees them as one.
fn join_cookies(headers: &mut HeaderMap) {
    let mut all = headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (all.next(), all.next()) else { return };
    let mut joined = first.as_bytes().to_vec();
    for v in headers.get_all(header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(v.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

/// A connection whose first bytes were already read (to tell h2c from HTTP/1.1): they are read
/// again first.
pub struct Prefixed<I> {
    prefix: Bytes,
    io: I,
}

impl<I> Prefixed<I> {
    pub fn new(prefix: Bytes, io: I) -> Prefixed<I> {
        Prefixed { prefix, io }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            if this.prefix.is_empty() {
                // Nothing is kept of it for the connection's life.
                this.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_split_by_the_client_are_joined() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        h.append(header::COOKIE, HeaderValue::from_static("c=3"));
        join_cookies(&mut h);
        assert_eq!(h.get_all(header::COOKIE).iter().count(), 1);
        assert_eq!(h[header::COOKIE], "a=1; b=2; c=3");
        let mut one = HeaderMap::new();
        one.insert(header::COOKIE, HeaderValue::from_static("a=1"));
        join_cookies(&mut one);
        assert_eq!(one[header::COOKIE], "a=1");
    }

    #[test]
    fn connection_specific_headers_never_reach_an_h2_client() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        response_headers(&mut h, None);
        assert!(h.get(header::CONNECTION).is_none());
        assert_eq!(h[header::CONTENT_TYPE], "text/plain");
    }

    #[tokio::test]
    async fn a_prefix_is_read_before_the_connection() {
        use tokio::io::AsyncReadExt;
        let (mut a, b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, b" world").await.unwrap();
        drop(a);
        let mut p = Prefixed::new(Bytes::from_static(b"hello"), b);
        let mut s = String::new();
        p.read_to_string(&mut s).await.unwrap();
        assert_eq!(s, "hello world");
    }
}
