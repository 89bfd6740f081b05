//! A routed request to its answer, phase by phase (see the diagram in `mod.rs`): choose the
//! upstream, prepare the request, then pick an endpoint and try until an answer comes or no retry
//! may follow, and finish.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Request, Response, Version};
use http_body::Body as _;
use http_body_util::{BodyExt, Limited};
use sluice_shared::model::{LbPolicy, Sticky, UpstreamProtocol};
use tokio::time::Instant as Deadline;

use super::failure::{classify, may_retry, Failure, Side, TryFailure};
use super::{answer, closing, Downstream, DEFAULT_TIMEOUT};
use super::{mirror, transform};
use crate::access_log;
use crate::http::body::ProxyBody;
use crate::http::codec::headers::{content_length, origin_form, prepare_headers, Forwarding};
use crate::http::codec::outgoing::RequestOut;
use crate::http::codec::request_body::{BodyProgress, Progress, RequestBody};
use crate::http::errors::ProxyError;
use crate::http::tunnel::switch_protocols;
use crate::http::upstream::h1::is_idempotent;
use crate::http::upstream::h2 as upstream_h2;
use crate::http::upstream::{Dial, Failed, UpstreamBody};
use crate::http::{grpc, sticky};
use crate::lazy_timer::LazyTimer;
use crate::metrics::ResponseCounts;
use crate::state::Installed;
use crate::table::{hash_bytes, hash_ip, ClusterLb, EndpointGuard, RequestPermit, RouteEntry, Values};

/// Request bodies up to this size are kept in memory when a retry on `reset` or `5xx` may need
/// them again; larger ones stream and are only retried when none of them was sent.
const MAX_REPLAY_BODY: u64 = 64 * 1024;

/// `upgrade`: the protocol the request asks to switch to; `logging`: the access log is on;
/// `grpc`: a gRPC call (its statuses are counted).
#[allow(clippy::too_many_arguments)]
pub(super) async fn forward(
    req: Request<RequestBody>,
    upgrade: Option<HeaderValue>,
    logging: bool,
    grpc: bool,
    down: &Downstream,
    installed: &Installed,
    route: &RouteEntry,
    timer: &mut LazyTimer,
) -> Response<ProxyBody> {
    let mut up = match choose_upstream(req.headers(), route, installed, down) {
        Ok(u) => u,
        Err((counts, f)) => return fail(counts, f, grpc),
    };
    let counts = up.counts;
    let mirror = if upgrade.is_none() { route.mirror_for_this_request() } else { None };
    let mut prep = match prepare(req, upgrade.as_ref(), logging, route, down, mirror.is_some()) {
        Ok(p) => p,
        Err(f) => return fail(counts, f, grpc),
    };
    if let Err(f) = prep.keep_body(timer).await {
        return fail(counts, f, grpc);
    }
    if let (Some(shadow), Some(body)) = (mirror, prep.replay.clone()) {
        mirror::send(down, installed, route, shadow, &prep.parts, body, prep.forwarding.lines());
    }
    let cluster = up.cluster;
    let latency = installed.stats.latency(cluster.name());
    let dial =
        Dial { tls: installed.tls.upstream(cluster.name()).map(|t| &**t), connect_timeout: cluster.connect_timeout() };
    let pinned_addr = up.pinned.as_ref().map(|g| g.address());
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut attempt = 0;
    loop {
        let endpoint = match pick_endpoint(&mut up, &tried) {
            Ok(e) => e,
            Err(f) => return fail(counts, f, grpc),
        };
        let addr = endpoint.address();
        let request = prep.next_request(addr);
        let try_deadline = match route.retries().and_then(|p| p.per_try_timeout) {
            Some(t) => prep.deadline.min(Deadline::now() + t),
            None => prep.deadline,
        };
        let started = Instant::now();
        let mut sent =
            std::pin::pin!(one_try(down, cluster, addr, dial, upgrade.is_some(), request, prep.forwarding.lines()));
        let mut try_deadline = try_deadline;
        let outcome = loop {
            let Some(out) = timer.within(try_deadline, sent.as_mut()).await else {
                // A deadline that passes while the client is still sending its body is the
                // client's, not the endpoint's.
                match client_pace(
                    prep.progress.as_deref(),
                    Deadline::from_std(started),
                    try_deadline,
                    body_timeout(down, installed),
                ) {
                    Pace::EndpointLate => break None,
                    Pace::ClientLate => {
                        tracing::debug!(route = route.name(), "request body timeout");
                        let f = Failure { close: true, ..Failure::new(Side::Downstream, ProxyError::ClientTimeout) };
                        return fail(counts, f, grpc);
                    }
                    Pace::WaitUntil(later) => {
                        if try_deadline >= prep.deadline {
                            prep.deadline = later;
                        }
                        try_deadline = later;
                        continue;
                    }
                }
            };
            break Some(out);
        };
        let failure = match outcome {
            None if try_deadline >= prep.deadline => {
                tracing::debug!(route = route.name(), %addr, "upstream timeout");
                return fail(counts, Failure::new(Side::Upstream, ProxyError::UpstreamTimeout), grpc);
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
                let resendable = TryFailure::Status5xx.resendable(false, prep.replay.is_some(), prep.idempotent);
                if !server_error || !may_retry(route, TryFailure::Status5xx, attempt, resendable) {
                    counts.record(resp.status().as_u16());
                    let cookie = up.sticky.filter(|_| pinned_addr != Some(addr)).and_then(|s| {
                        let value = installed.sticky.issue(cluster.name(), addr, s.ttl_s)?;
                        sticky::set_cookie(&s.cookie, &value, s.ttl_s, down.ctx.scheme == "https")
                    });
                    let served = logging.then(|| access_log::Served {
                        cluster: cluster.name().to_string(),
                        endpoint: addr,
                        tries: attempt + 1,
                        request_id: prep.request_id.take(),
                    });
                    let mut resp = finish(resp, upgrade.is_some(), endpoint, up.permit.take(), cookie, served);
                    if grpc {
                        count_grpc(&mut resp, counts);
                    }
                    return resp;
                }
                TryFailure::Status5xx
            }
            Some(Err(Failed { error, unsent })) => match classify(&error) {
                Err(f) => return fail(counts, f, grpc),
                Ok(failure) => {
                    tracing::debug!(route = route.name(), %addr, error = %error, "upstream request failed");
                    if failure == TryFailure::Connect {
                        cluster.record_outcome(&endpoint, true);
                    }
                    if failure.unprocessed() {
                        prep.unsent = unsent;
                    }
                    failure
                }
            },
        };
        // The last try's 5xx was answered above when no retry follows it.
        if failure != TryFailure::Status5xx {
            let resendable = failure.resendable(prep.unsent.is_some(), prep.replay.is_some(), prep.idempotent);
            if !may_retry(route, failure, attempt, resendable) {
                return fail(counts, failure.failure(), grpc);
            }
        }
        tried.push(addr);
        attempt += 1;
    }
}

/// Whose a passed deadline is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pace {
    /// The endpoint's: the body was in before the try began, or it has had its full time since.
    EndpointLate,
    /// The client's: it sent none of its body for the listener's body timeout.
    ClientLate,
    /// Neither yet: wait until then (the body is still coming, or came late in the try).
    WaitUntil(Deadline),
}

/// Timeouts count from the end of the request body: a try whose `deadline` passed while the
/// proxy was waiting for the client's body is given its time again from when the body ends, and
/// a client that sends nothing of its body for `body_timeout` is the one that is late. When the
/// proxy is not waiting for the client (the endpoint is not taking the body, or not answering),
/// the endpoint is late.
fn client_pace(progress: Option<&BodyProgress>, started: Deadline, deadline: Deadline, body_timeout: Duration) -> Pace {
    let Some(p) = progress else { return Pace::EndpointLate };
    let now = Deadline::now();
    match p.state() {
        Progress::Idle => Pace::EndpointLate,
        Progress::Done(done) if done <= started => Pace::EndpointLate,
        Progress::Done(done) => {
            let due = done + deadline.saturating_duration_since(started);
            if due <= now {
                Pace::EndpointLate
            } else {
                Pace::WaitUntil(due)
            }
        }
        Progress::Waiting(since) => {
            let idle = now.saturating_duration_since(since);
            if idle >= body_timeout {
                Pace::ClientLate
            } else {
                Pace::WaitUntil(now + (body_timeout - idle))
            }
        }
    }
}

/// The listener's `body_timeout_ms` (looked up only when a deadline passes).
fn body_timeout(down: &Downstream, installed: &Installed) -> Duration {
    installed
        .table
        .listener(&down.ctx.listener)
        .map_or(crate::table::HttpOptions::default().body_timeout, |l| l.http().body_timeout)
}

fn fail(counts: &ResponseCounts, f: Failure, grpc: bool) -> Response<ProxyBody> {
    if grpc {
        counts.record_grpc(grpc::code(f.error) as u8);
    }
    if f.close {
        closing(counts, f.error)
    } else {
        answer(counts, f.error)
    }
}

/// A gRPC call's status in the counters: now from a trailers-only answer, else from the
/// trailers when an HTTP/2 endpoint's body ends.
fn count_grpc(resp: &mut Response<ProxyBody>, counts: &Arc<ResponseCounts>) {
    if let Some(status) = resp.headers().get(&grpc::GRPC_STATUS) {
        counts.record_grpc(grpc::parse_status(Some(status.as_bytes())));
    } else if let ProxyBody::Upstream { body: UpstreamBody::H2(h2), .. } = resp.body_mut() {
        let counts = Arc::clone(counts);
        h2.on_end(move |status| counts.record_grpc(grpc::parse_status(status.map(str::as_bytes))));
    }
}

/// Phase 1: where the request goes, before any endpoint is picked.
struct Upstream<'a> {
    cluster: &'a ClusterLb,
    counts: &'a Arc<ResponseCounts>,
    /// The circuit breaker's request permit, held until the response ends.
    permit: Option<RequestPermit>,
    /// `ring_hash` and `maglev`: the request's key.
    hash_key: Option<u64>,
    /// The endpoint a valid sticky cookie names (the first try's).
    pinned: Option<EndpointGuard>,
    sticky: Option<&'a Sticky>,
}

/// A valid sticky cookie chooses the cluster and the endpoint; otherwise the weights do. Then the
/// cluster's circuit breaker admits the request, or not (the failure comes with the counters it
/// is recorded in).
#[inline(always)]
fn choose_upstream<'a>(
    headers: &HeaderMap,
    route: &'a RouteEntry,
    installed: &'a Installed,
    down: &'a Downstream,
) -> Result<Upstream<'a>, (&'a Arc<ResponseCounts>, Failure)> {
    let unrouted = &down.ctx.shared.metrics.unrouted;
    let sticky = route.sticky();
    let pinned =
        sticky.and_then(|s| sticky::cookie(headers, &s.cookie)).and_then(|v| installed.sticky.pinned(route, v));
    let (cluster, pinned) = match pinned {
        Some((c, g)) => (&**c, Some(g)),
        None => match route.pick_cluster() {
            Some(c) => (&**c, None),
            None => return Err((unrouted, Failure::new(Side::Internal, ProxyError::NoRoute))),
        },
    };
    let counts = installed.stats.responses(route.name(), cluster.name()).unwrap_or(unrouted);
    let permit = match cluster.breaker().map(|b| b.try_request()).transpose() {
        Ok(p) => p,
        Err(o) => return Err((counts, Failure::new(Side::Internal, ProxyError::Overflow(o)))),
    };
    let hash_key = hash_key(route, cluster, headers, down);
    route.deposit_retry_budget();
    Ok(Upstream { cluster, counts, permit, hash_key, pinned, sticky })
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

/// Phase 2: the request as every try sends it.
struct Prepared {
    parts: Parts,
    forwarding: Forwarding,
    request_id: Option<HeaderValue>,
    deadline: Deadline,
    /// How far the client is with the body (`None`: no body), to tell whose a timeout is.
    progress: Option<Arc<BodyProgress>>,
    idempotent: bool,
    /// The body for the first try.
    body: Option<RequestOut>,
    /// What a retry after a sent try can send again: `Some(None)` no body, `Some(Some(b))` one
    /// kept in memory; `None`: nothing (a streamed body).
    replay: Option<Option<Bytes>>,
    /// The head kept for retries (the first try takes `parts` when none can follow).
    retry_head: Option<HeaderMap>,
    /// A request handed back unsent by an unprocessed try: the next try sends it as it is.
    unsent: Option<Request<RequestOut>>,
}

/// Hop-by-hop headers out and forwarding headers encoded, the target in origin-form, the
/// deadline (the route's, or a gRPC call's own if sooner), the body checked against the route's
/// limit (a small body a retry may send again is then read by [`Prepared::keep_body`]).
/// Inlined and not async: the request's state is built in place, never moved (a copy of it per
/// request showed in callgrind).
#[inline(always)]
fn prepare(
    req: Request<RequestBody>,
    upgrade: Option<&HeaderValue>,
    logging: bool,
    route: &RouteEntry,
    down: &Downstream,
    mirrored: bool,
) -> Result<Prepared, Failure> {
    let (mut parts, body) = req.into_parts();
    let progress = body.progress();
    let forwarding = prepare_headers(&mut parts.headers, parts.uri.authority(), &down.peer_ip, down.ctx.scheme);
    let request_id = logging.then(|| forwarding.request_id(&parts.headers)).flatten();
    if let Some(protocol) = upgrade {
        parts.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, protocol.clone());
    }
    parts.uri = origin_form(std::mem::take(&mut parts.uri));
    if let Some(t) = route.transforms() {
        let id = t
            .request_headers
            .as_ref()
            .filter(|o| o.uses_request_id)
            .and_then(|_| forwarding.request_id(&parts.headers));
        let values = Values {
            client_ip: down.peer_ip.to_str().unwrap_or_default(),
            request_id: id.as_ref().and_then(|v| v.to_str().ok()),
            route: route.name(),
        };
        if transform::request(&mut parts, t, &values).is_err() {
            return Err(Failure::new(Side::Internal, ProxyError::BadRewrite));
        }
    }
    let mut deadline = Deadline::now() + route.timeout().unwrap_or(DEFAULT_TIMEOUT);
    if parts.version == Version::HTTP_2 {
        if let Some(t) = grpc::timeout(&parts.headers) {
            deadline = deadline.min(Deadline::now() + t);
        }
    }
    let max_body = route.max_request_body();
    // Transfer-Encoding is gone (hop-by-hop): chunked bodies announce no size here.
    let announced = content_length(&parts.headers);
    if max_body.is_some_and(|max| announced.is_some_and(|n| n > max)) {
        return Err(Failure { close: true, ..Failure::new(Side::Downstream, ProxyError::BodyTooLarge) });
    }
    let attempts = route.retries().map_or(0, |p| p.attempts);
    let idempotent = is_idempotent(&parts.method);
    let (body, replay) = if body.is_end_stream() {
        (RequestOut::Empty, Some(None))
    } else if (attempts > 0 && idempotent || mirrored) && announced.is_some_and(|n| n <= MAX_REPLAY_BODY) {
        // Read whole by `keep_body` before the first try (and the mirror's copy).
        (RequestOut::Incoming(body), Some(None))
    } else if let Some(max) = max_body {
        (RequestOut::Capped { body, left: max, max }, None)
    } else {
        (RequestOut::Incoming(body), None)
    };
    let retry_head = (attempts > 0).then(|| parts.headers.clone());
    Ok(Prepared {
        parts,
        forwarding,
        request_id,
        deadline,
        progress,
        idempotent,
        body: Some(body),
        replay,
        retry_head,
        unsent: None,
    })
}

impl Prepared {
    /// When retries may send the body again: reads it into memory (it is small, its size
    /// announced), within the request's deadline.
    async fn keep_body(&mut self, timer: &mut LazyTimer) -> Result<(), Failure> {
        let Some(RequestOut::Incoming(_)) = &self.body else { return Ok(()) };
        if self.replay.is_none() {
            return Ok(());
        }
        let Some(RequestOut::Incoming(body)) = self.body.take() else { return Ok(()) };
        let collect = std::pin::pin!(Limited::new(body, MAX_REPLAY_BODY as usize).collect());
        match timer.within(self.deadline, collect).await {
            Some(Ok(b)) => {
                let b = b.to_bytes();
                self.body = Some(RequestOut::Buffered(Some(b.clone())));
                self.replay = Some(Some(b));
                Ok(())
            }
            Some(Err(_)) => Err(Failure::new(Side::Downstream, ProxyError::ClientBody)),
            None => Err(Failure { close: true, ..Failure::new(Side::Downstream, ProxyError::ClientTimeout) }),
        }
    }

    /// The request for a try to `addr`: one handed back unsent, else a new one from the head
    /// (moved into the only try when no retry can follow, copied otherwise).
    fn next_request(&mut self, addr: SocketAddr) -> Request<RequestOut> {
        if let Some(r) = self.unsent.take() {
            return r;
        }
        let b = match (self.body.take(), &self.replay) {
            (Some(b), _) => b,
            (None, Some(Some(bytes))) => RequestOut::Buffered(Some(bytes.clone())),
            (None, _) => RequestOut::Empty,
        };
        let mut r = Request::new(b);
        *r.version_mut() = Version::HTTP_11;
        let parts = &mut self.parts;
        match &self.retry_head {
            Some(h) => {
                *r.method_mut() = parts.method.clone();
                *r.uri_mut() = parts.uri.clone();
                *r.headers_mut() = h.clone();
            }
            None => {
                *r.method_mut() = std::mem::take(&mut parts.method);
                *r.uri_mut() = std::mem::take(&mut parts.uri);
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
}

/// Phase 3: the endpoint for this try: the sticky pin first, else by the key or the policy,
/// preferring endpoints not tried yet.
fn pick_endpoint(up: &mut Upstream<'_>, tried: &[SocketAddr]) -> Result<EndpointGuard, Failure> {
    let cluster = up.cluster;
    let picked = match (up.pinned.take(), up.hash_key) {
        (Some(g), _) => Some(g),
        (None, Some(k)) => cluster.pick_hashed(k, tried),
        (None, None) if tried.is_empty() => cluster.pick(),
        (None, None) => cluster.pick_excluding(tried).or_else(|| cluster.pick()),
    };
    picked.ok_or_else(|| {
        let why = if cluster.is_full() { ProxyError::EndpointsFull } else { ProxyError::NoHealthyEndpoint };
        Failure::new(Side::Internal, why)
    })
}

/// Phase 4: one exchange with the endpoint, over the protocol the cluster speaks.
pub(super) async fn one_try(
    down: &Downstream,
    cluster: &ClusterLb,
    addr: SocketAddr,
    dial: Dial<'_>,
    upgrade: bool,
    request: Request<RequestOut>,
    forwarding: &[u8],
) -> Result<Response<UpstreamBody>, Failed> {
    let client = &down.ctx.shared.client;
    let protocol = cluster.protocol();
    if upgrade {
        // Boxed: rare, and it would enlarge every request's future (see `request`).
        let sending = client.request_upgrade(addr, dial, request, forwarding);
        return Box::pin(sending).await.map(|r| r.map(UpstreamBody::H1));
    }
    if speaks_h2(protocol, addr, dial) {
        // Boxed for the same reason: HTTP/1.1's future stays as small as it was.
        let auto = protocol == UpstreamProtocol::Auto;
        return Box::pin(upstream_h2::request(addr, dial, cluster.breaker(), request, forwarding, auto)).await;
    }
    client.request(addr, dial, cluster.breaker(), request, forwarding).await.map(|r| r.map(UpstreamBody::H1))
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

/// Phase 5: the endpoint's answer on its way to the client, holding what the exchange still
/// occupies (the endpoint's active-request guard, the breaker's permit); a 101 becomes a tunnel.
fn finish(
    resp: Response<UpstreamBody>,
    upgrade: bool,
    endpoint: EndpointGuard,
    permit: Option<RequestPermit>,
    cookie: Option<HeaderValue>,
    served: Option<access_log::Served>,
) -> Response<ProxyBody> {
    // The upstream client left the hop-by-hop headers out.
    let (mut head, body) = resp.into_parts();
    let mut resp = match body {
        UpstreamBody::H1(b) if upgrade && head.status == http::StatusCode::SWITCHING_PROTOCOLS => {
            switch_protocols(Response::from_parts(head, b), endpoint, permit, cookie)
        }
        body => {
            if let Some(c) = cookie {
                head.headers.append(header::SET_COOKIE, c);
            }
            Response::from_parts(head, ProxyBody::Upstream { body, endpoint: Some(endpoint), permit })
        }
    };
    if let Some(s) = served {
        resp.extensions_mut().insert(s);
    }
    resp
}
