//! One proxied request: route lookup on the table loaded once for the request, endpoint pick,
//! forwarding headers, the upstream exchange with its timeout and retries, and the answer.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{Request, Response, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use sluice_shared::model::RetryOn;

use super::body::ProxyBody;
use super::errors::ProxyError;
use crate::metrics::ResponseCounts;
use crate::state::{ConnCtx, Installed};
use crate::table::{normalize_host, ClusterLb, RequestView, RouteEntry};

/// Used when a route sets no `timeout_ms`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Headers that belong to one hop and are never forwarded (RFC 9110 §7.6.1).
/// Names, not strings: removing by `&str` parses the name again on every request.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];

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

pub async fn handle(req: Request<Incoming>, down: Arc<Downstream>) -> Result<Response<ProxyBody>, Infallible> {
    let conn = &down.ctx;
    // The table is loaded once and kept until this request is answered, whatever is installed meanwhile.
    let Some(installed) = conn.shared.installed.load_full() else {
        return Ok(answer(&conn.shared.metrics.unrouted, ProxyError::NotReady));
    };
    Ok(route_and_forward(req, &down, &installed).await)
}

async fn route_and_forward(req: Request<Incoming>, down: &Downstream, installed: &Installed) -> Response<ProxyBody> {
    let conn = &*down.ctx;
    let unrouted = &conn.shared.metrics.unrouted;
    let Some(listener) = installed.table.listener(&conn.listener) else {
        return answer(unrouted, ProxyError::NoRoute);
    };
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
        return answer(unrouted, ProxyError::NoRoute);
    };
    route.stats().record_request();
    let cluster = route.pick_cluster();
    let counts = installed.stats.responses(route.name(), cluster.name()).unwrap_or(unrouted);
    let resp = forward(req, down, installed, route, cluster, counts).await;
    route.stats().record_response(resp.status().as_u16());
    resp
}

async fn forward(
    req: Request<Incoming>,
    down: &Downstream,
    installed: &Installed,
    route: &RouteEntry,
    cluster: &Arc<ClusterLb>,
    counts: &ResponseCounts,
) -> Response<ProxyBody> {
    let conn = &*down.ctx;
    let (mut parts, body) = req.into_parts();
    prepare_headers(&mut parts.headers, parts.uri.authority(), down);
    let mut uri = origin_form(parts.uri);

    let policy = route.retries();
    // A retry needs the request again: only bodyless requests can be replayed.
    let retries = if body.is_end_stream() { policy.map_or(0, |p| p.attempts) } else { 0 };
    let retry_head = (retries > 0).then(|| parts.headers.clone());
    let mut body = Some(ProxyBody::Incoming(body));
    let deadline = tokio::time::Instant::now() + route.timeout().unwrap_or(DEFAULT_TIMEOUT);
    let latency = installed.stats.latency(cluster.name());
    let upstream_tls = installed.tls.upstream(cluster.name()).map(|t| &**t);
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut attempt = 0;
    loop {
        let picked =
            if tried.is_empty() { cluster.pick() } else { cluster.pick_excluding(&tried).or_else(|| cluster.pick()) };
        let Some(endpoint) = picked else {
            return answer(counts, ProxyError::NoHealthyEndpoint);
        };
        let addr = endpoint.address();
        let mut upstream = Request::new(body.take().unwrap_or(ProxyBody::Empty));
        *upstream.version_mut() = Version::HTTP_11;
        // Without retries there is one attempt: the head moves to it instead of being copied.
        match &retry_head {
            Some(h) => {
                *upstream.method_mut() = parts.method.clone();
                *upstream.uri_mut() = uri.clone();
                *upstream.headers_mut() = h.clone();
            }
            None => {
                *upstream.method_mut() = std::mem::take(&mut parts.method);
                *upstream.uri_mut() = std::mem::take(&mut uri);
                *upstream.headers_mut() = std::mem::take(&mut parts.headers);
            }
        }
        if !upstream.headers().contains_key(header::HOST) {
            // An HTTP/1.0 client may send no Host; HTTP/1.1 to the endpoint needs one.
            if let Ok(v) = HeaderValue::try_from(addr.to_string()) {
                upstream.headers_mut().insert(header::HOST, v);
            }
        }
        let started = Instant::now();
        let can_retry = |what: RetryOn| attempt < retries && policy.is_some_and(|p| p.retries_on(what));
        match tokio::time::timeout_at(deadline, conn.shared.client.request(addr, upstream_tls, upstream)).await {
            Err(_) => {
                tracing::debug!(route = route.name(), %addr, "upstream timeout");
                return answer(counts, ProxyError::UpstreamTimeout);
            }
            Ok(Ok((resp, lease))) => {
                if let Some(h) = latency {
                    h.observe(started.elapsed());
                }
                cluster.record_outcome(&endpoint, resp.status().is_server_error());
                if resp.status().is_server_error() && can_retry(RetryOn::Status5xx) {
                    tried.push(addr);
                    attempt += 1;
                    continue;
                }
                counts.record(resp.status().as_u16());
                let (mut head, incoming) = resp.into_parts();
                strip_hop_by_hop(&mut head.headers);
                // hyper may never poll a body that is already over: the connection is free now.
                let lease = if incoming.is_end_stream() {
                    lease.release();
                    None
                } else {
                    Some(lease)
                };
                let body = ProxyBody::Upstream { body: incoming, endpoint: Some(endpoint), lease };
                return Response::from_parts(head, body);
            }
            Ok(Err(e)) => {
                let what = if e.is_connect() { RetryOn::ConnectFailure } else { RetryOn::Reset };
                if what == RetryOn::ConnectFailure {
                    cluster.record_outcome(&endpoint, true);
                }
                tracing::debug!(route = route.name(), %addr, error = %e, "upstream request failed");
                if can_retry(what) {
                    tried.push(addr);
                    attempt += 1;
                    continue;
                }
                let err = if what == RetryOn::ConnectFailure {
                    ProxyError::UpstreamConnect
                } else {
                    ProxyError::UpstreamFailed
                };
                return answer(counts, err);
            }
        }
    }
}

fn answer(counts: &ResponseCounts, err: ProxyError) -> Response<ProxyBody> {
    counts.record(err.status().as_u16());
    err.response()
}

/// The request target as sent to an endpoint: origin-form (`/path?query`). An origin-form target
/// (the usual case) is passed on as it is; an absolute-form one loses its scheme and authority.
fn origin_form(uri: Uri) -> Uri {
    if uri.scheme().is_none() && uri.authority().is_none() && uri.path_and_query().is_some() {
        return uri;
    }
    let path = uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
    Uri::from(path)
}

/// Hop-by-hop headers out, forwarding headers in.
fn prepare_headers(headers: &mut HeaderMap, authority: Option<&Authority>, down: &Downstream) {
    strip_hop_by_hop(headers);
    let conn = &*down.ctx;

    let mut prior = headers.get_all(&X_FORWARDED_FOR).iter().filter_map(|v| v.to_str().ok());
    let xff = match prior.next() {
        None => Some(down.peer_ip.clone()),
        Some(first) => {
            let mut v = first.to_string();
            for p in prior {
                v.push_str(", ");
                v.push_str(p);
            }
            v.push_str(", ");
            v.push_str(down.peer_ip.to_str().unwrap_or_default());
            HeaderValue::try_from(v).ok()
        }
    };
    if let Some(v) = xff {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(conn.scheme));
    let host = match authority {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => headers.get(header::HOST).cloned(),
    };
    if let Some(host) = host {
        if authority.is_some() {
            // The backend sees the host the client asked for, not the endpoint's address.
            headers.insert(header::HOST, host.clone());
        }
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
    if !headers.contains_key(&X_REQUEST_ID) {
        // `Uuid::new_v4` asks the OS for randomness (a syscall per request); the thread-local
        // generator gives the same v4 ids from user space.
        let id = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        if let Ok(v) = HeaderValue::from_str(id.hyphenated().encode_lower(&mut buf)) {
            headers.insert(X_REQUEST_ID.clone(), v);
        }
    }
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named by `Connection` are hop-by-hop too (but never the ones routing relies on).
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .filter(|n| n != header::HOST && n != header::CONTENT_LENGTH)
            .collect();
        for n in named {
            headers.remove(n);
        }
    }
    for h in &HOP_BY_HOP {
        headers.remove(h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret, host"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(header::HOST, HeaderValue::from_static("a"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, vec!["host", "x-keep"]);
    }

    #[test]
    fn origin_form_keeps_path_and_query() {
        let u = origin_form("/a/b?x=1".parse().unwrap());
        assert_eq!(u.to_string(), "/a/b?x=1");
        let u = origin_form("http://example.com:8080/a/b?x=1".parse().unwrap());
        assert_eq!(u.to_string(), "/a/b?x=1");
        assert_eq!(origin_form("http://example.com".parse().unwrap()).to_string(), "/");
    }
}
