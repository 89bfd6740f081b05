//! The body of every response the proxy writes to a client: no boxing, no allocation per
//! request on the HTTP/1.1 path.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::codec::headers::PassedHead;
use super::codec::BoxError;
use super::tunnel::Switched;
use super::upstream::UpstreamBody;
use crate::table::{EndpointGuard, RequestPermit};

pub enum ProxyBody {
    /// No body.
    Empty,
    /// A short answer written by the proxy itself.
    Static(Option<Bytes>),
    /// A response body streamed from an endpoint; the guard counts the request as active on that
    /// endpoint until the body is finished or dropped, and the circuit breaker counts it in flight
    /// until then too (`permit`). (The body itself hands its connection back to the pool.)
    Upstream { body: UpstreamBody, endpoint: Option<EndpointGuard>, permit: Option<RequestPermit> },
    /// The "body" of a 101: the endpoint's connection, which the server splices with the
    /// client's once the 101 is written (see `tunnel.rs`).
    Switched(Box<Switched>),
}

impl ProxyBody {
    pub fn text(s: &'static str) -> Self {
        ProxyBody::Static(Some(Bytes::from_static(s.as_bytes())))
    }

    /// Moves an HTTP/1.1 endpoint's header lines into `headers`, so that they can be changed
    /// there like the rest (they otherwise go to the client as they came, unparsed).
    pub fn passed_into(&mut self, headers: &mut http::HeaderMap) {
        if let ProxyBody::Upstream { body, .. } = self {
            if let Some(passed) = body.take_passed_head() {
                super::codec::headers::append_lines(headers, passed.lines());
            }
        }
    }

    /// An HTTP/1.1 endpoint's header lines that go to the client after the response's own headers.
    pub fn passed_head(&self) -> Option<&PassedHead> {
        match self {
            ProxyBody::Upstream { body, .. } => body.passed_head(),
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
            ProxyBody::Static(b) => b.is_none(),
            ProxyBody::Upstream { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Empty | ProxyBody::Switched(_) => SizeHint::with_exact(0),
            ProxyBody::Static(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ProxyBody::Upstream { body, .. } => body.size_hint(),
        }
    }
}
