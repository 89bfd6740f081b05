//! Protocol switches (WebSocket and the like): the endpoint's 101 turns both connections into
//! one spliced tunnel that lives as long as its listener allows.

use http::header::{self, HeaderValue};
use http::{Request, Response, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use super::body::ProxyBody;
use super::headers::strip_hop_by_hop;
use super::upstream_conn::ResponseBody;
use crate::listeners::Phase;
use crate::table::{EndpointGuard, RequestPermit};

/// The protocol an HTTP/1.1 request without a body asks to switch to (`Upgrade`), as
/// `head::framing` decides for the guard.
pub fn upgrade_protocol(req: &Request<Incoming>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 || !req.body().is_end_stream() {
        return None;
    }
    req.headers().get(header::UPGRADE).filter(|v| super::switches_protocol(v.as_bytes())).cloned()
}

/// The endpoint's answer to an upgrade request. A 101 goes to the client with its `Upgrade`, and
/// once both sides have switched a task splices the two connections until either closes (holding
/// the endpoint's active count and the breaker's request permit). Any other answer is an ordinary
/// response that closes the client connection: bytes after an upgrade request are never checked
/// as HTTP (see `head::Framing::Upgrade`).
pub fn switch_protocols(
    resp: Response<ResponseBody>,
    downstream: OnUpgrade,
    endpoint: EndpointGuard,
    permit: Option<RequestPermit>,
    cookie: Option<HeaderValue>,
    tunnel: Tunnel,
) -> Response<ProxyBody> {
    if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        // `handle` marks the answer `connection: close`.
        // The upstream client left the hop-by-hop headers out of anything but a 101.
        let (mut head, body) = resp.into_parts();
        if let Some(c) = cookie {
            head.headers.append(header::SET_COOKIE, c);
        }
        let body = ProxyBody::Upstream { body, endpoint: Some(endpoint), permit };
        return Response::from_parts(head, body);
    }
    let (mut head, body) = resp.into_parts();
    let upstream = body.into_upgraded();
    let protocol = head.headers.get(header::UPGRADE).cloned();
    strip_hop_by_hop(&mut head.headers);
    head.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Some(p) = protocol {
        head.headers.insert(header::UPGRADE, p);
    }
    if let Some(c) = cookie {
        head.headers.append(header::SET_COOKIE, c);
    }
    let Tunnel { mut phase, tracked } = tunnel;
    tokio::spawn(async move {
        let _held = (endpoint, permit, tracked);
        match (downstream.await, upstream) {
            (Ok(d), Some((mut u, early))) => {
                let mut d = TokioIo::new(d);
                // What the endpoint sent right behind its 101 was read with the head.
                if !early.is_empty() && d.write_all(&early).await.is_err() {
                    return;
                }
                // Like an L4 connection: it outlives a drain, not the listener's removal.
                tokio::select! {
                    copied = tokio::io::copy_bidirectional(&mut d, &mut u) => {
                        if let Err(e) = copied {
                            tracing::debug!(error = %e, "upgraded connection ended with an error");
                        }
                    }
                    _ = phase.wait_for(|p| *p == Phase::Abort) => {}
                }
            }
            (d, u) => tracing::debug!(downstream = d.is_ok(), upstream = u.is_some(), "protocol switch failed"),
        }
    });
    Response::from_parts(head, ProxyBody::Empty)
}

/// What ties an upgraded connection to its listener: counted among the connections a drain waits
/// for, and cut when the drain times out.
pub struct Tunnel {
    pub phase: watch::Receiver<Phase>,
    pub tracked: tokio_util::task::task_tracker::TaskTrackerToken,
}
