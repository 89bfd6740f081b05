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
        let grpc = resp.headers().get("grpc-status").and_then(|v| v.to_str().ok());
        self.write(listener, client, route, resp.status().as_u16(), resp.extensions().get::<Served>(), grpc);
    }

    /// A line whose gRPC status comes in the response's trailers: written when the body ends.
    pub fn pending<B>(self, listener: &str, client: SocketAddr, route: Option<&str>, resp: &Response<B>) -> Pending {
        Pending {
            line: Some(PendingLine {
                entry: self,
                listener: listener.to_string(),
                client,
                route: route.map(str::to_string),
                status: resp.status().as_u16(),
                served: resp.extensions().get::<Served>().cloned(),
            }),
        }
    }

    fn write(
        self,
        listener: &str,
        client: SocketAddr,
        route: Option<&str>,
        status: u16,
        served: Option<&Served>,
        grpc_status: Option<&str>,
    ) {
        let endpoint = served.map(|s| s.endpoint.to_string());
        tracing::info!(
            target: "sluice::access",
            listener,
            %client,
            method = %self.method,
            host = self.host.as_deref().unwrap_or("-"),
            target = %self.target,
            status,
            grpc_status = grpc_status.unwrap_or("-"),
            route = route.unwrap_or("-"),
            cluster = served.map_or("-", |s| s.cluster.as_str()),
            endpoint = endpoint.as_deref().unwrap_or("-"),
            tries = served.map_or(0, |s| s.tries),
            request_id = served.and_then(|s| s.request_id.as_ref()).and_then(|v| v.to_str().ok()).unwrap_or("-"),
            ms = self.started.elapsed().as_secs_f64() * 1000.0,
        );
    }
}

/// A gRPC call's line held until its trailers say how it ended; written at most once, with the
/// status given to [`Pending::end`], or with `-` if the body is dropped first.
pub struct Pending {
    line: Option<PendingLine>,
}

struct PendingLine {
    entry: Entry,
    listener: String,
    client: SocketAddr,
    route: Option<String>,
    status: u16,
    served: Option<Served>,
}

impl Pending {
    pub fn end(&mut self, grpc_status: Option<&str>) {
        if let Some(l) = self.line.take() {
            l.entry.write(&l.listener, l.client, l.route.as_deref(), l.status, l.served.as_ref(), grpc_status);
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.end(None);
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

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The access-log lines `f` writes.
    fn captured(f: impl FnOnce()) -> Vec<String> {
        let lines = Lines::default();
        let out = lines.clone();
        let subscriber = tracing_subscriber::fmt().with_writer(move || out.clone()).with_ansi(false).finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_string).collect()
    }

    fn call() -> (Request<()>, Response<()>) {
        let req = Request::post("/svc.Health/Check").body(()).unwrap();
        (req, Response::new(()))
    }

    #[test]
    fn a_grpc_line_waits_for_its_status_and_is_written_once() {
        let client: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let lines = captured(|| {
            let (req, resp) = call();
            let mut pending = Entry::start(&req, Some("h")).pending("web", client, Some("r"), &resp);
            pending.end(Some("5"));
            pending.end(Some("0"));
            drop(pending);
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("grpc_status=\"5\"") && lines[0].contains("status=200"), "{}", lines[0]);

        // Dropped before any status (the client went away): written all the same, with "-".
        let lines = captured(|| {
            let (req, resp) = call();
            drop(Entry::start(&req, None).pending("web", client, None, &resp));
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("grpc_status=\"-\""), "{}", lines[0]);
    }
}
