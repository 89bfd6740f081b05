//! The client connection as the server loop and a request body share it, and the request body:
//! read from the connection as the proxy forwards it, never buffered whole.
//!
//! Both run in the connection's one task, one after the other (the loop reads heads and writes
//! responses, the body reads while the request is forwarded), so the lock around the connection
//! is never contended; it only lets both hold it.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_util::either::Either;
use tokio_util::io::poll_read_buf;

use super::chunked::{ChunkScan, Framed, Taken};
use super::h2_body::H2Body;
use super::head::Framing;
use super::{BoxError, ClientBodyError};

/// A client connection, plaintext or TLS-terminated.
pub type ClientStream = Either<TcpStream, Box<TlsStream<TcpStream>>>;

/// Room made in the read buffer before each read.
pub const READ_CHUNK: usize = 16 * 1024;

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

pub struct Wire {
    pub io: ClientStream,
    /// Bytes read from the client and not consumed yet (the rest of a head, a body, the next
    /// pipelined request).
    pub rbuf: BytesMut,
    /// What is left of the current request's body.
    body: Left,
    /// `100 Continue` is owed before the body is read: how much of it is written.
    continue_owed: Option<usize>,
}

#[derive(Debug)]
enum Left {
    Done,
    Body(Framed),
    /// The body broke (bad framing, the client went away): the connection cannot be reused.
    Failed,
}

impl Wire {
    /// A connection of which `read` was already read.
    pub fn with_read(io: ClientStream, read: BytesMut) -> Wire {
        Wire { io, rbuf: read, body: Left::Done, continue_owed: None }
    }

    /// Whether the last request's body was read to its end (the next bytes are a new head).
    pub fn body_done(&self) -> bool {
        matches!(self.body, Left::Done)
    }
}

pub type SharedWire = Arc<Mutex<Wire>>;

pub fn lock(wire: &Mutex<Wire>) -> MutexGuard<'_, Wire> {
    // A panic cannot leave the wire half-updated in a way that matters: the connection then ends.
    wire.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How far a client is with sending a request body: the body records when the proxy waits for
/// the client's bytes and when the body ended, and the pipeline asks, when a timeout fires,
/// whether the client or the endpoint is slow.
#[derive(Debug)]
pub struct BodyProgress(std::sync::Mutex<Progress>);

/// What a request body is doing, as [`BodyProgress::state`] tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// The proxy is not waiting for the client (it has not asked for more, or has what it asked).
    Idle,
    /// The proxy has been waiting for the client's next bytes since then.
    Waiting(tokio::time::Instant),
    /// The body ended then.
    Done(tokio::time::Instant),
}

impl BodyProgress {
    fn new() -> Arc<BodyProgress> {
        Arc::new(BodyProgress(std::sync::Mutex::new(Progress::Idle)))
    }

    pub fn state(&self) -> Progress {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set(&self, f: impl FnOnce(Progress) -> Progress) {
        let mut p = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        *p = f(*p);
    }
}

/// A request's body as the client sends it, read from its connection on demand.
pub struct RequestBody {
    source: Source,
    /// `None` for a request without a body.
    progress: Option<Arc<BodyProgress>>,
}

enum Source {
    /// The request has no body.
    None,
    /// HTTP/1.1: the connection's bytes, framed by the head.
    Wire(SharedWire),
    /// HTTP/2: the stream's DATA frames (and trailers). Boxed: HTTP/1.1's requests stay small.
    H2(Box<H2Body>),
}

impl RequestBody {
    pub fn empty() -> RequestBody {
        RequestBody { source: Source::None, progress: None }
    }

    /// How far the client is with this body (`None`: the request has none).
    pub fn progress(&self) -> Option<Arc<BodyProgress>> {
        self.progress.clone()
    }

    /// An HTTP/2 request's body (see [`H2Body`]).
    pub fn h2(recv: h2::RecvStream, length: Option<u64>) -> RequestBody {
        if recv.is_end_stream() {
            return RequestBody::empty();
        }
        RequestBody { source: Source::H2(Box::new(H2Body::new(recv, length))), progress: Some(BodyProgress::new()) }
    }

    /// The body of the request whose head was just parsed off `wire`, framed by `framing`.
    pub fn start(wire: &SharedWire, framing: Framing, expect_continue: bool) -> RequestBody {
        let left = match framing {
            Framing::Length(n) if n > 0 => Left::Body(Framed::Length(n)),
            Framing::Chunked => Left::Body(Framed::Chunked(ChunkScan::default())),
            Framing::Empty | Framing::Length(_) | Framing::Upgrade => return RequestBody::empty(),
        };
        let mut w = lock(wire);
        w.body = left;
        w.continue_owed = expect_continue.then_some(0);
        drop(w);
        RequestBody { source: Source::Wire(wire.clone()), progress: Some(BodyProgress::new()) }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = match &mut this.source {
            Source::None => return Poll::Ready(None),
            Source::H2(b) => b.poll_frame(cx),
            Source::Wire(w) => poll_wire(w, cx),
        };
        if let Some(p) = &this.progress {
            let now = tokio::time::Instant::now;
            match &polled {
                Poll::Pending => p.set(|s| if s == Progress::Idle { Progress::Waiting(now()) } else { s }),
                Poll::Ready(Some(Ok(_))) if !this.source.ended() => p.set(|_| Progress::Idle),
                Poll::Ready(Some(Ok(_)) | None) => {
                    p.set(|s| if let Progress::Done(_) = s { s } else { Progress::Done(now()) })
                }
                Poll::Ready(Some(Err(_))) => p.set(|_| Progress::Idle),
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.source.ended()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::None => SizeHint::with_exact(0),
            Source::Wire(w) => match &lock(w).body {
                Left::Body(framed) => framed.size_hint(),
                Left::Done | Left::Failed => SizeHint::with_exact(0),
            },
            Source::H2(b) => b.size_hint(),
        }
    }
}

impl Source {
    fn ended(&self) -> bool {
        match self {
            Source::None => true,
            Source::Wire(w) => matches!(lock(w).body, Left::Done | Left::Failed),
            Source::H2(b) => b.is_end_stream(),
        }
    }
}

/// The next piece of an HTTP/1.1 body from the client's connection.
fn poll_wire(wire: &SharedWire, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    let mut guard = lock(wire);
    let w = &mut *guard;
    if matches!(w.body, Left::Done | Left::Failed) {
        return Poll::Ready(None);
    }
    if let Some(written) = &mut w.continue_owed {
        // The client waits for this before sending the body (RFC 9110 §10.1.1).
        while *written < CONTINUE.len() {
            match ready!(Pin::new(&mut w.io).poll_write(cx, &CONTINUE[*written..])) {
                Ok(0) | Err(_) => return fail(w, io::ErrorKind::WriteZero.into()),
                Ok(n) => *written += n,
            }
        }
        if ready!(Pin::new(&mut w.io).poll_flush(cx)).is_err() {
            return fail(w, io::ErrorKind::BrokenPipe.into());
        }
        w.continue_owed = None;
    }
    loop {
        if !w.rbuf.is_empty() {
            let Left::Body(framed) = &mut w.body else { return Poll::Ready(None) };
            // What follows the body stays in the buffer: the next request.
            match framed.take(&mut w.rbuf) {
                Taken::Data(data) => {
                    if framed.ended() {
                        w.body = Left::Done;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Taken::More => continue,
                Taken::End => {
                    w.body = Left::Done;
                    return Poll::Ready(None);
                }
                Taken::Bad => return fail(w, io::Error::new(io::ErrorKind::InvalidData, "malformed chunked body")),
            }
        }
        w.rbuf.reserve(READ_CHUNK);
        match ready!(poll_read_buf(Pin::new(&mut w.io), cx, &mut w.rbuf)) {
            Ok(0) => return fail(w, io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => {}
            Err(e) => return fail(w, e),
        }
    }
}

fn fail(w: &mut Wire, e: io::Error) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    w.body = Left::Failed;
    w.continue_owed = None;
    Poll::Ready(Some(Err(Box::new(ClientBodyError(e)))))
}
