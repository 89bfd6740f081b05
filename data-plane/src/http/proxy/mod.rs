//! The one request pipeline, for HTTP/1.1 and HTTP/2 clients alike, in named phases:
//!
//! ```text
//!  handle ──▶ route (table loaded once, listener, route lookup)      → 404
//!               │  [https_redirect → 301/308]
//!               ▼
//!  forward.rs:  choose_upstream   sticky pin or weights → cluster; breaker permit; hash key
//!               prepare           hop-by-hop out, forwarding lines, deadline (grpc-timeout),
//!                                 body limit, the body kept in memory when retries need it
//!               ┌▶ pick_endpoint  policy over usable endpoints, not yet tried    → 503
//!               │  one_try        HTTP/1.1 or HTTP/2 exchange, per-try timeout
//!               └─ failure.rs     classify (downstream / upstream / internal), may_retry
//!               finish            sticky cookie, access-log facts, the body holding its guards
//!  handle ◀── a gRPC call's proxy-made error becomes a grpc-status answer
//! ```
//!
//! A phase that ends the request returns a [`failure::Failure`]: its answer, and which side
//! caused it.

mod failure;
mod forward;
mod mirror;
mod transform;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::uri::Authority;
use http::{Request, Response, Version};

use super::body::ProxyBody;
use super::codec::headers::{self, X_REQUEST_ID};
use super::codec::path::{self, Normalized};
use super::codec::request_body::RequestBody;
use super::errors::ProxyError;
use super::tunnel::upgrade_protocol;
use super::upstream::UpstreamBody;
use super::{grpc, redirect};
use crate::access_log;
use crate::lazy_timer::LazyTimer;
use crate::metrics::ResponseCounts;
use crate::state::{ConnCtx, Installed};
use crate::table::{
    hash_bytes, hash_ip, normalize_host, valid_authority, LimitKey, Limited, RateLimiter, RequestView, Values,
};
use forward::forward;

/// Used when a route sets no `timeout_ms`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

/// One downstream connection, with what its requests share.
pub struct Downstream {
    pub ctx: Arc<ConnCtx>,
    /// The client's address as an `x-forwarded-for` value: formatted once per connection.
    peer_ip: HeaderValue,
}

impl Downstream {
    pub fn new(ctx: Arc<ConnCtx>) -> Downstream {
        let peer_ip = HeaderValue::try_from(ctx.peer.ip().to_string()).unwrap_or(HeaderValue::from_static("unknown"));
        Downstream { ctx, peer_ip }
    }
}

/// `timer`: the connection's request deadline timer (see `lazy_timer.rs`).
pub async fn handle(req: Request<RequestBody>, down: &Downstream, timer: &mut LazyTimer) -> Response<ProxyBody> {
    let conn = &down.ctx;
    // A protocol switch (WebSocket): `head::parse` frames the same requests as upgrades.
    let upgrade = upgrade_protocol(&req);
    let switching = upgrade.is_some();
    let grpc = req.version() == Version::HTTP_2 && grpc::is_grpc(req.headers());
    // The table is loaded once and kept until this request is answered, whatever is installed meanwhile.
    let mut resp = match conn.shared.installed.load_full() {
        Some(installed) => route_and_forward(req, upgrade, grpc, down, &installed, timer).await,
        None => refuse(&conn.shared.metrics.unrouted, ProxyError::NotReady, grpc),
    };
    // The bytes after an upgrade request may be a WebSocket's, never checked as HTTP: unless the
    // protocol switched, nothing more may be read on this connection.
    if switching && resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// `grpc`: a gRPC call, whose proxy-made errors are gRPC statuses.
async fn route_and_forward(
    mut req: Request<RequestBody>,
    upgrade: Option<HeaderValue>,
    grpc: bool,
    down: &Downstream,
    installed: &Installed,
    timer: &mut LazyTimer,
) -> Response<ProxyBody> {
    let conn = &*down.ctx;
    let unrouted = &conn.shared.metrics.unrouted;
    let Some(listener) = installed.table.listener(&conn.listener) else {
        return refuse(unrouted, ProxyError::NoRoute, grpc);
    };
    let log = access_log::enabled()
        .then(|| access_log::Entry::start(&req, req.headers().get(header::HOST).and_then(|v| v.to_str().ok())));
    if req.method() == http::Method::CONNECT {
        return closing(unrouted, ProxyError::Connect);
    }
    // Routed on the normalized path, and exactly that path goes upstream.
    match path::normalize(req.uri().path(), listener.http().paths) {
        Ok(Normalized::Path(Cow::Borrowed(_))) => {}
        Ok(Normalized::Path(Cow::Owned(p))) => set_path(&mut req, &p),
        Ok(Normalized::Redirect(to)) => return redirect::to_path(&to, req.uri().query()),
        Err(e) => return closing(unrouted, ProxyError::BadPath(e)),
    }
    // RFC 9112 §3.2.2: an absolute-form target's authority wins over the Host header.
    let raw_host = req
        .uri()
        .authority()
        .map(Authority::as_str)
        .or_else(|| req.headers().get(header::HOST).and_then(|v| v.to_str().ok()));
    if raw_host.is_some_and(|h| !valid_authority(h)) {
        return closing(unrouted, ProxyError::BadHost);
    }
    let host = raw_host.map(normalize_host);
    let route_path = path::without_params(req.uri().path());
    let view = RequestView {
        method: req.method(),
        host: host.as_deref(),
        path: &route_path,
        query: req.uri().query(),
        headers: req.headers(),
    };
    let Some(route) = listener.find(&view) else {
        let resp = refuse(unrouted, ProxyError::NoRoute, grpc);
        if let Some(entry) = log {
            entry.finish(&conn.listener, conn.peer, None, &resp);
        }
        return resp;
    };
    route.stats().record_request();
    if !route.admits(conn.peer.ip()) {
        let resp = refuse(unrouted, ProxyError::Forbidden, grpc);
        route.stats().record_response(resp.status().as_u16());
        if let Some(entry) = log {
            entry.finish(&conn.listener, conn.peer, Some(route.name()), &resp);
        }
        return resp;
    }
    if let Some(limiter) = route.rate_limiter() {
        if let Err(limited) = rate_limit(limiter, &req, conn) {
            route.stats().record_rate_limited();
            let resp = limited_response(limiter, limited, &conn.shared, unrouted, grpc);
            route.stats().record_response(resp.status().as_u16());
            if let Some(entry) = log {
                entry.finish(&conn.listener, conn.peer, Some(route.name()), &resp);
            }
            return resp;
        }
    }
    let transforms = route.transforms();
    // The request id a response header names is the one the endpoint gets: made here if need be.
    let response_id = transforms
        .and_then(|t| t.response_headers.as_ref())
        .filter(|o| o.uses_request_id)
        .map(|_| req.headers().get(&X_REQUEST_ID).cloned().unwrap_or_else(new_request_id));
    let redirect_to = transforms.and_then(|t| t.redirect.as_ref());
    let resp = match route.https_redirect().filter(|_| conn.scheme == "http") {
        Some(r) => match redirect::to_https(r, host.as_deref(), req.uri()) {
            Some(resp) => resp,
            None => answer(unrouted, ProxyError::NoHost),
        },
        None => match (route.direct_response(), redirect_to) {
            (Some(d), _) => direct_response(d),
            (None, Some(r)) => {
                let port = raw_host.and_then(authority_port);
                match transform::redirect(r, conn.scheme, host.as_deref(), port, req.uri()) {
                    Some(resp) => resp,
                    None => answer(unrouted, ProxyError::NoHost),
                }
            }
            (None, None) => {
                if let Some(id) = &response_id {
                    req.headers_mut().insert(&X_REQUEST_ID, id.clone());
                }
                forward(req, upgrade, log.is_some(), grpc, down, installed, route, timer).await
            }
        },
    };
    let mut resp = if grpc { grpc::proxy_error_as_status(resp) } else { resp };
    if let Some(t) = transforms {
        let values = Values {
            client_ip: down.peer_ip.to_str().unwrap_or_default(),
            request_id: response_id.as_ref().and_then(|v| v.to_str().ok()),
            route: route.name(),
        };
        transform::response(&mut resp, t, &values);
    }
    route.stats().record_response(resp.status().as_u16());
    if let Some(entry) = log {
        // A streamed gRPC answer's status comes in its trailers: the line waits for them.
        let streamed = grpc
            && !resp.headers().contains_key(&grpc::GRPC_STATUS)
            && matches!(resp.body(), ProxyBody::Upstream { body: UpstreamBody::H2(_), .. });
        if streamed {
            let mut pending = entry.pending(&conn.listener, conn.peer, Some(route.name()), &resp);
            if let ProxyBody::Upstream { body: UpstreamBody::H2(h2), .. } = resp.body_mut() {
                h2.on_end(move |status| pending.end(status));
            }
        } else {
            entry.finish(&conn.listener, conn.peer, Some(route.name()), &resp);
        }
    }
    resp
}

/// Takes a token of the route's limit for this request's key.
fn rate_limit(limiter: &RateLimiter, req: &Request<RequestBody>, conn: &ConnCtx) -> Result<(), Limited> {
    let key = match limiter.key() {
        LimitKey::ClientIp => hash_ip(conn.peer.ip()),
        LimitKey::Route => 0,
        LimitKey::Header(name) => req.headers().get(name).map_or(0, |v| hash_bytes(v.as_bytes())),
    };
    let nodes = conn.shared.group_nodes.load(std::sync::atomic::Ordering::Relaxed);
    limiter.check(key, std::time::Instant::now(), nodes)
}

/// 429 with `Retry-After` and the `RateLimit-*` fields (this node's share of a fleet limit).
fn limited_response(
    limiter: &RateLimiter,
    limited: Limited,
    shared: &crate::state::Shared,
    counts: &ResponseCounts,
    grpc: bool,
) -> Response<ProxyBody> {
    let mut resp = refuse(counts, ProxyError::RateLimited, grpc);
    let (rate, burst) = limiter.local(shared.group_nodes.load(std::sync::atomic::Ordering::Relaxed));
    let reset = limited.retry_after.as_secs_f64().ceil().max(1.0) as u64;
    let h = resp.headers_mut();
    h.insert(header::RETRY_AFTER, HeaderValue::from(reset));
    h.insert("ratelimit-limit", HeaderValue::from(burst.floor() as u64));
    h.insert("ratelimit-remaining", HeaderValue::from_static("0"));
    h.insert("ratelimit-reset", HeaderValue::from(reset));
    if let Ok(policy) = HeaderValue::try_from(format!("{};w=1;burst={}", rate.floor() as u64, burst.floor() as u64)) {
        h.insert("ratelimit-policy", policy);
    }
    resp
}

/// A request id for a request that came without one.
fn new_request_id() -> HeaderValue {
    HeaderValue::from_bytes(&headers::new_request_id()).unwrap_or(HeaderValue::from_static("unknown"))
}

/// The port of a Host value or authority, if it names one.
fn authority_port(raw: &str) -> Option<u16> {
    let after_host = match raw.rfind(']') {
        Some(end) => &raw[end + 1..],
        None => raw,
    };
    after_host.rsplit_once(':').and_then(|(_, p)| p.parse().ok())
}

/// A route's fixed answer.
fn direct_response(d: &sluice_shared::model::DirectResponse) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::Static(Some(bytes::Bytes::copy_from_slice(d.body.as_bytes()))));
    *resp.status_mut() = http::StatusCode::from_u16(d.status).unwrap_or(http::StatusCode::OK);
    let h = resp.headers_mut();
    let content_type = d.content_type.as_deref().unwrap_or("text/plain; charset=utf-8");
    if let Ok(v) = HeaderValue::from_str(content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(d.body.len()));
    resp
}

/// Replaces the request target's path, keeping its query (and an absolute-form target's scheme
/// and authority).
fn set_path(req: &mut Request<RequestBody>, path: &str) {
    let target = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let mut parts = req.uri().clone().into_parts();
    // A normalized path holds only what a parsed one may: this cannot fail.
    if let Ok(pq) = http::uri::PathAndQuery::try_from(target) {
        parts.path_and_query = Some(pq);
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
}

/// The proxy's own answer `err`, counted; a gRPC status for a gRPC call.
fn refuse(counts: &ResponseCounts, err: ProxyError, grpc: bool) -> Response<ProxyBody> {
    let resp = answer(counts, err);
    if !grpc {
        return resp;
    }
    counts.record_grpc(grpc::code(err) as u8);
    grpc::error_response(err)
}

/// `err`, and the connection closes: the rest of the body is not read.
fn closing(counts: &ResponseCounts, err: ProxyError) -> Response<ProxyBody> {
    let mut resp = answer(counts, err);
    resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

fn answer(counts: &ResponseCounts, err: ProxyError) -> Response<ProxyBody> {
    counts.record(err.status().as_u16());
    err.response()
}
