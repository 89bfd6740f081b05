//! The one body type of the proxy, both directions: no boxing, no allocation per request.

use std::pin::Pin;
use std::task::{Context, Poll};

use super::h2_body::H2Body;
use super::request_body::RequestBody;
use super::tunnel::Switched;
use super::upstream_conn::{PassedHead, ResponseBody};
use crate::table::{EndpointGuard, RequestPermit};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body went past its route's `max_request_body_bytes` while streaming.
#[derive(Debug, thiserror::Error)]
#[error("request body over {0} bytes")]
pub struct BodyTooLarge(pub u64);

/// The client's request body broke while it was forwarded: its chunked framing is malformed, or
/// the client's connection failed or ended inside it. The client's doing, never the endpoint's.
#[derive(Debug, thiserror::Error)]
#[error("request body from the client: {0}")]
pub struct ClientBodyError(#[source] pub std::io::Error);

pub enum ProxyBody {
    /// No body (a retried bodyless request, an empty answer).
    Empty,
    /// A short answer written by the proxy itself.
    Static(Option<Bytes>),
    /// A request body streamed from the client.
    Incoming(RequestBody),
    /// A request body streamed from the client that may carry at most `left` more bytes (of a
    /// limit of `max`); past it the stream fails with [`BodyTooLarge`].
    Capped { body: RequestBody, left: u64, max: u64 },
    /// A response body streamed from an endpoint; the guard counts the request as active on that
    /// endpoint until the body is finished or dropped, and the circuit breaker counts it in flight
    /// until then too (`permit`). (The body itself hands its connection back to the pool.)
    Upstream { body: UpstreamBody, endpoint: Option<EndpointGuard>, permit: Option<RequestPermit> },
    /// A request body read in full so that a retry can send it again.
    Buffered(Option<Bytes>),
    /// The "body" of a 101: the endpoint's connection, which the server splices with the
    /// client's once the 101 is written (see `tunnel.rs`).
    Switched(Box<Switched>),
}

/// An endpoint's response body, by the protocol spoken to it.
pub enum UpstreamBody {
    H1(ResponseBody),
    /// Boxed: rarer, and the HTTP/1.1 path's bodies stay as small as they were.
    H2(Box<H2Body>),
}

impl UpstreamBody {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self {
            UpstreamBody::H1(b) => Pin::new(b).poll_frame(cx),
            UpstreamBody::H2(b) => b.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::H1(b) => b.is_end_stream(),
            UpstreamBody::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::H1(b) => b.size_hint(),
            UpstreamBody::H2(b) => b.size_hint(),
        }
    }
}

impl ProxyBody {
    pub fn text(s: &'static str) -> Self {
        ProxyBody::Static(Some(Bytes::from_static(s.as_bytes())))
    }

    /// An endpoint's header lines that go to the client after the response's own headers.
    pub fn passed_head(&self) -> Option<&PassedHead> {
        match self {
            ProxyBody::Upstream { body: UpstreamBody::H1(body), .. } => Some(body.passed_head()),
            _ => None,
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Empty | ProxyBody::Switched(_) => Poll::Ready(None),
            ProxyBody::Static(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Incoming(b) => Pin::new(b).poll_frame(cx),
            ProxyBody::Capped { body, left, max } => {
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
            ProxyBody::Buffered(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Upstream { body, endpoint, permit } => {
                let polled = body.poll_frame(cx);
                if matches!(polled, Poll::Ready(None | Some(Err(_)))) || body.is_end_stream() {
                    // The exchange is over: the endpoint is no longer busy with it.
                    endpoint.take();
                    permit.take();
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Empty | ProxyBody::Switched(_) => true,
            ProxyBody::Static(b) | ProxyBody::Buffered(b) => b.is_none(),
            ProxyBody::Incoming(b) | ProxyBody::Capped { body: b, .. } => b.is_end_stream(),
            ProxyBody::Upstream { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Empty | ProxyBody::Switched(_) => SizeHint::with_exact(0),
            ProxyBody::Static(b) | ProxyBody::Buffered(b) => {
                SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64))
            }
            ProxyBody::Incoming(b) | ProxyBody::Capped { body: b, .. } => b.size_hint(),
            ProxyBody::Upstream { body, .. } => body.size_hint(),
        }
    }
}
