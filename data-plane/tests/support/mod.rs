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
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
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

pub async fn start_node(cps: Vec<String>, cache_dir: Option<std::path::PathBuf>) -> Node {
    Node::start(NodeOptions {
        control_planes: cps,
        node_id: "test-node".into(),
        group: "default".into(),
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        cache_dir,
        control_plane_tls: None,
    })
    .await
    .unwrap()
}

/// A port that was free a moment ago (for listener addresses in snapshots).
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

// ------------------------------------------------------------------------------------ backends

/// An HTTP backend that answers `name` plus the request's headers, and counts its requests.
/// `/slow` answers after 2 s; `/status/NNN` answers with that status.
pub struct Backend {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    /// TCP connections accepted (to see upstream keep-alive at work).
    pub connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    pub async fn start(name: &'static str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let connections = Arc::new(AtomicUsize::new(0));
        let conns = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                conns.fetch_add(1, Ordering::SeqCst);
                let counter = counter.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let counter = counter.clone();
                        async move {
                            counter.fetch_add(1, Ordering::SeqCst);
                            let path = req.uri().path().to_string();
                            let mut text = format!("backend={name}\npath={path}\n");
                            for (k, v) in req.headers() {
                                text.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
                            }
                            let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            text.push_str(&format!("body={}\n", String::from_utf8_lossy(&body)));
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
        Backend { addr, hits, connections, task }
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
