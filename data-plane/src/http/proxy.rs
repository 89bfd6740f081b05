//! One proxied request: route lookup on the table loaded once for the request, https redirect,
//! cluster and endpoint choice (sticky cookie, hash key, weights, policy), circuit breaker,
//! forwarding headers, the upstream tries with their timeouts, retries within the route's budget,
//! and the answer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderValue};
use http::uri::Authority;
use http::{Request, Response, Version};
use http_body::Body as _;
use http_body_util::{BodyExt, Limited};
use sluice_shared::model::{LbPolicy, RetryOn, UpstreamProtocol};

use super::body::{BodyTooLarge, ClientBodyError, ProxyBody, UpstreamBody};
use super::errors::ProxyError;
use super::headers::{content_length, origin_form, prepare_headers};
use super::request_body::RequestBody;
use super::tunnel::{switch_protocols, upgrade_protocol};
use super::upstream::{Dial, Failed, UpstreamError};
use super::upstream_conn::is_idempotent;
use super::upstream_h2;
use super::{grpc, redirect, sticky};
use crate::access_log;
use crate::lazy_timer::LazyTimer;
use crate::metrics::ResponseCounts;
use crate::state::{ConnCtx, Installed};
use crate::table::{
    hash_bytes, hash_ip, normalize_host, ClusterLb, EndpointGuard, RequestPermit, RequestView, RetryPolicy, RouteEntry,
};

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
        Some(installed) => route_and_forward(req, upgrade, down, &installed, timer).await,
        None => answer(&conn.shared.metrics.unrouted, ProxyError::NotReady),
    };
    // The bytes after an upgrade request may be a WebSocket's, never checked as HTTP: unless the
    // protocol switched, nothing more may be read on this connection.
    if switching && resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if grpc {
        if let Some(&err) = resp.extensions().get::<ProxyError>() {
            return grpc::error_response(err);
        }
    }
    resp
}

async fn route_and_forward(
    req: Request<RequestBody>,
    upgrade: Option<HeaderValue>,
    down: &Downstream,
    installed: &Installed,
    timer: &mut LazyTimer,
) -> Response<ProxyBody> {
    let conn = &*down.ctx;
    let unrouted = &conn.shared.metrics.unrouted;
    let Some(listener) = installed.table.listener(&conn.listener) else {
        return answer(unrouted, ProxyError::NoRoute);
    };
    let log = access_log::enabled()
        .then(|| access_log::Entry::start(&req, req.headers().get(header::HOST).and_then(|v| v.to_str().ok())));
    // RFC 9112 §3.2.2: an absolute-form target's authority wins over the Host header.
    let raw_host = req
        .uri()
        .authority()
        .map(Authority::as_str)
        .or_else(|| req.headers().get(header::HOST).and_then(|v| v.to_str().ok()));
    let host = raw_host.map(normalize_host);
    let view = RequestView {
        method: req.method(),
        host: host.as_deref(),
        path: req.uri().path(),
        query: req.uri().query(),
        headers: req.headers(),
    };
    let Some(route) = listener.find(&view) else {
        let resp = answer(unrouted, ProxyError::NoRoute);
        if let Some(entry) = log {
            entry.finish(&conn.listener, conn.peer, None, &resp);
        }
        return resp;
    };
    route.stats().record_request();
    let resp = match route.https_redirect().filter(|_| conn.scheme == "http") {
        Some(r) => match redirect::to_https(r, host.as_deref(), req.uri()) {
            Some(resp) => resp,
            None => answer(unrouted, ProxyError::NoHost),
        },
        None => forward(req, upgrade, log.is_some(), down, installed, route, timer).await,
    };
    route.stats().record_response(resp.status().as_u16());
    if let Some(entry) = log {
        entry.finish(&conn.listener, conn.peer, Some(route.name()), &resp);
    }
    resp
}

/// Why one try failed, for the retry decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TryFailure {
    /// No connection: nothing reached the endpoint.
    Connect,
    /// The endpoint closed or broke the connection before a response.
    Reset,
    /// The per-try timeout passed.
    Timeout,
    Status5xx,
    /// An HTTP/2 endpoint refused the stream unprocessed (GOAWAY, REFUSED_STREAM).
    Refused,
}

impl TryFailure {
    fn retried_by(self, policy: &RetryPolicy) -> bool {
        match self {
            TryFailure::Connect => policy.retries_on(RetryOn::ConnectFailure),
            TryFailure::Reset => policy.retries_on(RetryOn::Reset),
            TryFailure::Timeout => policy.retries_on(RetryOn::Reset) || policy.retries_on(RetryOn::Status5xx),
            TryFailure::Status5xx => policy.retries_on(RetryOn::Status5xx),
            TryFailure::Refused => policy.retries_on(RetryOn::ConnectFailure) || policy.retries_on(RetryOn::Reset),
        }
    }

    fn error(self) -> ProxyError {
        match self {
            TryFailure::Connect => ProxyError::UpstreamConnect,
            TryFailure::Reset | TryFailure::Status5xx | TryFailure::Refused => ProxyError::UpstreamFailed,
            TryFailure::Timeout => ProxyError::UpstreamTimeout,
        }
    }
}

/// Request bodies up to this size are kept in memory when a retry on `reset` or `5xx` may need
/// them again; larger ones stream and are only retried when none of them was sent.
const MAX_REPLAY_BODY: u64 = 64 * 1024;

/// `upgrade`: the protocol the request asks to switch to; `logging`: the access log is on.
async fn forward(
    req: Request<RequestBody>,
    upgrade: Option<HeaderValue>,
    logging: bool,
    down: &Downstream,
    installed: &Installed,
    route: &RouteEntry,
    timer: &mut LazyTimer,
) -> Response<ProxyBody> {
    let conn = &*down.ctx;
    let unrouted = &conn.shared.metrics.unrouted;
    // A valid sticky cookie chooses the cluster and the endpoint; otherwise the weights do.
    let sticky = route.sticky();
    let mut pinned =
        sticky.and_then(|s| sticky::cookie(req.headers(), &s.cookie)).and_then(|v| installed.sticky.pinned(route, v));
    let cluster = match &pinned {
        Some((c, _)) => *c,
        None => match route.pick_cluster() {
            Some(c) => c,
            None => return answer(unrouted, ProxyError::NoRoute),
        },
    };
    let counts = installed.stats.responses(route.name(), cluster.name()).unwrap_or(unrouted);
    let permit = match cluster.breaker().map(|b| b.try_request()).transpose() {
        Ok(p) => p,
        Err(o) => return answer(counts, ProxyError::Overflow(o)),
    };
    let hash_key = hash_key(route, cluster, req.headers(), down);
    route.deposit_retry_budget();

    let (mut parts, body) = req.into_parts();
    let forwarding = prepare_headers(&mut parts.headers, parts.uri.authority(), &down.peer_ip, conn.scheme);
    let request_id = logging.then(|| forwarding.request_id(&parts.headers)).flatten();
    if let Some(protocol) = &upgrade {
        parts.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, protocol.clone());
    }
    let mut uri = origin_form(parts.uri);
    let mut deadline = tokio::time::Instant::now() + route.timeout().unwrap_or(DEFAULT_TIMEOUT);
    if parts.version == Version::HTTP_2 {
        // A gRPC call's own deadline, capped by the route's.
        if let Some(t) = grpc::timeout(&parts.headers) {
            deadline = deadline.min(tokio::time::Instant::now() + t);
        }
    }

    let max_body = route.max_request_body();
    // Transfer-Encoding is gone (hop-by-hop): chunked bodies announce no size here.
    let announced = content_length(&parts.headers);
    if max_body.is_some_and(|max| announced.is_some_and(|n| n > max)) {
        return closing(counts, ProxyError::BodyTooLarge);
    }
    let policy = route.retries();
    let attempts = policy.map_or(0, |p| p.attempts);
    let idempotent = is_idempotent(&parts.method);
    // What a retry after a sent try can send again: no body, or a small one kept in memory.
    let (body, replay) = if body.is_end_stream() {
        (ProxyBody::Empty, Some(None))
    } else if attempts > 0 && idempotent && announced.is_some_and(|n| n <= MAX_REPLAY_BODY) {
        let collect = std::pin::pin!(Limited::new(body, MAX_REPLAY_BODY as usize).collect());
        match timer.within(deadline, collect).await {
            Some(Ok(b)) => {
                let b = b.to_bytes();
                (ProxyBody::Buffered(Some(b.clone())), Some(Some(b)))
            }
            Some(Err(_)) | None => return answer(counts, ProxyError::ClientBody),
        }
    } else if let Some(max) = max_body {
        (ProxyBody::Capped { body, left: max, max }, None)
    } else {
        (ProxyBody::Incoming(body), None)
    };
    let retry_head = (attempts > 0).then(|| parts.headers.clone());
    let mut body = Some(body);
    // A request handed back unsent by a failed connect: the next try sends it as it is.
    let mut unsent: Option<Request<ProxyBody>> = None;

    let latency = installed.stats.latency(cluster.name());
    let upstream_tls = installed.tls.upstream(cluster.name()).map(|t| &**t);
    let protocol = cluster.protocol();
    let pinned_addr = pinned.as_ref().map(|(_, g)| g.address());
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut attempt = 0;
    loop {
        let picked = match (pinned.take(), hash_key) {
            (Some((_, g)), _) => Some(g),
            (None, Some(k)) => cluster.pick_hashed(k, &tried),
            (None, None) if tried.is_empty() => cluster.pick(),
            (None, None) => cluster.pick_excluding(&tried).or_else(|| cluster.pick()),
        };
        let Some(endpoint) = picked else {
            let why = if cluster.is_full() { ProxyError::EndpointsFull } else { ProxyError::NoHealthyEndpoint };
            return answer(counts, why);
        };
        let addr = endpoint.address();
        let upstream = match unsent.take() {
            Some(r) => r,
            None => {
                let b = match (body.take(), &replay) {
                    (Some(b), _) => b,
                    (None, Some(Some(bytes))) => ProxyBody::Buffered(Some(bytes.clone())),
                    (None, _) => ProxyBody::Empty,
                };
                let mut r = Request::new(b);
                *r.version_mut() = Version::HTTP_11;
                // Without retries there is one try: the head moves to it instead of being copied.
                match &retry_head {
                    Some(h) => {
                        *r.method_mut() = parts.method.clone();
                        *r.uri_mut() = uri.clone();
                        *r.headers_mut() = h.clone();
                    }
                    None => {
                        *r.method_mut() = std::mem::take(&mut parts.method);
                        *r.uri_mut() = std::mem::take(&mut uri);
                        *r.headers_mut() = std::mem::take(&mut parts.headers);
                    }
                }
                if !r.headers().contains_key(header::HOST) {
                    // An HTTP/1.0 client may send no Host; HTTP/1.1 to the endpoint needs one.
                    if let Ok(v) = HeaderValue::try_from(addr.to_string()) {
                        r.headers_mut().insert(header::HOST, v);
                    }
                }
                r
            }
        };
        let try_deadline = match policy.and_then(|p| p.per_try_timeout) {
            Some(t) => deadline.min(tokio::time::Instant::now() + t),
            None => deadline,
        };
        let started = Instant::now();
        let dial = Dial { tls: upstream_tls, connect_timeout: cluster.connect_timeout() };
        let sent = async {
            match upgrade {
                Some(_) => {
                    // Boxed: rare, and it would enlarge every request's future (see `request`).
                    let sending = conn.shared.client.request_upgrade(addr, dial, upstream, forwarding.lines());
                    Box::pin(sending).await.map(|r| r.map(UpstreamBody::H1))
                }
                // Boxed for the same reason: HTTP/1.1's future stays as small as it was.
                None if speaks_h2(protocol, addr, dial) => {
                    let auto = protocol == UpstreamProtocol::Auto;
                    let breaker = cluster.breaker();
                    Box::pin(upstream_h2::request(addr, dial, breaker, upstream, forwarding.lines(), auto)).await
                }
                None => {
                    let client = &conn.shared.client;
                    let sending = client.request(addr, dial, cluster.breaker(), upstream, forwarding.lines());
                    sending.await.map(|r| r.map(UpstreamBody::H1))
                }
            }
        };
        let sent = std::pin::pin!(sent);
        let failure = match timer.within(try_deadline, sent).await {
            None if try_deadline >= deadline => {
                tracing::debug!(route = route.name(), %addr, "upstream timeout");
                return answer(counts, ProxyError::UpstreamTimeout);
            }
            None => {
                cluster.record_outcome(&endpoint, true);
                TryFailure::Timeout
            }
            Some(Ok(resp)) => {
                if let Some(h) = latency {
                    h.observe(started.elapsed());
                }
                let server_error = resp.status().is_server_error();
                cluster.record_outcome(&endpoint, server_error);
                if !server_error || !may_retry(route, TryFailure::Status5xx, attempt, replay.is_some() && idempotent) {
                    counts.record(resp.status().as_u16());
                    let cookie = sticky.filter(|_| pinned_addr != Some(addr)).and_then(|s| {
                        let value = installed.sticky.issue(cluster.name(), addr, s.ttl_s)?;
                        sticky::set_cookie(&s.cookie, &value, s.ttl_s, conn.scheme == "https")
                    });
                    let served = logging.then(|| access_log::Served {
                        cluster: cluster.name().to_string(),
                        endpoint: addr,
                        tries: attempt + 1,
                        request_id: request_id.clone(),
                    });
                    let (head, body) = resp.into_parts();
                    let mut resp = match body {
                        UpstreamBody::H1(b)
                            if upgrade.is_some() && head.status == http::StatusCode::SWITCHING_PROTOCOLS =>
                        {
                            switch_protocols(Response::from_parts(head, b), endpoint, permit, cookie)
                        }
                        body => respond(Response::from_parts(head, body), endpoint, permit, cookie),
                    };
                    if let Some(s) = served {
                        resp.extensions_mut().insert(s);
                    }
                    return resp;
                }
                TryFailure::Status5xx
            }
            Some(Err(Failed { error: UpstreamError::Overflow(o), .. })) => {
                return answer(counts, ProxyError::Overflow(o))
            }
            Some(Err(Failed { error, .. })) if caused_by::<BodyTooLarge>(&error) => {
                return closing(counts, ProxyError::BodyTooLarge)
            }
            // A malformed chunk, or a client gone inside its body: a 400, not the endpoint's 502.
            Some(Err(Failed { error, .. })) if caused_by::<ClientBodyError>(&error) => {
                return closing(counts, ProxyError::ClientBody)
            }
            Some(Err(Failed { error, unsent: back })) => {
                tracing::debug!(route = route.name(), %addr, error = %error, "upstream request failed");
                if error.is_connect() {
                    cluster.record_outcome(&endpoint, true);
                    unsent = back;
                    TryFailure::Connect
                } else if error.is_unprocessed() {
                    unsent = back;
                    TryFailure::Refused
                } else {
                    TryFailure::Reset
                }
            }
        };
        // Nothing was sent (a connect failure) or what was sent can be sent again.
        let resendable = match failure {
            TryFailure::Connect | TryFailure::Refused => unsent.is_some() || replay.is_some(),
            _ => replay.is_some() && idempotent,
        };
        if failure != TryFailure::Status5xx && !may_retry(route, failure, attempt, resendable) {
            return answer(counts, failure.error());
        }
        tried.push(addr);
        attempt += 1;
    }
}

/// Whether the try goes over HTTP/2: always for `http2` clusters; for `auto` ones over TLS,
/// unless the endpoint's ALPN answer was HTTP/1.1.
fn speaks_h2(protocol: UpstreamProtocol, addr: SocketAddr, dial: Dial<'_>) -> bool {
    match protocol {
        UpstreamProtocol::Http1 => false,
        UpstreamProtocol::Http2 => true,
        UpstreamProtocol::Auto => dial.tls.is_some() && upstream_h2::auto_tries_h2(addr, dial),
    }
}

/// Whether a try that failed this way is followed by another: the policy retries it, tries are
/// left, the request can be sent again, and the route's retry budget allows one more (checked
/// last: it spends a retry).
fn may_retry(route: &RouteEntry, failure: TryFailure, attempt: u32, resendable: bool) -> bool {
    // A stream the endpoint never processed goes once more, whatever the policy.
    if failure == TryFailure::Refused && attempt == 0 && resendable {
        return true;
    }
    let Some(policy) = route.retries() else { return false };
    attempt < policy.attempts && resendable && failure.retried_by(policy) && route.withdraw_retry_budget()
}

/// The endpoint's answer on its way to the client, holding what the exchange still occupies.
fn respond(
    resp: Response<UpstreamBody>,
    endpoint: EndpointGuard,
    permit: Option<RequestPermit>,
    cookie: Option<HeaderValue>,
) -> Response<ProxyBody> {
    // The upstream client left the hop-by-hop headers out.
    let (mut head, body) = resp.into_parts();
    if let Some(c) = cookie {
        head.headers.append(header::SET_COOKIE, c);
    }
    Response::from_parts(head, ProxyBody::Upstream { body, endpoint: Some(endpoint), permit })
}

/// `err`, and the connection closes: the rest of the body is not read.
fn closing(counts: &ResponseCounts, err: ProxyError) -> Response<ProxyBody> {
    let mut resp = answer(counts, err);
    resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// Whether `E` is somewhere in the error's chain of causes.
fn caused_by<E: std::error::Error + 'static>(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut e = Some(error);
    while let Some(cause) = e {
        if cause.is::<E>() {
            return true;
        }
        e = cause.source();
    }
    false
}

/// The key `ring_hash` and `maglev` clusters hash, by the route's `hash_on`: a header's or a
/// cookie's value, or the client IP. `None`: no key (the cluster balances as it would anyway).
fn hash_key(route: &RouteEntry, cluster: &ClusterLb, headers: &HeaderMap, down: &Downstream) -> Option<u64> {
    if !matches!(cluster.policy(), LbPolicy::RingHash | LbPolicy::Maglev) {
        return None;
    }
    let on = route.hash_on()?;
    if on.source_ip {
        return Some(hash_ip(down.ctx.peer.ip()));
    }
    if let Some(name) = &on.header {
        return headers.get(name.as_str()).map(|v| hash_bytes(v.as_bytes()));
    }
    let name = on.cookie.as_deref()?;
    sticky::cookie(headers, name).map(|v| hash_bytes(v.as_bytes()))
}

fn answer(counts: &ResponseCounts, err: ProxyError) -> Response<ProxyBody> {
    counts.record(err.status().as_u16());
    err.response()
}
