//! Protocol switches (WebSocket and the like): the endpoint's 101 turns both connections into
//! one spliced tunnel that lives as long as its listener allows. The server writes the 101, then
//! runs the tunnel in the connection's own task (already among the connections a drain waits for).

use std::future::{poll_fn, Future};
use std::task::Poll;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, Version};
use http_body::Body as _;
use tokio::io::AsyncWriteExt;

use super::body::ProxyBody;
use super::codec::headers::strip_hop_by_hop;
use super::codec::request_body::{ClientStream, RequestBody};
use super::upstream::h1::{ResponseBody, Stream};
use crate::listeners::Phase;
use crate::phase_watch::PhaseWatch;
use crate::table::{EndpointGuard, RequestPermit};

/// The protocol an HTTP/1.1 request without a body asks to switch to (`Upgrade`), as
/// `head::framing` decides for the server.
pub fn upgrade_protocol(req: &Request<RequestBody>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 || !req.body().is_end_stream() {
        return None;
    }
    req.headers().get(header::UPGRADE).filter(|v| super::codec::switches_protocol(v.as_bytes())).cloned()
}

/// What a 101 hands the server: the endpoint's connection, the bytes it sent right behind its
/// 101, and what the exchange holds for as long as the tunnel lives (the endpoint's active
/// count, the breaker's request permit).
pub struct Switched {
    upstream: Stream,
    early: Bytes,
    _held: (EndpointGuard, Option<RequestPermit>),
}

/// The endpoint's 101 to an upgrade request: it goes to the client with its `Upgrade`, and with
/// the endpoint's connection as its body. (Any other answer to an upgrade request is an ordinary
/// response, which `handle` marks `connection: close`: bytes after an upgrade request are never
/// checked as HTTP, see `head::Framing::Upgrade`.)
pub fn switch_protocols(
    resp: Response<ResponseBody>,
    endpoint: EndpointGuard,
    permit: Option<RequestPermit>,
    cookie: Option<HeaderValue>,
) -> Response<ProxyBody> {
    let (mut head, body) = resp.into_parts();
    let Some((upstream, early)) = body.into_upgraded() else {
        return Response::from_parts(head, ProxyBody::Empty);
    };
    let protocol = head.headers.get(header::UPGRADE).cloned();
    strip_hop_by_hop(&mut head.headers);
    head.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Some(p) = protocol {
        head.headers.insert(header::UPGRADE, p);
    }
    if let Some(c) = cookie {
        head.headers.append(header::SET_COOKIE, c);
    }
    let switched = Switched { upstream, early, _held: (endpoint, permit) };
    Response::from_parts(head, ProxyBody::Switched(Box::new(switched)))
}

/// Splices the client's connection (with the bytes it sent after its upgrade request) and the
/// endpoint's until either closes. Like an L4 connection it outlives a drain, not the listener's
/// removal.
pub async fn splice(mut client: ClientStream, client_early: Bytes, switched: Switched, phase: &mut PhaseWatch) {
    let Switched { mut upstream, early, _held } = switched;
    if !early.is_empty() && client.write_all(&early).await.is_err() {
        return;
    }
    if !client_early.is_empty() && upstream.write_all(&client_early).await.is_err() {
        return;
    }
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    tokio::pin!(copy);
    poll_fn(|cx| {
        if phase.poll(cx) == Phase::Abort {
            return Poll::Ready(());
        }
        copy.as_mut().poll(cx).map(|copied| {
            if let Err(e) = copied {
                tracing::debug!(error = %e, "upgraded connection ended with an error");
            }
        })
    })
    .await
}
