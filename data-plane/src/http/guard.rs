//! A transport wrapper that lets hyper see a request head only after [`head::check`] accepted it.
//!
//! The client's bytes are followed message by message: a head is held back until it is complete
//! and checked, then released with its body, whose end is found from the framing the check
//! returned. A refused head is never handed over: hyper reads end-of-stream instead (finishing any
//! earlier request normally, the server runs with `half_close`), and when hyper then shuts the
//! connection down the refusal is written by hand before the socket closes.
//!
//! Body bytes are read straight into hyper's buffer; only heads (and the bytes that arrive with
//! them) pass through the wrapper's own buffer, which lives as long as the connection.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::chunked::{ChunkScan, Scanned};
use super::head::{self, Framing, Head, Reject};

/// How far into the client's byte stream the wrapper is.
#[derive(Debug)]
enum State {
    Head,
    Length(u64),
    Chunked(ChunkScan),
    /// A head was refused: hyper sees end-of-stream; the answer goes out at shutdown.
    Refused(Box<Refusal>),
    /// The body framing broke: the bad byte went to hyper (which fails the same way), nothing more.
    Broken,
    /// After an upgrade request: the bytes may belong to another protocol and pass unchecked
    /// (the connection closes after the response unless the protocol switched).
    Passthrough,
}

/// The answer to a refused head, and the lingering close after it: the client's unread bytes are
/// read and dropped for a moment, so closing does not reset the connection (which could destroy
/// the answer before the client reads it).
#[derive(Debug)]
struct Refusal {
    answer: Vec<u8>,
    written: usize,
    write_closed: bool,
    linger: Option<Pin<Box<tokio::time::Sleep>>>,
    discarded: usize,
}

const LINGER: std::time::Duration = std::time::Duration::from_secs(1);
const LINGER_BYTES: usize = 1 << 20;

pub struct GuardedIo<S> {
    inner: S,
    state: State,
    /// Bytes read from the client and not yet given to hyper; the first `released` are checked.
    pending: BytesMut,
    released: usize,
    on_refuse: Option<Box<dyn FnOnce(Reject) + Send + Sync>>,
}

const READ_CHUNK: usize = 8 * 1024;

impl<S> GuardedIo<S> {
    /// `on_refuse` is told once when a head is refused (metrics, logs).
    pub fn new(inner: S, on_refuse: impl FnOnce(Reject) + Send + Sync + 'static) -> Self {
        GuardedIo {
            inner,
            state: State::Head,
            pending: BytesMut::new(),
            released: 0,
            on_refuse: Some(Box::new(on_refuse)),
        }
    }

    /// Classifies `pending[released..]`; returns whether anything changed.
    fn classify_pending(&mut self) -> bool {
        let unchecked = &self.pending[self.released..];
        if unchecked.is_empty() {
            return false;
        }
        match &mut self.state {
            State::Head => match head::check(unchecked) {
                Ok(Head::Partial) => false,
                Ok(Head::Complete { len, framing }) => {
                    self.released += len;
                    self.state = match framing {
                        Framing::Empty => State::Head,
                        Framing::Length(n) => State::Length(n),
                        Framing::Chunked => State::Chunked(ChunkScan::default()),
                        Framing::Upgrade => State::Passthrough,
                    };
                    true
                }
                Err(reject) => {
                    tracing::debug!(status = reject.status(), reason = reject.reason(), "request head refused");
                    if let Some(f) = self.on_refuse.take() {
                        f(reject);
                    }
                    // Earlier, checked requests still go to hyper; the refused head and anything
                    // after it never do.
                    self.pending.truncate(self.released);
                    self.state = State::Refused(Box::new(Refusal {
                        answer: reject.response(),
                        written: 0,
                        write_closed: false,
                        linger: None,
                        discarded: 0,
                    }));
                    true
                }
            },
            State::Length(_) | State::Chunked(_) | State::Passthrough => {
                self.released += follow_body(&mut self.state, unchecked);
                true
            }
            State::Refused(_) | State::Broken => false,
        }
    }
}

/// Follows body bytes; returns how many of `data` belong to the current body (moving to the next
/// head when it ends).
fn follow_body(state: &mut State, data: &[u8]) -> usize {
    match state {
        State::Length(left) => {
            let take = usize::try_from(*left).unwrap_or(usize::MAX).min(data.len());
            *left -= take as u64;
            if *left == 0 {
                *state = State::Head;
            }
            take
        }
        State::Chunked(scan) => match scan.scan(data) {
            Scanned::More => data.len(),
            Scanned::End(k) => {
                *state = State::Head;
                k
            }
            Scanned::Bad(k) => {
                // The bad byte still goes to hyper, which refuses it the same way.
                *state = State::Broken;
                k + 1
            }
        },
        State::Passthrough => data.len(),
        _ => 0,
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for GuardedIo<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.released > 0 {
                let n = this.released.min(buf.remaining());
                buf.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                this.released -= n;
                return Poll::Ready(Ok(()));
            }
            if matches!(this.state, State::Refused(_) | State::Broken) {
                return Poll::Ready(Ok(()));
            }
            if this.classify_pending() {
                continue;
            }
            let in_body = matches!(this.state, State::Length(_) | State::Chunked(_) | State::Passthrough);
            if in_body && this.pending.is_empty() {
                // Body bytes go straight into hyper's buffer; anything past the body's end is
                // taken back into `pending` to be checked as the next head.
                let before = buf.filled().len();
                ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
                let got = buf.filled().len() - before;
                if got == 0 {
                    return Poll::Ready(Ok(()));
                }
                let body = follow_body(&mut this.state, &buf.filled()[before..]);
                if body < got {
                    this.pending.extend_from_slice(&buf.filled()[before + body..]);
                    buf.set_filled(before + body);
                }
                if body > 0 {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            this.pending.reserve(READ_CHUNK);
            let got = ready!(tokio_util::io::poll_read_buf(Pin::new(&mut this.inner), cx, &mut this.pending))?;
            if got == 0 {
                // End of stream; an incomplete head is dropped (hyper never saw any of it).
                this.pending.clear();
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for GuardedIo<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let State::Refused(r) = &mut this.state else {
            return Pin::new(&mut this.inner).poll_shutdown(cx);
        };
        while r.written < r.answer.len() {
            let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &r.answer[r.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            r.written += n;
        }
        if !r.write_closed {
            ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
            ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
            r.write_closed = true;
        }
        let linger = r.linger.get_or_insert_with(|| Box::pin(tokio::time::sleep(LINGER)));
        let mut scratch = [0u8; 4096];
        while r.discarded < LINGER_BYTES {
            if linger.as_mut().poll(cx).is_ready() {
                break;
            }
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => break,
                Poll::Ready(Ok(())) => r.discarded += buf.filled().len(),
                Poll::Ready(Err(_)) => break,
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Feeds `input` in `chunk`-byte writes; returns what hyper would read, what the client got
    /// back after shutdown, and the refusal reported.
    async fn run(input: &[u8], chunk: usize) -> (Vec<u8>, Vec<u8>, Option<Reject>) {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let refused = Arc::new(Mutex::new(None));
        let seen = refused.clone();
        let mut io = GuardedIo::new(server, move |r| *seen.lock().unwrap() = Some(r));
        let data = input.to_vec();
        let writer = tokio::spawn(async move {
            for piece in data.chunks(chunk) {
                client.write_all(piece).await.unwrap();
                tokio::task::yield_now().await;
            }
            client.shutdown().await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut passed = Vec::new();
        io.read_to_end(&mut passed).await.unwrap();
        io.shutdown().await.unwrap();
        drop(io);
        let back = writer.await.unwrap();
        let r = *refused.lock().unwrap();
        (passed, back, r)
    }

    const GOOD: &[u8] = b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
GET /b HTTP/1.1\r\nHost: x\r\n\r\n\
POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nGET \
GET /d HTTP/1.1\r\nHost: x\r\n\r\n";
    const BAD: &[u8] =
        b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";

    #[tokio::test]
    async fn passes_good_requests_whatever_the_fragmentation() {
        for chunk in [1, 2, 3, 7, 64, 4096] {
            let (passed, back, refused) = run(GOOD, chunk).await;
            assert_eq!(passed, GOOD, "chunk {chunk}");
            assert!(back.is_empty());
            assert_eq!(refused, None);
        }
    }

    #[tokio::test]
    async fn stops_before_a_refused_head_and_answers_it() {
        let input = [GOOD, BAD, b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n"].concat();
        for chunk in [1, 5, 4096] {
            let (passed, back, refused) = run(&input, chunk).await;
            assert_eq!(passed, GOOD, "chunk {chunk}: nothing from the bad head on reaches hyper");
            assert_eq!(refused, Some(Reject::BadRequest("both Content-Length and Transfer-Encoding")));
            let back = String::from_utf8(back).unwrap();
            assert!(back.starts_with("HTTP/1.1 400 Bad Request\r\n") && back.contains("connection: close"), "{back}");
        }
    }

    #[tokio::test]
    async fn broken_chunked_framing_ends_the_stream_after_the_bad_byte() {
        let input =
            b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\nGET /b HTTP/1.1\r\n\r\n";
        let (passed, back, refused) = run(input, 4096).await;
        let upto = input.iter().position(|&b| b == b'X').unwrap() + 1;
        assert_eq!(passed, &input[..upto]);
        assert!(back.is_empty());
        assert_eq!(refused, None);
    }
}
