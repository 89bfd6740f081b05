//! Test support: a mock control plane (a real tonic server speaking ConfigDiscovery), small HTTP
//! and TCP backends, a raw HTTP/1.1 client and an `eventually` poll helper. Everything on loopback.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sluice_data_plane::{Node, NodeOptions};
use sluice_shared::proto::v1 as pb;
use sluice_shared::proto::v1::config_discovery_server::{ConfigDiscovery, ConfigDiscoveryServer};
use sluice_shared::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// Polls `check` until it returns `Some`, every 20 ms, for at most 10 s.
pub async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_within(Duration::from_secs(10), what, check).await
}

/// [`eventually`] with another bound, for what waits on a slow outside process.
pub async fn eventually_within<T, F, Fut>(bound: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ------------------------------------------------------------------------------------ control plane

type Outbound = mpsc::Sender<Result<pb::ServerMessage, Status>>;

#[derive(Default)]
struct MockState {
    /// Sent to every node right after its Hello.
    initial: Option<pb::Snapshot>,
    current: Option<Outbound>,
    received: Vec<pb::node_message::Msg>,
    streams: usize,
}

#[derive(Clone, Default)]
pub struct MockControlPlane {
    state: Arc<Mutex<MockState>>,
}

#[tonic::async_trait]
impl ConfigDiscovery for MockControlPlane {
    type StreamStream = ReceiverStream<Result<pb::ServerMessage, Status>>;

    async fn stream(&self, req: Request<Streaming<pb::NodeMessage>>) -> Result<Response<Self::StreamStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let initial = {
            let mut s = self.state.lock().unwrap();
            s.current = Some(tx.clone());
            s.streams += 1;
            s.initial.clone()
        };
        let state = self.state.clone();
        tokio::spawn(async move {
            let mut first = true;
            while let Ok(Some(m)) = inbound.message().await {
                if let Some(msg) = m.msg {
                    state.lock().unwrap().received.push(msg);
                }
                if first {
                    first = false;
                    if let Some(s) = &initial {
                        let _ = tx.send(Ok(snapshot_msg(s.clone()))).await;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

fn snapshot_msg(s: pb::Snapshot) -> pb::ServerMessage {
    pb::ServerMessage { msg: Some(pb::server_message::Msg::Snapshot(s)) }
}

pub struct ControlPlane {
    pub addr: SocketAddr,
    pub mock: MockControlPlane,
    task: tokio::task::JoinHandle<()>,
}

impl ControlPlane {
    pub async fn start(initial: Option<pb::Snapshot>) -> ControlPlane {
        let mock = MockControlPlane::default();
        mock.state.lock().unwrap().initial = initial;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let svc = ConfigDiscoveryServer::new(mock.clone());
        let task = tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = tonic::transport::Server::builder().add_service(svc).serve_with_incoming(incoming).await;
        });
        ControlPlane { addr, mock, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sends a message on the current stream (the node must be connected).
    pub async fn send(&self, msg: pb::server_message::Msg) {
        let tx = eventually("a node stream", || async { self.mock.state.lock().unwrap().current.clone() }).await;
        tx.send(Ok(pb::ServerMessage { msg: Some(msg) })).await.unwrap();
    }

    pub async fn send_snapshot(&self, s: pb::Snapshot) {
        self.send(pb::server_message::Msg::Snapshot(s)).await;
    }

    pub fn received(&self) -> Vec<pb::node_message::Msg> {
        self.mock.state.lock().unwrap().received.clone()
    }

    /// Waits for the node's Ack or Nack of `revision`.
    pub async fn reply_to(&self, revision: u64) -> pb::node_message::Msg {
        eventually(&format!("ack or nack of revision {revision}"), || async {
            self.received().into_iter().find(|m| match m {
                pb::node_message::Msg::Ack(a) => a.revision == revision,
                pb::node_message::Msg::Nack(n) => n.revision == revision,
                _ => false,
            })
        })
        .await
    }

    /// Waits for the node's reply to `revision` and fails the test unless it is an Ack.
    pub async fn expect_ack(&self, revision: u64) {
        match self.reply_to(revision).await {
            pb::node_message::Msg::Ack(_) => {}
            other => panic!("revision {revision} not acked: {other:?}"),
        }
    }

    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// A snapshot of `config` at `revision`.
pub fn snapshot(config: &Config, revision: u64) -> pb::Snapshot {
    let mut s = pb::Snapshot::from(config);
    s.revision = revision;
    s.nonce = format!("nonce-{revision}");
    s.control_plane_id = "mock".into();
    s
}

/// A config from its JSON (REST) shape.
pub fn config(json: serde_json::Value) -> Config {
    serde_json::from_value(json).unwrap()
}

// ------------------------------------------------------------------------------------ nodes

/// A node that has acknowledged `cfg` as revision 1.
pub async fn node_with(cfg: &Config) -> (ControlPlane, Node) {
    let cp = ControlPlane::start(Some(snapshot(cfg, 1))).await;
    let node = start_node(vec![cp.url()], None).await;
    cp.expect_ack(1).await;
    (cp, node)
}

/// A node with one http listener whose one route sends everything to a [`Backend`] "app";
/// returns once the listener answers.
#[allow(dead_code)]
pub async fn one_route_node() -> (ControlPlane, Node, SocketAddr, Backend) {
    let app = Backend::start("app").await;
    let listener = free_addr();
    let cfg = config(serde_json::json!({
        "clusters": {"app": {"endpoints": [{"address": app.addr.to_string()}]}},
        "listeners": {"web": {"address": listener.to_string(), "protocol": "http"}},
        "routes": {"app": {"listener": "web", "backends": [{"cluster": "app"}]}}
    }));
    let (cp, node) = node_with(&cfg).await;
    eventually("listener up", || async { try_get(listener, "a.test", "/").await }).await;
    (cp, node, listener, app)
}

pub async fn start_node(cps: Vec<String>, cache_dir: Option<std::path::PathBuf>) -> Node {
    Node::start(NodeOptions {
        control_planes: cps,
        node_id: "test-node".into(),
        group: "default".into(),
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        cache_dir,
        control_plane_tls: None,
        dns: Default::default(),
        upgrade_socket: None,
        shutdown_drain: Some(Duration::from_secs(5)),
    })
    .await
    .unwrap()
}

/// A port that was free a moment ago (for listener addresses in snapshots).
pub fn free_addr() -> SocketAddr {
    sluice_e2e::free_addr()
}

/// An address where connections are refused for as long as the returned socket lives: it is
/// bound (so no other test can take the port) but not listening. A released `free_addr` can be
/// handed to another test's listener meanwhile, which turns "refused" into "answered".
#[allow(dead_code)]
pub fn refusing_addr() -> (SocketAddr, socket2::Socket) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    (addr, socket)
}

/// An address whose listener never answers a SYN: a zero backlog whose one queued connection is
/// never accepted (the kernel then drops further SYNs), so connects there hang until they time
/// out. Silent for as long as the returned sockets live.
pub fn silent_addr() -> (SocketAddr, (socket2::Socket, std::net::TcpStream)) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    let filler = std::net::TcpStream::connect(addr).unwrap();
    (addr, (socket, filler))
}

// ------------------------------------------------------------------------------------ backends

/// An HTTP backend that answers `name` plus the request's headers, and counts its requests.
/// `/slow` answers after 2 s; `/status/NNN` answers with that status.
pub struct Backend {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    /// What the last request was, as the backend answered it.
    last: Arc<std::sync::Mutex<String>>,
    /// TCP connections accepted (to see upstream keep-alive at work).
    pub connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    pub async fn start(name: &'static str) -> Backend {
        Backend::start_on(name, TcpListener::bind("127.0.0.1:0").await.unwrap())
    }

    /// [`Backend::start`] on a listener the caller bound (another loopback address, a given port).
    pub fn start_on(name: &'static str, listener: TcpListener) -> Backend {
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let connections = Arc::new(AtomicUsize::new(0));
        let conns = connections.clone();
        let last = Arc::new(std::sync::Mutex::new(String::new()));
        let last_seen = last.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                conns.fetch_add(1, Ordering::SeqCst);
                let (counter, last_seen) = (counter.clone(), last_seen.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (counter, last_seen) = (counter.clone(), last_seen.clone());
                        async move {
                            let path = req.uri().path().to_string();
                            let mut text = format!("backend={name}\npath={path}\n");
                            for (k, v) in req.headers() {
                                text.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
                            }
                            let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            text.push_str(&format!("body={}\n", String::from_utf8_lossy(&body)));
                            *last_seen.lock().unwrap() = text.clone();
                            // Counted once the whole request is in (and `last_request` shows it).
                            counter.fetch_add(1, Ordering::SeqCst);
                            if path == "/slow" {
                                tokio::time::sleep(Duration::from_secs(2)).await;
                            }
                            let status = path.strip_prefix("/status/").and_then(|s| s.parse().ok()).unwrap_or(200);
                            let mut resp = hyper::Response::new(Full::new(Bytes::from(text)));
                            *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        Backend { addr, hits, last, connections, task }
    }

    /// The last request received: its path, headers and body, as the backend answered them.
    #[allow(dead_code)]
    pub fn last_request(&self) -> String {
        self.last.lock().unwrap().clone()
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TCP echo backend.
pub async fn echo_backend() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, task)
}

// ------------------------------------------------------------------------------------ client

#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: String,
    /// Everything the server sent, for tests that look at several responses.
    pub raw: String,
}

/// Writes `request` as is and reads until the server closes (bounded by 10 s).
pub async fn raw(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    // Half-close: the request is complete (the proxy runs hyper with half_close).
    s.shutdown().await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "server did not close the connection");
    parse(&String::from_utf8_lossy(&buf))
}

pub fn parse(raw: &str) -> RawResponse {
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw, ""));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    RawResponse { status, headers, body: body.to_string(), raw: raw.to_string() }
}

/// `GET path` with `Host: host` on a fresh connection.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> RawResponse {
    raw(addr, format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes()).await
}

/// `GET` that tolerates a listener not being up yet: `None` on connect failure.
pub async fn try_get(addr: SocketAddr, host: &str, path: &str) -> Option<RawResponse> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await.ok()?.ok()?;
    Some(parse(&String::from_utf8_lossy(&buf)))
}

/// Status of an admin endpoint.
pub async fn admin(node: &Node, path: &str) -> RawResponse {
    get(node.admin_addr(), "admin", path).await
}

// ------------------------------------------------------------------------------------ issue 6 kit

// Not every test binary uses the kit.
#[allow(unused_imports)]
pub use kit::*;

/// For the failover and chaos tests: a backend that can be made to fail in every way a proxy must
/// survive (status, delay, reset, death and return on the same address), a keep-alive client, and
/// a reader for `/metrics`.
mod kit {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use sluice_data_plane::Node;
    use tokio::net::{TcpListener, TcpSocket, TcpStream};
    use tokio::task::{JoinHandle, JoinSet};

    use super::{admin, eventually, raw, RawResponse};

    #[derive(Default)]
    struct State {
        /// Status of every answer but `/healthz`'s.
        status: AtomicU16,
        /// Status of `/healthz`.
        health: AtomicU16,
        delay_ms: AtomicU64,
        /// Read the request head, then close the connection without an answer.
        reset: AtomicBool,
        /// Requests other than `/healthz` (reset ones included).
        hits: AtomicUsize,
        accepted: AtomicUsize,
        open: AtomicUsize,
        max_open: AtomicUsize,
        in_flight: AtomicUsize,
        max_in_flight: AtomicUsize,
    }

    /// Counts a connection (or a request) while it lives.
    struct Gauge {
        state: Arc<State>,
        request: bool,
    }

    impl Gauge {
        fn new(state: &Arc<State>, request: bool) -> Gauge {
            let (now, max) =
                if request { (&state.in_flight, &state.max_in_flight) } else { (&state.open, &state.max_open) };
            let n = now.fetch_add(1, Ordering::SeqCst) + 1;
            max.fetch_max(n, Ordering::SeqCst);
            Gauge { state: state.clone(), request }
        }
    }

    impl Drop for Gauge {
        fn drop(&mut self) {
            let now = if self.request { &self.state.in_flight } else { &self.state.open };
            now.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// An HTTP/1.1 backend answering `backend=<name>\nbody_len=<n>\n` with a switchable status
    /// (200 by default), an optional delay, or in "reset" mode no answer at all. `kill` makes it
    /// vanish (listener and every open connection closed: clients see their connections drop);
    /// `restart` brings it back on the same address with the same counters and settings.
    pub struct Controlled {
        pub addr: SocketAddr,
        pub name: String,
        state: Arc<State>,
        task: Mutex<Option<JoinHandle<()>>>,
    }

    impl Controlled {
        pub async fn start(name: &str) -> Controlled {
            let listener = bind("127.0.0.1:0".parse().unwrap()).await;
            let addr = listener.local_addr().unwrap();
            let state = Arc::new(State::default());
            state.status.store(200, Ordering::SeqCst);
            state.health.store(200, Ordering::SeqCst);
            let name = name.to_string();
            let task = serve(listener, name.clone(), state.clone());
            Controlled { addr, name, state, task: Mutex::new(Some(task)) }
        }

        pub fn set_status(&self, status: u16) {
            self.state.status.store(status, Ordering::SeqCst);
        }

        pub fn set_health(&self, status: u16) {
            self.state.health.store(status, Ordering::SeqCst);
        }

        pub fn set_delay(&self, delay: Duration) {
            self.state.delay_ms.store(delay.as_millis() as u64, Ordering::SeqCst);
        }

        pub fn set_reset(&self, reset: bool) {
            self.state.reset.store(reset, Ordering::SeqCst);
        }

        pub fn hits(&self) -> usize {
            self.state.hits.load(Ordering::SeqCst)
        }

        pub fn accepted(&self) -> usize {
            self.state.accepted.load(Ordering::SeqCst)
        }

        pub fn open(&self) -> usize {
            self.state.open.load(Ordering::SeqCst)
        }

        pub fn max_open(&self) -> usize {
            self.state.max_open.load(Ordering::SeqCst)
        }

        pub fn max_in_flight(&self) -> usize {
            self.state.max_in_flight.load(Ordering::SeqCst)
        }

        /// Zeroes the counters; the maxima restart from what is open/in flight now.
        pub fn reset_counts(&self) {
            let s = &self.state;
            s.hits.store(0, Ordering::SeqCst);
            s.accepted.store(0, Ordering::SeqCst);
            s.max_open.store(s.open.load(Ordering::SeqCst), Ordering::SeqCst);
            s.max_in_flight.store(s.in_flight.load(Ordering::SeqCst), Ordering::SeqCst);
        }

        pub fn is_running(&self) -> bool {
            self.task.lock().unwrap().is_some()
        }

        /// Stops accepting and drops every open connection (mid-request ones too); returns once
        /// the port is closed and no connection is left.
        pub async fn kill(&self) {
            let task = self.task.lock().unwrap().take();
            if let Some(task) = task {
                task.abort();
                let _ = task.await;
            }
            eventually(&format!("{} connections dropped", self.name), || async { (self.open() == 0).then_some(()) })
                .await;
        }

        /// Listens again on the same address (after `kill`).
        pub async fn restart(&self) {
            assert!(!self.is_running(), "{} restarted while running", self.name);
            let listener = bind(self.addr).await;
            let task = serve(listener, self.name.clone(), self.state.clone());
            *self.task.lock().unwrap() = Some(task);
        }
    }

    impl Drop for Controlled {
        fn drop(&mut self) {
            if let Some(task) = self.task.lock().unwrap().take() {
                task.abort();
            }
        }
    }

    /// A listener with SO_REUSEADDR (a killed backend's connections may linger in TIME_WAIT).
    async fn bind(addr: SocketAddr) -> TcpListener {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        loop {
            let socket = TcpSocket::new_v4().unwrap();
            socket.set_reuseaddr(true).unwrap();
            match socket.bind(addr).and_then(|()| socket.listen(1024)) {
                Ok(l) => return l,
                Err(e) => {
                    assert!(tokio::time::Instant::now() < deadline, "cannot listen on {addr}: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    /// The accept loop owns its connections: aborting it drops the JoinSet, which aborts them all.
    fn serve(listener: TcpListener, name: String, state: Arc<State>) -> JoinHandle<()> {
        let name: Arc<str> = name.into();
        tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            continue;
                        };
                        state.accepted.fetch_add(1, Ordering::SeqCst);
                        let gauge = Gauge::new(&state, false);
                        conns.spawn(connection(stream, name.clone(), state.clone(), gauge));
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        })
    }

    async fn connection(stream: TcpStream, name: Arc<str>, state: Arc<State>, _open: Gauge) {
        let _ = stream.set_nodelay(true);
        let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let (name, state) = (name.clone(), state.clone());
            async move { answer(req, &name, &state).await }
        });
        let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
    }

    async fn answer(
        req: hyper::Request<hyper::body::Incoming>,
        name: &str,
        state: &Arc<State>,
    ) -> Result<hyper::Response<Full<Bytes>>, std::io::Error> {
        let status = if req.uri().path() == "/healthz" {
            state.health.load(Ordering::SeqCst)
        } else {
            state.hits.fetch_add(1, Ordering::SeqCst);
            let _in_flight = Gauge::new(state, true);
            if state.reset.load(Ordering::SeqCst) {
                // hyper closes the connection without writing anything when the service fails.
                return Err(std::io::Error::other("reset mode"));
            }
            let body = req.into_body().collect().await.map_err(std::io::Error::other)?.to_bytes();
            let delay = state.delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            let mut resp =
                hyper::Response::new(Full::new(Bytes::from(format!("backend={name}\nbody_len={}\n", body.len()))));
            *resp.status_mut() = hyper::StatusCode::from_u16(state.status.load(Ordering::SeqCst)).unwrap();
            return Ok(resp);
        };
        let mut resp = hyper::Response::new(Full::new(Bytes::from(format!("backend={name}\n"))));
        *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
        Ok(resp)
    }

    /// The `backend=` line of an answer ("" if none).
    pub fn backend_of(r: &RawResponse) -> String {
        r.body.lines().find_map(|l| l.strip_prefix("backend=")).unwrap_or("").to_string()
    }

    /// One request with extra headers and a body (`Content-Length` when not empty) on a fresh
    /// connection, `Host: x` unless given.
    pub async fn send_once(
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> RawResponse {
        let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            head.push_str("Host: x\r\n");
        }
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body);
        raw(addr, &bytes).await
    }

    /// Waits until `addr` accepts TCP connections (without sending a request anywhere).
    pub async fn wait_listener(addr: SocketAddr) {
        eventually(&format!("listener {addr} up"), || async { TcpStream::connect(addr).await.ok().map(drop) }).await;
    }

    /// The value of the first `/metrics` series `name{…}` carrying all of `labels`.
    pub async fn metric(node: &Node, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let text = admin(node, "/metrics").await.body;
        metric_in(&text, name, labels)
    }

    pub fn metric_in(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            let matches = n == name && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            if matches {
                value.parse().ok()
            } else {
                None
            }
        })
    }

    /// A keep-alive HTTP/1.1 client: one connection, reopened after any error.
    pub struct Client {
        addr: SocketAddr,
        sender: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
    }

    impl Client {
        pub fn new(addr: SocketAddr) -> Client {
            Client { addr, sender: None }
        }

        pub async fn get(&mut self, path: &str) -> Result<RawResponse, String> {
            self.send("GET", path, &[], b"").await
        }

        /// One exchange, bounded by 10 s; `Err` is a transport failure (the connection is then dropped).
        pub async fn send(
            &mut self,
            method: &str,
            path: &str,
            headers: &[(&str, &str)],
            body: &[u8],
        ) -> Result<RawResponse, String> {
            let r =
                match tokio::time::timeout(Duration::from_secs(10), self.exchange(method, path, headers, body)).await {
                    Ok(r) => r,
                    Err(_) => Err("timed out after 10 s".to_string()),
                };
            if r.is_err() {
                self.sender = None;
            }
            r
        }

        async fn exchange(
            &mut self,
            method: &str,
            path: &str,
            headers: &[(&str, &str)],
            body: &[u8],
        ) -> Result<RawResponse, String> {
            if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
                let stream = TcpStream::connect(self.addr).await.map_err(|e| format!("connect: {e}"))?;
                let _ = stream.set_nodelay(true);
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| format!("handshake: {e}"))?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                self.sender = Some(sender);
            }
            let sender = self.sender.as_mut().unwrap();
            sender.ready().await.map_err(|e| format!("connection: {e}"))?;
            let mut req = hyper::Request::builder().method(method).uri(path);
            if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
                req = req.header("host", "x");
            }
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let req = req.body(Full::new(Bytes::copy_from_slice(body))).map_err(|e| e.to_string())?;
            let resp = sender.send_request(req).await.map_err(|e| format!("request: {e}"))?;
            let (parts, incoming) = resp.into_parts();
            let body = incoming.collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
            let body = String::from_utf8_lossy(&body).to_string();
            let mut headers = BTreeMap::new();
            let mut raw = format!("HTTP/1.1 {}\r\n", parts.status);
            for (k, v) in &parts.headers {
                let v = v.to_str().unwrap_or("?").to_string();
                raw.push_str(&format!("{k}: {v}\r\n"));
                headers.insert(k.as_str().to_string(), v);
            }
            raw.push_str("\r\n");
            raw.push_str(&body);
            if parts.headers.get("connection").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close")) {
                self.sender = None;
            }
            Ok(RawResponse { status: parts.status.as_u16(), headers, body, raw })
        }
    }
}
