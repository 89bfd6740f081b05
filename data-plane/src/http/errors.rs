//! The answers the proxy gives by itself (DESIGN §5): short plain-text bodies that say which.

use http::{header, HeaderValue, Response, StatusCode};

use super::body::ProxyBody;
use super::codec::path::PathError;
use crate::table::Overflow;

static X_SLUICE_OVERFLOW: header::HeaderName = header::HeaderName::from_static("x-sluice-overflow");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    NoRoute,
    /// The cluster's circuit breaker is open for this limit.
    Overflow(Overflow),
    NoHealthyEndpoint,
    /// Every endpoint that could take the request is at its `max_connections`.
    EndpointsFull,
    UpstreamConnect,
    UpstreamFailed,
    UpstreamTimeout,
    NotReady,
    /// The request body could not be read in full (to keep it for retries).
    ClientBody,
    /// A plain-http request to a redirecting route that names no host.
    NoHost,
    /// The request body is over the route's `max_request_body_bytes`.
    BodyTooLarge,
    /// The request's path cannot be normalized (see `codec/path.rs`).
    BadPath(PathError),
    /// The Host (or the target's authority) is not a valid authority.
    BadHost,
    /// CONNECT: no route tunnels.
    Connect,
    /// The client stopped sending its request body for the listener's `body_timeout_ms`.
    ClientTimeout,
    /// The route's `allow_from` / `deny_from` refuse the client's address.
    Forbidden,
    /// The route's regex rewrite made something that is not a path.
    BadRewrite,
    /// The route's rate limit: no token for this request's key.
    RateLimited,
}

impl ProxyError {
    pub fn status(self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::NoHealthyEndpoint
            | ProxyError::EndpointsFull
            | ProxyError::NotReady
            | ProxyError::Overflow(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamConnect | ProxyError::UpstreamFailed => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::ClientBody | ProxyError::NoHost => StatusCode::BAD_REQUEST,
            ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BadPath(_) | ProxyError::BadHost => StatusCode::BAD_REQUEST,
            ProxyError::Connect => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::ClientTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::Forbidden => StatusCode::FORBIDDEN,
            ProxyError::BadRewrite => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            ProxyError::NoRoute => "no route\n",
            ProxyError::NoHealthyEndpoint => "no healthy endpoint\n",
            ProxyError::EndpointsFull => "every endpoint at max_connections\n",
            ProxyError::Overflow(Overflow::Connections) => "circuit breaker open: connections\n",
            ProxyError::Overflow(Overflow::Pending) => "circuit breaker open: pending\n",
            ProxyError::Overflow(Overflow::Requests) => "circuit breaker open: requests\n",
            ProxyError::UpstreamConnect => "upstream connect failure\n",
            ProxyError::UpstreamFailed => "upstream request failed\n",
            ProxyError::UpstreamTimeout => "upstream timeout\n",
            ProxyError::NotReady => "no configuration installed\n",
            ProxyError::ClientBody => "request body could not be read\n",
            ProxyError::NoHost => "no host to redirect to\n",
            ProxyError::BodyTooLarge => "request body too large\n",
            ProxyError::BadPath(PathError::NotOriginForm) => "the request target is not a path\n",
            ProxyError::BadPath(PathError::BadEscape) => "malformed percent-encoding in the path\n",
            ProxyError::BadPath(PathError::EscapedSlash) => "encoded slash or backslash in the path\n",
            ProxyError::BadHost => "invalid host\n",
            ProxyError::Connect => "CONNECT is not supported\n",
            ProxyError::ClientTimeout => "request body timeout\n",
            ProxyError::Forbidden => "forbidden\n",
            ProxyError::BadRewrite => "the route's rewrite made an invalid path\n",
            ProxyError::RateLimited => "rate limited\n",
        }
    }

    /// `x-sluice-overflow: <limit>` on answers to a limit reached.
    pub fn mark_overflow(self, headers: &mut header::HeaderMap) {
        let overflow = match self {
            ProxyError::Overflow(o) => o.as_str(),
            ProxyError::EndpointsFull => "endpoint_connections",
            _ => return,
        };
        headers.insert(X_SLUICE_OVERFLOW.clone(), HeaderValue::from_static(overflow));
    }

    pub fn response(self) -> Response<ProxyBody> {
        let msg = self.message();
        let mut resp = Response::new(ProxyBody::text(msg));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(msg.len()));
        self.mark_overflow(h);
        if self == ProxyError::Connect {
            h.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"));
        }
        // What it was, for a gRPC call's status (`grpc::error_response`).
        resp.extensions_mut().insert(self);
        resp
    }
}
