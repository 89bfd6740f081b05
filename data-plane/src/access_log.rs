//! The access log: one line per HTTP request, and one per L4 connection (tcp and tls passthrough
//! listeners) when it ends; a tracing event with target `sluice::access` (`sluice proxy
//! --access-log`, or `RUST_LOG=sluice::access=info`). Nothing is captured unless that target is
//! enabled, so a node without it pays one cached interest check per request or connection.

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

/// An L4 connection's line: who connected, where it went, bytes each way, how long, and how it
/// ended. Written when the entry is dropped, so every way out of a connection's task (refused,
/// no endpoint, splice ended) gets its line; a no-op when the log is off.
pub struct L4Entry<'a> {
    /// `None` when the access log is off.
    line: Option<L4Line<'a>>,
}

struct L4Line<'a> {
    started: Instant,
    listener: &'a str,
    client: SocketAddr,
    sni: Option<String>,
    cluster: Option<String>,
    endpoint: Option<SocketAddr>,
    received: u64,
    sent: u64,
    end: &'static str,
}

impl<'a> L4Entry<'a> {
    pub fn start(listener: &'a str, client: SocketAddr) -> L4Entry<'a> {
        let line = enabled().then(|| L4Line {
            started: Instant::now(),
            listener,
            client,
            sni: None,
            cluster: None,
            endpoint: None,
            received: 0,
            sent: 0,
            // Until told otherwise: the task was dropped mid-way (the node shutting down).
            end: "cancelled",
        });
        L4Entry { line }
    }

    /// The server name of a tls passthrough connection's ClientHello.
    pub fn sni(&mut self, name: Option<&str>) {
        if let Some(l) = &mut self.line {
            l.sni = name.map(str::to_string);
        }
    }

    pub fn upstream(&mut self, cluster: &str, endpoint: SocketAddr) {
        if let Some(l) = &mut self.line {
            l.cluster = Some(cluster.to_string());
            l.endpoint = Some(endpoint);
        }
    }

    /// Bytes from the client (to the endpoint) and to the client.
    pub fn bytes(&mut self, received: u64, sent: u64) {
        if let Some(l) = &mut self.line {
            l.received += received;
            l.sent += sent;
        }
    }

    /// How the connection ended.
    pub fn end(&mut self, why: &'static str) {
        if let Some(l) = &mut self.line {
            l.end = why;
        }
    }
}

impl Drop for L4Entry<'_> {
    fn drop(&mut self) {
        let Some(l) = &self.line else { return };
        let endpoint = l.endpoint.map(|e| e.to_string());
        tracing::info!(
            target: "sluice::access",
            listener = l.listener,
            client = %l.client,
            sni = l.sni.as_deref().unwrap_or("-"),
            cluster = l.cluster.as_deref().unwrap_or("-"),
            endpoint = endpoint.as_deref().unwrap_or("-"),
            received = l.received,
            sent = l.sent,
            end = l.end,
            ms = l.started.elapsed().as_secs_f64() * 1000.0,
        );
    }
}
