//! A body received on an HTTP/2 stream (a client's request, an endpoint's response), as the
//! proxy's bodies are polled: DATA frames, then the trailers if any.
//!
//! Flow control runs end to end: the window is given back (WINDOW_UPDATE) only as each frame is
//! taken by the side forwarding it, which takes the next only once it could send the last. A
//! slow reader on the far side thus stops the sender at one window, per stream and connection.

use std::io;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

use super::body::{BoxError, ClientBodyError};
use super::upstream_h2::StreamSlot;

pub struct H2Body {
    recv: h2::RecvStream,
    /// What is left of the announced `content-length`, if any (h2 checks the DATA against it).
    length: Option<u64>,
    /// DATA is over: the trailers (if any) come next.
    data_done: bool,
    ended: bool,
    /// Whose stream this is: a request's failure is the client's doing, a response's the endpoint's.
    from_client: bool,
    /// A response's stream counted on its connection until the body is done with.
    _slot: Option<StreamSlot>,
}

impl H2Body {
    /// A client's request body.
    pub fn new(recv: h2::RecvStream, length: Option<u64>) -> H2Body {
        H2Body { recv, length, data_done: false, ended: false, from_client: true, _slot: None }
    }

    /// An endpoint's response body, holding its stream's place on the connection.
    pub fn response(recv: h2::RecvStream, length: Option<u64>, slot: StreamSlot) -> H2Body {
        H2Body { recv, length, data_done: false, ended: false, from_client: false, _slot: Some(slot) }
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
