//! One HTTP/1.1 connection to an endpoint, driven by the task of the request it carries: it
//! writes the request head and body, parses the response head once (straight into the
//! `HeaderMap` the client gets, values sharing the read buffer), and decodes the response body
//! as the downstream side takes it. There is no task per upstream connection and no channel
//! between the proxy and the connection: with hyper's client those cost about a third of the
//! proxy's instructions per request (see docs/BENCHMARKS.md).
//!
//! ```text
//!  send(req) ──▶ head [+ body in memory] in one write ──▶ stream the rest of the body ─┐
//!                                                        read + parse the head ◀───────┘ (both at once:
//!                                                                                 an early answer wins)
//!  ResponseBody::poll_frame ──▶ Content-Length / chunked / until-close ──▶ done: back to the pool
//! ```

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use http::header;
use http::response::Parts;
use http::{Method, Request};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;
use tokio_util::io::poll_read_buf;

pub use super::head::BodyFraming;
use super::head::{parse_response_head, BodyState, Expect};
use super::Lease;
use crate::http::codec::chunked::{push_chunk, Taken, LAST_CHUNK};
use crate::http::codec::head::worth_parsing;
use crate::http::codec::headers::{push_header, PassedHead};
use crate::http::codec::outgoing::RequestOut;
use crate::http::codec::BoxError;

/// A connection to an endpoint, plaintext or TLS.
pub type Stream = Either<TcpStream, Box<TlsStream<TcpStream>>>;

/// Room made in the read buffer before each read.
const READ_CHUNK: usize = 16 * 1024;

/// Why an exchange failed once the request started going out.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("connection closed before a response")]
    Closed,
    #[error("invalid response: {0}")]
    BadResponse(&'static str),
    /// The request body failed while streaming (the client went away, or it passed its limit).
    #[error("request body: {0}")]
    Body(#[source] BoxError),
}

/// A failed [`Conn::send`].
pub enum SendError {
    /// Not a byte was written (the connection was closed meanwhile): the request can go elsewhere.
    Unsent(Request<RequestOut>, io::Error),
    /// An idempotent request held whole in memory met a connection that closed before a byte of
    /// answer: on a pooled connection that is the endpoint closing it as idle just as the request
    /// left (RFC 9112 §9.3.1 lets such a request be sent again).
    Dropped(Request<RequestOut>, ExchangeError),
    Failed(ExchangeError),
}

pub struct Conn {
    stream: Stream,
    /// Bytes read from the endpoint and not yet consumed.
    rbuf: BytesMut,
    /// The request head (and a body kept in memory, and chunk framing) on its way out.
    wbuf: Vec<u8>,
    /// The last response allows another exchange on this connection.
    keep_alive: bool,
    /// A circuit breaker's `max_connections` permit, held as long as the connection lives.
    _permit: Option<OwnedSemaphorePermit>,
}

impl Conn {
    pub fn new(stream: Stream, permit: Option<OwnedSemaphorePermit>) -> Conn {
        Conn { stream, rbuf: BytesMut::new(), wbuf: Vec::new(), keep_alive: false, _permit: permit }
    }

    /// Whether an idle connection can carry a request: the endpoint has neither closed it nor
    /// sent anything unasked. Never waits, and costs no syscall unless the runtime has seen the
    /// socket become readable (then one `read` tells what came). A FIN the runtime has not yet
    /// seen passes: the request then meets a closed connection, and an idempotent one is sent
    /// again on another (see [`SendError::Dropped`]); servers close idle connections after
    /// seconds, by when the runtime has long seen it.
    pub fn is_idle_open(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        self.rbuf.is_empty() && Pin::new(&mut self.stream).poll_read(&mut cx, &mut buf).is_pending()
    }

    /// Whether the connection can go back to the pool after a finished response.
    fn reusable(&self) -> bool {
        self.keep_alive && self.rbuf.is_empty()
    }

    /// The connection as a raw byte stream after a protocol switch, with the bytes the endpoint
    /// sent after its 101 (already read).
    pub fn into_upgraded(self) -> (Stream, Bytes) {
        (self.stream, self.rbuf.freeze())
    }

    /// Sends `req` (origin-form target, `Host` set), with the header lines `forwarding` after its
    /// own headers, and reads the response head, without its hop-by-hop headers (RFC 9110
    /// §7.6.1) unless it is a 101; the body is read through the [`ResponseBody`] the caller
    /// builds with [`ResponseBody::new`].
    pub async fn send(
        &mut self,
        req: Request<RequestOut>,
        forwarding: &[u8],
    ) -> Result<(Parts, BodyFraming), SendError> {
        self.keep_alive = false;
        self.rbuf.clear();
        self.wbuf.clear();
        let chunked = encode_head(&mut self.wbuf, &req, forwarding);
        let mut body_done = req.body().is_end_stream();
        if let Some(b) = req.body().in_memory() {
            // Already in memory (and announced by Content-Length): out with the head in one write.
            if !chunked {
                self.wbuf.extend_from_slice(b);
                body_done = true;
            }
        }
        let written = match poll_fn(|cx| Pin::new(&mut self.stream).poll_write(cx, &self.wbuf)).await {
            Ok(0) => return Err(SendError::Unsent(req, io::ErrorKind::WriteZero.into())),
            Ok(n) => n,
            Err(e) => return Err(SendError::Unsent(req, e)),
        };
        let expect =
            Expect { head_only: req.method() == Method::HEAD, upgrade: req.headers().contains_key(header::UPGRADE) };
        let mut out = Outgoing { written, chunked, body_done, flushed: false, failed: None, head_seen: 0 };
        if body_done {
            // The whole request is in the write buffer: keep it for a resend.
            let result = poll_fn(|cx| self.poll_exchange(cx, &mut RequestOut::Empty, &mut out, expect)).await;
            return match result {
                Err(e) if e.is_dropped_connection() && is_idempotent(req.method()) => Err(SendError::Dropped(req, e)),
                r => r.map_err(SendError::Failed),
            };
        }
        let mut body = req.into_body();
        poll_fn(|cx| self.poll_exchange(cx, &mut body, &mut out, expect)).await.map_err(SendError::Failed)
    }

    /// Writes what is left of the request and reads the response head, whichever can progress.
    fn poll_exchange(
        &mut self,
        cx: &mut Context<'_>,
        body: &mut RequestOut,
        out: &mut Outgoing,
        expect: Expect,
    ) -> Poll<Result<(Parts, BodyFraming), ExchangeError>> {
        let mut unparsed = !self.rbuf.is_empty();
        loop {
            let mut progressed = false;
            if out.failed.is_none() && !out.flushed {
                progressed = self.poll_write_request(cx, body, out)?;
            }
            // Parsed again only once more bytes came in that can change the answer (a line end,
            // a limit crossed): an endpoint trickling its head costs a parse per line.
            if std::mem::take(&mut unparsed) && worth_parsing(&self.rbuf, out.head_seen) {
                let parsed = self.parse_head(expect)?;
                out.head_seen = self.rbuf.len();
                if let Some(head) = parsed {
                    // An answer before the whole request went out: the rest of it is dropped,
                    // and the connection with it.
                    if !out.flushed {
                        self.keep_alive = false;
                    }
                    return Poll::Ready(Ok(head));
                }
            }
            self.rbuf.reserve(READ_CHUNK);
            match poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.rbuf) {
                Poll::Ready(Ok(0)) if !self.rbuf.is_empty() => {
                    return Poll::Ready(Err(ExchangeError::BadResponse("connection closed in the response head")))
                }
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(out.failed.take().map_or(ExchangeError::Closed, ExchangeError::Io)))
                }
                Poll::Ready(Ok(_)) => {
                    unparsed = true;
                    progressed = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(ExchangeError::Io(e))),
                Poll::Pending => {}
            }
            if !progressed {
                return Poll::Pending;
            }
        }
    }

    /// One step of writing the request: pending bytes, else the next body frame, else the final
    /// flush. Returns whether it progressed; a write error is kept in `out.failed` (the response
    /// may already be there to read).
    fn poll_write_request(
        &mut self,
        cx: &mut Context<'_>,
        body: &mut RequestOut,
        out: &mut Outgoing,
    ) -> Result<bool, ExchangeError> {
        let stream = Pin::new(&mut self.stream);
        if out.written < self.wbuf.len() {
            return Ok(match stream.poll_write(cx, &self.wbuf[out.written..]) {
                Poll::Ready(Ok(0)) => {
                    out.failed = Some(io::ErrorKind::WriteZero.into());
                    false
                }
                Poll::Ready(Ok(n)) => {
                    out.written += n;
                    true
                }
                Poll::Ready(Err(e)) => {
                    out.failed = Some(e);
                    false
                }
                Poll::Pending => false,
            });
        }
        if !out.body_done {
            return match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    // Trailers are not forwarded.
                    if let Some(data) = frame.data_ref().filter(|d| !d.is_empty()) {
                        self.wbuf.clear();
                        out.written = 0;
                        if out.chunked {
                            push_chunk(&mut self.wbuf, data);
                        } else {
                            self.wbuf.extend_from_slice(data);
                        }
                    }
                    Ok(true)
                }
                Poll::Ready(Some(Err(e))) => Err(ExchangeError::Body(e)),
                Poll::Ready(None) => {
                    out.body_done = true;
                    if out.chunked {
                        self.wbuf.clear();
                        self.wbuf.extend_from_slice(LAST_CHUNK);
                        out.written = 0;
                    }
                    Ok(true)
                }
                Poll::Pending => Ok(false),
            };
        }
        // TLS keeps records in its own buffer until flushed; on a plain socket this is free.
        Ok(match stream.poll_flush(cx) {
            Poll::Ready(Ok(())) => {
                out.flushed = true;
                true
            }
            Poll::Ready(Err(e)) => {
                out.failed = Some(e);
                false
            }
            Poll::Pending => false,
        })
    }

    /// Parses the response head at the start of the read buffer, skipping interim (1xx) answers.
    /// `Ok(None)`: more bytes are needed.
    fn parse_head(&mut self, expect: Expect) -> Result<Option<(Parts, BodyFraming)>, ExchangeError> {
        let Some(head) = parse_response_head(&mut self.rbuf, expect)? else { return Ok(None) };
        self.keep_alive = head.keep_alive;
        Ok(Some((head.parts, head.framing)))
    }
}

impl ExchangeError {
    /// The connection closed or was reset before any answer (a pooled connection the endpoint
    /// dropped as idle, typically).
    fn is_dropped_connection(&self) -> bool {
        match self {
            ExchangeError::Closed => true,
            ExchangeError::Io(e) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionAborted
            ),
            _ => false,
        }
    }
}

/// RFC 9110 §9.2.2: methods a client may repeat without changing the outcome.
pub fn is_idempotent(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE)
}

/// How far the request has gone out.
struct Outgoing {
    /// Bytes of the write buffer already written.
    written: usize,
    chunked: bool,
    body_done: bool,
    flushed: bool,
    failed: Option<io::Error>,
    /// How much of the read buffer the last parse of the response head saw.
    head_seen: usize,
}

/// Writes the request line, the headers and the `forwarding` lines; returns whether the body goes
/// chunked (a body of unknown length: the client sent it chunked).
fn encode_head(buf: &mut Vec<u8>, req: &Request<RequestOut>, forwarding: &[u8]) -> bool {
    buf.extend_from_slice(req.method().as_str().as_bytes());
    buf.push(b' ');
    buf.extend_from_slice(req.uri().path_and_query().map_or("/", |p| p.as_str()).as_bytes());
    buf.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        push_header(buf, name.as_str().as_bytes(), value.as_bytes());
    }
    buf.extend_from_slice(forwarding);
    let chunked = !req.body().is_end_stream() && !req.headers().contains_key(header::CONTENT_LENGTH);
    if chunked {
        buf.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    buf.extend_from_slice(b"\r\n");
    chunked
}

/// An endpoint's response body, read from its connection as the client takes it. Once it is
/// over the connection goes back to its pool; dropped before that, the connection closes (it
/// cannot carry another exchange).
pub struct ResponseBody {
    lease: Option<Lease>,
    state: BodyState,
    passed: PassedHead,
}

impl ResponseBody {
    pub fn new(lease: Lease, framing: BodyFraming) -> ResponseBody {
        let mut body = ResponseBody { lease: Some(lease), state: framing.state, passed: framing.passed };
        if matches!(&body.state, BodyState::Framed(f) if f.ended()) {
            body.finish();
        }
        body
    }

    /// The endpoint's header lines that go to the client after the response's map.
    pub fn passed_head(&self) -> &PassedHead {
        &self.passed
    }

    /// Takes the passed header lines (the caller puts them in the response's map).
    pub fn take_passed_head(&mut self) -> PassedHead {
        std::mem::take(&mut self.passed)
    }

    /// The connection of a 101 answer, for the tunnel, with the bytes read past the head.
    pub fn into_upgraded(mut self) -> Option<(Stream, Bytes)> {
        Some(self.lease.take()?.conn.into_upgraded())
    }

    /// Marks the body over and hands the connection back to its pool if it can be reused.
    fn finish(&mut self) {
        self.state = BodyState::Done;
        if let Some(lease) = self.lease.take() {
            if lease.conn.reusable() {
                lease.release();
            }
        }
    }

    fn fail(&mut self, e: impl Into<BoxError>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.state = BodyState::Done;
        self.lease = None;
        Poll::Ready(Some(Err(e.into())))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.lease.as_mut().map(|l| &mut l.conn) else {
                return Poll::Ready(None);
            };
            if !conn.rbuf.is_empty() {
                let data = match &mut this.state {
                    BodyState::Done | BodyState::Switched => return Poll::Ready(None),
                    BodyState::UntilClose => conn.rbuf.split().freeze(),
                    BodyState::Framed(framed) => match framed.take(&mut conn.rbuf) {
                        Taken::Data(data) => {
                            if framed.ended() {
                                this.finish();
                            }
                            data
                        }
                        Taken::More => continue,
                        Taken::End => {
                            this.finish();
                            return Poll::Ready(None);
                        }
                        Taken::Bad => return this.fail(ExchangeError::BadResponse("malformed chunked body")),
                    },
                };
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            if let BodyState::Done | BodyState::Switched = this.state {
                return Poll::Ready(None);
            }
            conn.rbuf.reserve(READ_CHUNK);
            match poll_read_buf(Pin::new(&mut conn.stream), cx, &mut conn.rbuf) {
                Poll::Ready(Ok(0)) if matches!(this.state, BodyState::UntilClose) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(0)) => return this.fail(io::Error::from(io::ErrorKind::UnexpectedEof)),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return this.fail(e),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, BodyState::Done | BodyState::Switched)
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            BodyState::Framed(framed) => framed.size_hint(),
            BodyState::Done | BodyState::Switched => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}
