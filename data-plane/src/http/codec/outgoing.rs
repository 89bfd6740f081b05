//! A request's body as the proxy sends it to an endpoint, on any try.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::request_body::RequestBody;
use super::{BodyTooLarge, BoxError};

pub enum RequestOut {
    /// No body (a bodyless request, or a retry of one).
    Empty,
    /// Streamed from the client.
    Incoming(RequestBody),
    /// Streamed from the client, which may send at most `left` more bytes (of a limit of `max`);
    /// past it the stream fails with [`BodyTooLarge`].
    Capped { body: RequestBody, left: u64, max: u64 },
    /// Read in full so that a retry can send it again; goes out with the head in one write.
    Buffered(Option<Bytes>),
}

impl RequestOut {
    /// The whole body when it is in memory.
    pub fn in_memory(&self) -> Option<&Bytes> {
        match self {
            RequestOut::Buffered(b) => b.as_ref(),
            _ => None,
        }
    }
}

impl Body for RequestOut {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestOut::Empty => Poll::Ready(None),
            RequestOut::Incoming(b) => Pin::new(b).poll_frame(cx),
            RequestOut::Capped { body, left, max } => {
                let polled = Pin::new(body).poll_frame(cx);
                if let Poll::Ready(Some(Ok(frame))) = &polled {
                    let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                    match left.checked_sub(len) {
                        Some(l) => *left = l,
                        None => return Poll::Ready(Some(Err(Box::new(BodyTooLarge(*max))))),
                    }
                }
                polled
            }
            RequestOut::Buffered(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestOut::Empty => true,
            RequestOut::Buffered(b) => b.is_none(),
            RequestOut::Incoming(b) | RequestOut::Capped { body: b, .. } => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestOut::Empty => SizeHint::with_exact(0),
            RequestOut::Buffered(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            RequestOut::Incoming(b) | RequestOut::Capped { body: b, .. } => b.size_hint(),
        }
    }
}
