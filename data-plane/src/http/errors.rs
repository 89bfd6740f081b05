//! The answers the proxy gives by itself (DESIGN §5): short plain-text bodies that say which.

use http::{header, HeaderValue, Response, StatusCode};

use super::body::ProxyBody;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    NoRoute,
    NoHealthyEndpoint,
    UpstreamConnect,
    UpstreamFailed,
    UpstreamTimeout,
    NotReady,
}

impl ProxyError {
    pub fn status(self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::NoHealthyEndpoint | ProxyError::NotReady => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamConnect | ProxyError::UpstreamFailed => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            ProxyError::NoRoute => "no route\n",
            ProxyError::NoHealthyEndpoint => "no healthy endpoint\n",
            ProxyError::UpstreamConnect => "upstream connect failure\n",
            ProxyError::UpstreamFailed => "upstream request failed\n",
            ProxyError::UpstreamTimeout => "upstream timeout\n",
            ProxyError::NotReady => "no configuration installed\n",
        }
    }

    pub fn response(self) -> Response<ProxyBody> {
        let msg = self.message();
        let mut resp = Response::new(ProxyBody::text(msg));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(msg.len()));
        resp
    }
}
