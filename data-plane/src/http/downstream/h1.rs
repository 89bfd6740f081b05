//! Serving one client connection, HTTP/1.1: each head is read, checked and parsed once
//! (`head::parse`), answered by the proxy (`proxy::handle`), and the response written with its
//! framing; keep-alive, pipelining, `100 Continue`, protocol switches and drains are handled here.
//!
//! ```text
//!  read ──▶ head::parse ──▶ refused: 400/414/431 written, lingering close
//!               │ ok
//!               ▼
//!  Request { parts, RequestBody (reads this connection on demand) } ──▶ proxy::handle ──▶ Response
//!                                                                                          │
//!  next head ◀── keep-alive? ◀── body frames, coalesced with the head ◀── response_head::encode
//!                                          └─ a 101: the connection becomes a tunnel (tunnel.rs)
//! ```
//!
//! The whole exchange runs in the connection's task: no task or channel per request, and the
//! head's bytes are parsed once, straight into the request (values share the read buffer).

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Method, Request, Response, StatusCode};
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::either::Either;
use tokio_util::io::poll_read_buf;

use super::h2 as h2_server;
use crate::http::body::ProxyBody;
use crate::http::codec::chunked::{push_chunk, LAST_CHUNK};
use crate::http::codec::head::{self, Framing, Reject, RequestHead};
use crate::http::codec::request_body::{lock, ClientStream, RequestBody, SharedWire, Wire, READ_CHUNK};
use crate::http::codec::response_head::{self, BodyOut, HeadOptions};
use crate::http::proxy::{self, Downstream};
use crate::http::tunnel;
use crate::lazy_timer::LazyTimer;
use crate::listeners::Phase;
use crate::phase_watch::PhaseWatch;
use crate::state::ConnCtx;

/// How long an idle keep-alive connection is kept while the process is near its connection cap.
/// How long an idle keep-alive connection of a draining listener waits for one more request.
const DRAIN_LINGER: Duration = Duration::from_secs(1);
/// Response bytes gathered before a write: the head and the frames already there go out together.
const COALESCE: usize = 64 * 1024;
/// Before closing on a client that may still be sending, its bytes are read and dropped for a
/// moment: closing with unread bytes resets the connection, which can destroy the answer before
/// the client reads it.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 1 << 20;

/// Serves a plain http listener's connection: HTTP/2 when it opens with the h2 preface (prior
/// knowledge) and the listener offers HTTP/2, else HTTP/1.1. The bytes read to tell which are
/// the first the chosen protocol reads.
pub async fn serve_plain(mut stream: TcpStream, conn: Arc<ConnCtx>, phase: watch::Receiver<Phase>) {
    let opts = conn.http_options();
    let mut first = BytesMut::new();
    if opts.http2 {
        match tokio::time::timeout(opts.header_timeout, sniff(&mut stream, &mut first)).await {
            Ok(Some(true)) => {
                // A copy of the few bytes read: the read buffer is not held for the connection's life.
                let prefix = Bytes::copy_from_slice(&first);
                drop(first);
                let io = h2_server::Prefixed::new(prefix, stream);
                return h2_server::serve(io, conn, phase, opts).await;
            }
            Ok(Some(false)) => {}
            Ok(None) | Err(_) => return,
        }
    }
    if !opts.http1 {
        return tracing::debug!("not an HTTP/2 client on an HTTP/2-only listener");
    }
    serve_read(Either::Left(stream), first, conn, phase).await;
}

/// Reads until the bytes tell: `true` for the HTTP/2 preface, `false` as soon as they differ
/// from it; `None` when the client closes first.
async fn sniff(stream: &mut TcpStream, buf: &mut BytesMut) -> Option<bool> {
    loop {
        let n = buf.len().min(h2_server::PREFACE.len());
        if buf[..n] != h2_server::PREFACE[..n] {
            return Some(false);
        }
        if n == h2_server::PREFACE.len() {
            return Some(true);
        }
        buf.reserve(READ_CHUNK);
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// Serves `stream` (a plain TCP connection, or a terminated TLS one for https listeners) as
/// HTTP/1.1 until the client or the listener ends it.
pub async fn serve(stream: ClientStream, conn: Arc<ConnCtx>, phase: watch::Receiver<Phase>) {
    serve_read(stream, BytesMut::new(), conn, phase).await;
}

/// [`serve`], with the bytes already read from the client.
async fn serve_read(stream: ClientStream, read: BytesMut, conn: Arc<ConnCtx>, phase: watch::Receiver<Phase>) {
    let header_timeout = conn.http_options().header_timeout;
    let down = Downstream::new(conn);
    let server = Server {
        header_timeout,
        wire: Arc::new(Mutex::new(Wire::with_read(stream, read))),
        phase: PhaseWatch::of_listener(phase),
        out: Vec::new(),
        head_timer: LazyTimer::default(),
        request_timer: LazyTimer::default(),
    };
    server.run(&down).await;
}

struct Server {
    /// How long a client gets to send a complete request head (an idle keep-alive one too).
    header_timeout: Duration,
    wire: SharedWire,
    phase: PhaseWatch,
    /// Response bytes on their way out.
    out: Vec<u8>,
    /// The header read timeout, and the proxy's request deadlines: one timer each per
    /// connection, not one per request.
    head_timer: LazyTimer,
    request_timer: LazyTimer,
}

enum Next {
    Head(Box<RequestHead>),
    Refused(Reject),
    /// End of stream, an error, the header timeout, or a drain: close.
    Close,
}

impl Server {
    async fn run(mut self, down: &Downstream) {
        loop {
            let head = match self.next_head().await {
                Next::Head(h) => *h,
                Next::Refused(reject) => {
                    tracing::debug!(status = reject.status(), reason = reject.reason(), "request head refused");
                    down.ctx.shared.metrics.unrouted.record(reject.status());
                    self.out.clear();
                    self.out.extend_from_slice(&reject.response());
                    if self.write_out().await {
                        self.close(true).await;
                    }
                    return;
                }
                Next::Close => return self.close(false).await,
            };
            let RequestHead { parts, framing, keep_alive, expect_continue } = head;
            let version = parts.version;
            let head_request = parts.method == Method::HEAD;
            let body = RequestBody::start(&self.wire, framing, expect_continue);
            let Some(resp) = self.answer(Request::from_parts(parts, body), down).await else {
                return; // the listener was removed
            };
            let (parts, body) = resp.into_parts();
            if parts.status == StatusCode::SWITCHING_PROTOCOLS {
                if let ProxyBody::Switched(switched) = body {
                    return self.switch(&parts, version, *switched).await;
                }
            }
            // After an upgrade request that did not switch, the bytes may be another protocol's.
            let keep_alive = keep_alive
                && framing != Framing::Upgrade
                && self.phase.now() == Phase::Serving
                && lock(&self.wire).body_done()
                && !response_head::says_close(&parts.headers);
            let opts =
                HeadOptions { version, no_body: response_head::bodiless(head_request, parts.status), keep_alive };
            self.out.clear();
            let (body_out, keep_alive) =
                response_head::encode(&mut self.out, &parts, body.passed_head(), body.size_hint(), opts);
            drop(parts);
            let written = if opts.no_body { self.write_out().await } else { self.write_body(body, body_out).await };
            if !written {
                return;
            }
            if !keep_alive {
                let unread = !lock(&self.wire).body_done();
                return self.close(unread).await;
            }
        }
    }

    /// Reads until a complete head is buffered (or the connection should close).
    async fn next_head(&mut self) -> Next {
        let mut deadline = None;
        let mut drain_deadline = None;
        // How much of the buffer the last parse saw, when it needed more.
        let mut seen = 0;
        poll_fn(|cx| {
            match self.phase.poll(cx) {
                Phase::Serving => {}
                // A request the client sent as the drain began is still served (its response
                // says close): closing at once would race it, and fail it.
                Phase::Draining => _ = drain_deadline.get_or_insert_with(|| Instant::now() + DRAIN_LINGER),
                Phase::Abort => return Poll::Ready(Next::Close),
            }
            let mut w = lock(&self.wire);
            let w = &mut *w;
            let header_timeout = self.header_timeout;
            let deadline = *deadline.get_or_insert_with(|| {
                // Near the process's connection cap, idle keep-alive connections make room first.
                let idle = w.rbuf.is_empty();
                Instant::now() + if idle { crate::listeners::idle_allowance(header_timeout) } else { header_timeout }
            });
            loop {
                if !w.rbuf.is_empty() && head::worth_parsing(&w.rbuf, seen) {
                    match head::parse(&mut w.rbuf) {
                        Ok(Some(h)) => return Poll::Ready(Next::Head(Box::new(h))),
                        Ok(None) => seen = w.rbuf.len(),
                        Err(reject) => return Poll::Ready(Next::Refused(reject)),
                    }
                }
                w.rbuf.reserve(READ_CHUNK);
                match poll_read_buf(Pin::new(&mut w.io), cx, &mut w.rbuf) {
                    // End of stream: an incomplete head is dropped.
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Next::Close),
                    Poll::Ready(Ok(_)) => {}
                    Poll::Pending => break,
                }
            }
            let deadline = match drain_deadline {
                Some(d) if w.rbuf.is_empty() => d.min(deadline),
                _ => deadline,
            };
            if self.head_timer.poll_expired(cx, deadline) {
                tracing::debug!("request head timeout");
                // A head begun gets 408 (as NGINX and HAProxy answer); an idle connection just closes.
                return Poll::Ready(if w.rbuf.is_empty() {
                    Next::Close
                } else {
                    Next::Refused(head::Reject::HeadTimeout)
                });
            }
            Poll::Pending
        })
        .await
    }

    /// The proxy's answer; `None` when the listener is removed meanwhile (the connection is cut).
    async fn answer(&mut self, req: Request<RequestBody>, down: &Downstream) -> Option<Response<ProxyBody>> {
        let handling = proxy::handle(req, down, &mut self.request_timer);
        tokio::pin!(handling);
        let phase = &mut self.phase;
        poll_fn(|cx| {
            if phase.poll(cx) == Phase::Abort {
                return Poll::Ready(None);
            }
            handling.as_mut().poll(cx).map(Some)
        })
        .await
    }

    /// Writes the head in `out` and the body after it; returns whether it all went out.
    async fn write_body(&mut self, mut body: ProxyBody, framing: BodyOut) -> bool {
        let chunked = framing == BodyOut::Chunked;
        let mut written = 0;
        let mut ended = false;
        let Server { wire, phase, out, .. } = self;
        poll_fn(|cx| loop {
            if phase.poll(cx) == Phase::Abort {
                return Poll::Ready(false);
            }
            // Frames that are already there join the bytes waiting to go out.
            if !ended && out.len() < COALESCE {
                match Pin::new(&mut body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        match frame.data_ref().filter(|d| !d.is_empty()) {
                            Some(data) if chunked => push_chunk(out, data),
                            Some(data) => out.extend_from_slice(data),
                            None => {}
                        }
                        continue;
                    }
                    Poll::Ready(Some(Err(e))) => {
                        // The client must not take a cut body for a whole one: the connection ends.
                        tracing::debug!(error = %e, "response body failed");
                        return Poll::Ready(false);
                    }
                    Poll::Ready(None) => {
                        ended = true;
                        if chunked {
                            out.extend_from_slice(LAST_CHUNK);
                        }
                        continue;
                    }
                    Poll::Pending => {}
                }
            }
            let mut w = lock(wire);
            if written < out.len() {
                match Pin::new(&mut w.io).poll_write(cx, &out[written..]) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(false),
                    Poll::Ready(Ok(n)) => {
                        written += n;
                        if written == out.len() {
                            out.clear();
                            written = 0;
                        }
                        continue;
                    }
                    Poll::Pending => return Poll::Pending,
                }
            }
            if !ended {
                return Poll::Pending;
            }
            // TLS keeps records in its own buffer until flushed; on a plain socket this is free.
            return Pin::new(&mut w.io).poll_flush(cx).map(|r| r.is_ok());
        })
        .await
    }

    /// Writes all of `out`; returns whether it went.
    async fn write_out(&mut self) -> bool {
        self.write_body(ProxyBody::Empty, BodyOut::Plain).await
    }

    /// Writes the 101 and turns the connection into a tunnel to the endpoint.
    async fn switch(mut self, parts: &http::response::Parts, version: http::Version, switched: tunnel::Switched) {
        let opts = HeadOptions { version, no_body: true, keep_alive: true };
        self.out.clear();
        response_head::encode(&mut self.out, parts, None, http_body::SizeHint::with_exact(0), opts);
        if !self.write_out().await {
            return;
        }
        // The request had no body: nothing else holds the wire.
        let Ok(wire) = Arc::try_unwrap(self.wire).map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner())) else {
            return;
        };
        let Wire { io, rbuf, .. } = wire;
        tunnel::splice(io, rbuf.freeze(), switched, &mut self.phase).await;
    }

    /// Ends the connection: our side's FIN, then (`linger`: the client may still be sending)
    /// its bytes read and dropped for a moment so that closing does not reset the connection.
    async fn close(self, linger: bool) {
        let Server { wire, .. } = self;
        let shut = poll_fn(|cx| Pin::new(&mut lock(&wire).io).poll_shutdown(cx));
        if tokio::time::timeout(LINGER, shut).await.is_err() || !linger {
            return;
        }
        let mut discarded = 0;
        let mut scratch = [0u8; 4096];
        let drain = poll_fn(|cx| {
            let mut w = lock(&wire);
            while discarded < LINGER_BYTES {
                let mut buf = ReadBuf::new(&mut scratch);
                match Pin::new(&mut w.io).poll_read(cx, &mut buf) {
                    Poll::Ready(Ok(())) if !buf.filled().is_empty() => discarded += buf.filled().len(),
                    Poll::Ready(_) => return Poll::Ready(()),
                    Poll::Pending => return Poll::Pending,
                }
            }
            Poll::Ready(())
        });
        let _ = tokio::time::timeout(LINGER, drain).await;
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    use super::*;
    use crate::state::Shared;

    /// A client connected to [`serve`] on a real socket, with the clock paused: the runtime jumps
    /// to the next timer whenever nothing else can run.
    async fn connected() -> (TcpStream, tokio::task::JoinHandle<()>, watch::Sender<Phase>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        let conn =
            Arc::new(ConnCtx { listener: Arc::from("web"), peer, scheme: "http", shared: Arc::new(Shared::new()) });
        let (tx, rx) = watch::channel(Phase::Serving);
        (client, tokio::spawn(serve(Either::Left(stream), conn, rx)), tx)
    }

    /// Waits for the server to close; asserts that came at the header timeout after `started`
    /// (virtual time), with a 408 when a head was begun and nothing for an idle connection.
    async fn closed_at_the_timeout<R: AsyncRead + Unpin>(client: &mut R, started: Instant, begun: bool) {
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        let answer = String::from_utf8_lossy(&rest);
        if begun {
            assert!(answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{answer}");
            assert!(answer.contains("connection: close"), "{answer}");
        } else {
            assert!(rest.is_empty(), "an idle connection just closes: {answer}");
        }
        let after = started.elapsed();
        let timeout = crate::table::HttpOptions::default().header_timeout;
        assert!(after >= timeout && after < timeout + Duration::from_secs(2), "{after:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_left_unfinished_is_closed_at_the_header_timeout() {
        let (mut client, server, _phase) = connected().await;
        let started = Instant::now();
        client.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        closed_at_the_timeout(&mut client, started, true).await;
        server.await.unwrap();
    }

    /// The bound is on the whole head, not on each read: a client trickling a header line every
    /// 10 s (slowloris) is closed at 30 s all the same. An idle connection gets the same bound.
    #[tokio::test(start_paused = true)]
    async fn a_trickled_head_and_an_idle_connection_get_the_same_bound() {
        let (mut client, server, _phase) = connected().await;
        let started = Instant::now();
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let (mut reader, mut writer) = client.split();
        let trickle = async {
            for i in 0.. {
                tokio::time::sleep(Duration::from_secs(10)).await;
                if writer.write_all(format!("x-line-{i}: 1\r\n").as_bytes()).await.is_err() {
                    return;
                }
            }
        };
        tokio::select! {
            () = closed_at_the_timeout(&mut reader, started, true) => {}
            () = trickle => unreachable!(),
        }
        server.await.unwrap();

        let (mut idle, server, _phase) = connected().await;
        closed_at_the_timeout(&mut idle, Instant::now(), false).await;
        server.await.unwrap();
    }
}
