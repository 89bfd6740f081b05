//! Helpers for the L7 end-to-end tests: proxies in a chosen group with a cache dir that outlives
//! them, a control plane on a database and ports that survive a restart, backends that record what
//! reached them (optionally slow), a strict keep-alive HTTP/1.1 client and a bounded concurrent load.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::HeaderMap;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::{eventually, free_addr, Api, Sluice};

/// How long a process may take to start answering (debug builds on a busy 2-core machine).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A temp dir, removed on drop (re-exported: the test targets do not depend on tempfile).
pub use tempfile::TempDir;

/// A fresh temp dir (for cache dirs and databases that outlive one process).
pub fn tempdir() -> TempDir {
    tempfile::Builder::new().prefix("sluice-e2e-l7-").tempdir().expect("temp dir")
}

/// `sluice control-plane` on the SQLite file `db` and the given addresses, so that a second one
/// started the same way after a kill finds the same state at the same place.
pub async fn control_plane_at(bin: &str, db: &Path, api: SocketAddr, grpc: SocketAddr) -> Sluice {
    let args: Vec<String> = [
        "control-plane".to_string(),
        "--database-url".into(),
        format!("sqlite://{}", db.display()),
        "--api-addr".into(),
        api.to_string(),
        "--grpc-addr".into(),
        grpc.to_string(),
    ]
    .into();
    let mut s = Sluice::spawn(bin, "control-plane", &args, &[]);
    s.api_addr = Some(api);
    s.grpc_addr = Some(grpc);
    let client = s.api();
    eventually(START_TIMEOUT, "the control plane's /healthz", || {
        if let Some(status) = s.exited() {
            panic!("the control plane exited early ({status}):\n{}", s.log());
        }
        let client = client.clone();
        async move { client.healthy().await.then_some(()) }
    })
    .await;
    s
}

/// `sluice proxy --group GROUP --cache-dir CACHE` against the control planes' gRPC addresses;
/// returns once its admin /healthz answers (not necessarily configured: see [`readyz`]).
pub async fn proxy_in_group(bin: &str, grpc: &[SocketAddr], node_id: &str, group: &str, cache: &Path) -> Sluice {
    let admin = free_addr();
    let mut args = vec!["proxy".to_string()];
    for g in grpc {
        args.extend(["--control-plane".to_string(), format!("http://{g}")]);
    }
    args.extend(
        ["--node-id", node_id, "--group", group, "--admin-addr", &admin.to_string()].into_iter().map(String::from),
    );
    args.extend(["--cache-dir".to_string(), cache.display().to_string()]);
    let mut s = Sluice::spawn(bin, &format!("proxy-{node_id}"), &args, &[]);
    s.admin_addr = Some(admin);
    eventually(START_TIMEOUT, &format!("proxy {node_id}'s /healthz"), || {
        if let Some(status) = s.exited() {
            panic!("proxy {node_id} exited early ({status}):\n{}", s.log());
        }
        async move { (admin_status(admin, "/healthz").await == Some(200)).then_some(()) }
    })
    .await;
    s
}

/// The status of `GET path` on a node's admin address, `None` on a transport error.
pub async fn admin_status(admin: SocketAddr, path: &str) -> Option<u16> {
    let mut c = KeepAlive::new(admin);
    c.request("GET", "admin", path, &[]).await.ok().map(|(status, _)| status)
}

/// Whether the node at `admin` says it has a valid table installed.
pub async fn readyz(admin: SocketAddr) -> bool {
    admin_status(admin, "/readyz").await == Some(200)
}

/// Waits until every node in `ids` shows `acked_revision >= revision` on GET /v1/nodes.
pub async fn wait_acked(api: &Api, ids: &[&str], revision: u64) {
    for id in ids {
        eventually(Duration::from_secs(30), &format!("node {id} to ack revision {revision}"), || {
            let api = api.clone();
            async move {
                let n = api.node(id).await?;
                (n["acked_revision"].as_u64()? >= revision).then_some(())
            }
        })
        .await;
    }
}

/// Waits until GET /v1/nodes shows node `id` connected (any state but disconnected).
pub async fn wait_connected(api: &Api, id: &str) {
    eventually(Duration::from_secs(30), &format!("node {id} to connect"), || {
        let api = api.clone();
        async move { api.node(id).await.filter(|n| n["state"] != "disconnected").map(|_| ()) }
    })
    .await;
}

/// What reached a backend.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path_and_query: String,
    pub headers: HeaderMap,
}

/// An HTTP/1.1 backend on an ephemeral loopback port answering `NAME\n` (after `delay`), recording
/// every request it receives; stops accepting on drop.
pub struct Backend {
    pub name: String,
    pub address: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    hits: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        Backend::with_delay(name, Duration::ZERO).await
    }

    pub async fn with_delay(name: &str, delay: Duration) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding a backend");
        let address = listener.local_addr().expect("local_addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let hits = Arc::new(AtomicU64::new(0));
        let body = Bytes::from(format!("{name}\n"));
        let (seen2, hits2) = (seen.clone(), hits.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (body, seen, hits) = (body.clone(), seen2.clone(), hits2.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        hits.fetch_add(1, Ordering::Relaxed);
                        let s = Seen {
                            method: req.method().to_string(),
                            path_and_query: req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default(),
                            headers: req.headers().clone(),
                        };
                        if let Ok(mut v) = seen.lock() {
                            v.push(s);
                        }
                        let body = body.clone();
                        async move {
                            // Read the request body before answering, as a real server would.
                            let _ = req.into_body().collect().await;
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            Ok::<_, Infallible>(Response::new(Full::new(body)))
                        }
                    });
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        Backend { name: name.to_string(), address, seen, hits, task }
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Every request received so far, oldest first.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One client keep-alive connection, strict: a request that fails on an established connection is
/// an error; only a connection the server closed cleanly *between* requests is reopened (counted).
pub struct KeepAlive {
    addr: SocketAddr,
    sender: Option<SendRequest<Empty<Bytes>>>,
    pub connects: u64,
}

impl KeepAlive {
    pub fn new(addr: SocketAddr) -> KeepAlive {
        KeepAlive { addr, sender: None, connects: 0 }
    }

    /// Sends one bodiless request and reads the whole answer: `(status, body)`, or the error text.
    pub async fn request(
        &mut self,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<(u16, String), String> {
        let exchange = async {
            if let Some(s) = self.sender.as_mut() {
                if s.ready().await.is_err() {
                    self.sender = None;
                }
            }
            if self.sender.is_none() {
                let stream = TcpStream::connect(self.addr).await.map_err(|e| format!("connect {}: {e}", self.addr))?;
                let _ = stream.set_nodelay(true);
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| format!("handshake: {e}"))?;
                tokio::spawn(conn);
                self.sender = Some(sender);
                self.connects += 1;
            }
            let sender = self.sender.as_mut().ok_or("no connection")?;
            let mut req = Request::builder().method(method).uri(path).header("host", host);
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let req = req.body(Empty::new()).map_err(|e| format!("building the request: {e}"))?;
            let resp = sender.send_request(req).await.map_err(|e| format!("{method} {path}: {e}"))?;
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.map_err(|e| format!("reading the body: {e}"))?.to_bytes();
            Ok((status, String::from_utf8_lossy(&body).into_owned()))
        };
        match tokio::time::timeout(Duration::from_secs(10), exchange).await {
            Ok(r) => {
                if r.is_err() {
                    self.sender = None;
                }
                r
            }
            Err(_) => {
                self.sender = None;
                Err(format!("{method} {path}: no answer within 10 s"))
            }
        }
    }

    /// `GET path` with `Host: host`, returning `(status, trimmed body)`; panics on a transport error.
    pub async fn get(&mut self, host: &str, path: &str) -> (u16, String) {
        let (status, body) = self.request("GET", host, path, &[]).await.unwrap_or_else(|e| panic!("{e}"));
        (status, body.trim().to_string())
    }
}

/// What a bounded load saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub ok: u64,
    pub failed: u64,
    /// The first few failures, as text.
    pub failures: Vec<String>,
    /// Answers by trimmed body (200s only).
    pub bodies: BTreeMap<String, u64>,
    pub connects: u64,
}

impl LoadReport {
    fn merge(&mut self, other: LoadReport) {
        self.ok += other.ok;
        self.failed += other.failed;
        self.connects += other.connects;
        for f in other.failures {
            if self.failures.len() < 20 {
                self.failures.push(f);
            }
        }
        for (b, n) in other.bodies {
            *self.bodies.entry(b).or_default() += n;
        }
    }

    pub fn count(&self, body: &str) -> u64 {
        self.bodies.get(body).copied().unwrap_or(0)
    }
}

/// `tasks` keep-alive clients per address in `addrs`, each sending `GET path` until `stop` is set,
/// `max_per_task` requests were sent or `limit` passed. Anything but a 200 is a failure.
pub fn spawn_load(
    addrs: &[SocketAddr],
    host: &str,
    path: &str,
    tasks: usize,
    max_per_task: u64,
    limit: Duration,
    stop: Arc<AtomicBool>,
) -> JoinHandle<LoadReport> {
    let deadline = Instant::now() + limit;
    let mut handles = Vec::new();
    for addr in addrs {
        for _ in 0..tasks {
            let (addr, host, path, stop) = (*addr, host.to_string(), path.to_string(), stop.clone());
            handles.push(tokio::spawn(async move {
                let mut report = LoadReport::default();
                let mut c = KeepAlive::new(addr);
                for _ in 0..max_per_task {
                    if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
                        break;
                    }
                    match c.request("GET", &host, &path, &[]).await {
                        Ok((200, body)) => {
                            report.ok += 1;
                            *report.bodies.entry(body.trim().to_string()).or_default() += 1;
                        }
                        Ok((status, body)) => {
                            report.failed += 1;
                            if report.failures.len() < 20 {
                                report.failures.push(format!("{addr}: {status} {}", body.trim()));
                            }
                        }
                        Err(e) => {
                            report.failed += 1;
                            if report.failures.len() < 20 {
                                report.failures.push(format!("{addr}: {e}"));
                            }
                        }
                    }
                }
                report.connects = c.connects;
                report
            }));
        }
    }
    tokio::spawn(async move {
        let mut total = LoadReport::default();
        for h in handles {
            match h.await {
                Ok(r) => total.merge(r),
                Err(e) => {
                    total.failed += 1;
                    total.failures.push(format!("a load task panicked: {e}"));
                }
            }
        }
        total
    })
}

/// `n` sequential GETs over `conns` keep-alive connections to `addr`, answers counted by body.
pub async fn sample(addr: SocketAddr, host: &str, path: &str, n: u64) -> LoadReport {
    let stop = Arc::new(AtomicBool::new(false));
    let conns = 4;
    spawn_load(&[addr], host, path, conns, n / conns as u64, Duration::from_secs(60), stop)
        .await
        .expect("the load task")
}

/// Writes `raw` on a fresh connection and reads until the server closes it (or 5 s pass):
/// `(what came back, whether the server closed the connection)`.
pub async fn raw_exchange(addr: SocketAddr, raw: &[u8]) -> (String, bool) {
    let mut s = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.write_all(raw).await.expect("writing the raw request");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    };
    let closed = tokio::time::timeout(Duration::from_secs(5), read_all).await.unwrap_or(false);
    (String::from_utf8_lossy(&out).into_owned(), closed)
}
