//! A body received on an HTTP/2 stream (a client's request, an endpoint's response), as the
//! proxy's bodies are polled: DATA frames, then the trailers if any.
//!
//! Flow control runs end to end: the window is given back (WINDOW_UPDATE) only as each frame is
//! taken by the side forwarding it, which takes the next only once it could send the last. A
//! slow reader on the far side thus stops the sender at one window, per stream and connection.

use std::io;
use std::task::{Context, Poll};

use std::future::poll_fn;

use bytes::Bytes;
use h2::{Reason, SendStream};
use http_body::{Body, Frame, SizeHint};

use super::{BoxError, ClientBodyError};

pub struct H2Body {
    recv: h2::RecvStream,
    /// What is left of the announced `content-length`, if any (h2 checks the DATA against it).
    length: Option<u64>,
    /// DATA is over: the trailers (if any) come next.
    data_done: bool,
    ended: bool,
    /// Whose stream this is: a request's failure is the client's doing, a response's the endpoint's.
    from_client: bool,
}

impl H2Body {
    /// A client's request body.
    pub fn new(recv: h2::RecvStream, length: Option<u64>) -> H2Body {
        H2Body { recv, length, data_done: false, ended: false, from_client: true }
    }

    /// An endpoint's response body.
    pub fn response(recv: h2::RecvStream, length: Option<u64>) -> H2Body {
        H2Body { from_client: false, ..H2Body::new(recv, length) }
    }

    pub fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if !self.data_done {
            match self.recv.poll_data(cx) {
                Poll::Ready(Some(Ok(data))) => {
                    // Taken by the forwarding side: the peer may send this much more.
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    if let Some(left) = &mut self.length {
                        *left = left.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(self.fail(e)))),
                Poll::Ready(None) => self.data_done = true,
                Poll::Pending => return Poll::Pending,
            }
        }
        match self.recv.poll_trailers(cx) {
            Poll::Ready(Ok(t)) => {
                self.ended = true;
                Poll::Ready(t.map(|t| Ok(Frame::trailers(t))))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(self.fail(e)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn fail(&mut self, e: h2::Error) -> BoxError {
        self.ended = true;
        if self.from_client {
            Box::new(ClientBodyError(io::Error::other(e)))
        } else {
            Box::new(e)
        }
    }

    pub fn is_end_stream(&self) -> bool {
        self.ended || self.recv.is_end_stream()
    }

    pub fn size_hint(&self) -> SizeHint {
        match self.length {
            Some(n) if !self.data_done => SizeHint::with_exact(n),
            _ if self.is_end_stream() => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// Sends `data` in pieces the stream's and connection's windows take, waiting for them to open.
pub async fn send_data(send: &mut SendStream<Bytes>, mut data: Bytes, end: bool) -> Result<(), h2::Error> {
    if data.is_empty() {
        return if end { send.send_data(data, true) } else { Ok(()) };
    }
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let n = match poll_fn(|cx| send.poll_capacity(cx)).await {
            Some(Ok(n)) => n,
            Some(Err(e)) => return Err(e),
            None => return Err(h2::Error::from(Reason::STREAM_CLOSED)),
        };
        if n == 0 {
            continue;
        }
        let piece = data.split_to(n.min(data.len()));
        send.send_data(piece, end && data.is_empty())?;
    }
    Ok(())
}

/// How sending a body on a stream ended.
pub enum Sent {
    /// All of it, trailers included, and the end of the stream.
    Done,
    /// The peer reset the stream or the connection went, or `stopped` said to stop.
    Reset,
    /// The body failed: the stream was reset (the peer must not take a cut body for a whole one).
    Failed(BoxError),
}

/// Streams `body` on `send` as the stream's and connection's windows allow, its trailers too;
/// `stopped` is asked at each wait (a listener's abort). A failing body resets the stream with
/// `reason`.
pub async fn send_body<B>(
    send: &mut SendStream<Bytes>,
    body: B,
    reason: Reason,
    mut stopped: impl FnMut(&mut Context<'_>) -> bool,
) -> Sent
where
    B: Body<Data = Bytes, Error = BoxError>,
{
    let mut body = std::pin::pin!(body);
    loop {
        let frame = poll_fn(|cx| {
            if stopped(cx) || send.poll_reset(cx).is_ready() {
                return Poll::Ready(None);
            }
            body.as_mut().poll_frame(cx).map(Some)
        })
        .await;
        let Some(frame) = frame else { return Sent::Reset };
        let frame = match frame {
            None => return if send.send_data(Bytes::new(), true).is_ok() { Sent::Done } else { Sent::Reset },
            Some(Err(e)) => {
                send.send_reset(reason);
                return Sent::Failed(e);
            }
            Some(Ok(frame)) => frame,
        };
        match frame.into_data() {
            Ok(data) => {
                let end = body.is_end_stream();
                if send_data(send, data, end).await.is_err() {
                    return Sent::Reset;
                }
                if end {
                    return Sent::Done;
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    return if send.send_trailers(trailers).is_ok() { Sent::Done } else { Sent::Reset };
                }
            }
        }
    }
}
