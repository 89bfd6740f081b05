//! The access log: one line per request, a tracing event with target `sluice::access` (`sluice
//! proxy --access-log`, or `RUST_LOG=sluice::access=info`). Nothing is captured unless that target
//! is enabled, so a node without it pays one cached interest check per request.

use std::net::SocketAddr;
use std::time::Instant;

use http::{HeaderValue, Method, Request, Response};

/// What the upstream side adds to a response's line (put in the response's extensions, and only
/// when the access log is on).
#[derive(Debug, Clone)]
pub struct Served {
    pub cluster: String,
    pub endpoint: SocketAddr,
    /// Tries sent: 1 + retries.
    pub tries: u32,
    pub request_id: Option<HeaderValue>,
}

pub fn enabled() -> bool {
    tracing::enabled!(target: "sluice::access", tracing::Level::INFO)
}

/// A request's line, from its head to its response head.
pub struct Entry {
    started: Instant,
    method: Method,
    host: Option<String>,
    target: String,
}

impl Entry {
    pub fn start<B>(req: &Request<B>, host: Option<&str>) -> Entry {
        let target = req.uri().path_and_query().map_or_else(|| req.uri().path().to_string(), |p| p.to_string());
        Entry { started: Instant::now(), method: req.method().clone(), host: host.map(str::to_string), target }
    }

    pub fn finish<B>(self, listener: &str, client: SocketAddr, route: Option<&str>, resp: &Response<B>) {
        let served = resp.extensions().get::<Served>();
        let endpoint = served.map(|s| s.endpoint.to_string());
        tracing::info!(
            target: "sluice::access",
            listener,
            %client,
            method = %self.method,
            host = self.host.as_deref().unwrap_or("-"),
            target = %self.target,
            status = resp.status().as_u16(),
            route = route.unwrap_or("-"),
            cluster = served.map_or("-", |s| s.cluster.as_str()),
            endpoint = endpoint.as_deref().unwrap_or("-"),
            tries = served.map_or(0, |s| s.tries),
            request_id = served.and_then(|s| s.request_id.as_ref()).and_then(|v| v.to_str().ok()).unwrap_or("-"),
            ms = self.started.elapsed().as_secs_f64() * 1000.0,
        );
    }
}
