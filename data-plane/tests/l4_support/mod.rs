//! Helpers for the L4 tests: a node fed by the mock control plane, tagged TCP and UDP backends,
//! connections from chosen loopback source IPs, metric scraping.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sluice_data_plane::Node;
use sluice_shared::Config;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};

use crate::support::{admin, eventually, snapshot, ControlPlane};

pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

pub use crate::support::node_with;

/// Sends `cfg` as `revision` and waits for its ACK.
pub async fn apply(cp: &ControlPlane, cfg: &Config, revision: u64) {
    cp.send_snapshot(snapshot(cfg, revision)).await;
    cp.expect_ack(revision).await;
}

/// `/metrics` text.
pub async fn metrics(node: &Node) -> String {
    admin(node, "/metrics").await.body
}

/// The value of one series line (`name{labels}`), 0 when absent.
pub async fn metric(node: &Node, series: &str) -> f64 {
    let text = metrics(node).await;
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Waits until a series has `value`.
pub async fn wait_metric(node: &Node, series: &str, value: f64) {
    eventually(&format!("{series} == {value}"), || async { (metric(node, series).await == value).then_some(()) }).await;
}

/// A TCP backend that greets every connection with `name\n`, then echoes until end of stream,
/// then closes. Counts connections; dropping it closes the listener and every open connection.
pub struct TaggedEcho {
    pub name: String,
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl TaggedEcho {
    pub async fn start(name: &str) -> TaggedEcho {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (n, a) = (name.to_string(), accepted.clone());
        let task = tokio::spawn(async move {
            // Owned by the accept task: aborting it drops the set, which aborts every connection.
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut s, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let greeting = format!("{n}\n");
                while conns.try_join_next().is_some() {}
                conns.spawn(async move {
                    if s.write_all(greeting.as_bytes()).await.is_err() {
                        return;
                    }
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        TaggedEcho { name: name.to_string(), addr, accepted, task }
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for TaggedEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A client connection through the proxy to a [`TaggedEcho`].
pub struct Conn {
    pub backend: String,
    pub reader: BufReader<TcpStream>,
}

impl Conn {
    /// Connects (from `source` when given, any 127/8 address works on Linux) and reads the greeting.
    pub async fn open(addr: SocketAddr, source: Option<IpAddr>) -> Conn {
        Conn::try_open(addr, source).await.expect("connection through the proxy")
    }

    pub async fn try_open(addr: SocketAddr, source: Option<IpAddr>) -> Option<Conn> {
        let socket = TcpSocket::new_v4().ok()?;
        if let Some(ip) = source {
            socket.bind(SocketAddr::new(ip, 0)).ok()?;
        }
        let stream = tokio::time::timeout(IO_TIMEOUT, socket.connect(addr)).await.ok()?.ok()?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        let n = tokio::time::timeout(IO_TIMEOUT, reader.read_line(&mut line)).await.ok()?.ok()?;
        (n > 0).then(|| Conn { backend: line.trim().to_string(), reader })
    }

    /// Sends `msg` and reads the echo back.
    pub async fn echo(&mut self, msg: &str) -> String {
        self.try_echo(msg).await.expect("echo through the proxy")
    }

    pub async fn try_echo(&mut self, msg: &str) -> Option<String> {
        self.reader.get_mut().write_all(msg.as_bytes()).await.ok()?;
        let mut buf = vec![0u8; msg.len()];
        tokio::time::timeout(IO_TIMEOUT, self.reader.read_exact(&mut buf)).await.ok()?.ok()?;
        Some(String::from_utf8_lossy(&buf).into_owned())
    }

    /// Half-closes, then waits for the proxy to close its side (the echo backend ends on EOF).
    pub async fn finish(mut self) {
        let _ = self.reader.get_mut().shutdown().await;
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(IO_TIMEOUT, self.reader.read_to_end(&mut rest)).await;
    }

    /// True once the proxy closed the connection (EOF or reset) within `wait`.
    pub async fn closed_within(&mut self, wait: Duration) -> bool {
        let mut buf = [0u8; 64];
        matches!(tokio::time::timeout(wait, self.reader.read(&mut buf)).await, Ok(Ok(0)) | Ok(Err(_)))
    }
}

/// Opens, identifies and finishes one connection: which backend served it.
pub async fn backend_of(addr: SocketAddr, source: Option<IpAddr>) -> String {
    let c = Conn::open(addr, source).await;
    let name = c.backend.clone();
    c.finish().await;
    name
}

/// A UDP backend answering each datagram with `name:payload`.
pub struct UdpEcho {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl UdpEcho {
    pub async fn start(name: &str) -> UdpEcho {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let name = name.to_string();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                let reply = format!("{name}:{}", String::from_utf8_lossy(&buf[..n]));
                let _ = socket.send_to(reply.as_bytes(), from).await;
            }
        });
        UdpEcho { addr, task }
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sends `msg` from `client` to `to` and waits up to `wait` for a reply.
pub async fn udp_round_trip(client: &UdpSocket, to: SocketAddr, msg: &str, wait: Duration) -> Option<String> {
    client.send_to(msg.as_bytes(), to).await.ok()?;
    let mut buf = vec![0u8; 65_536];
    let (n, from) = tokio::time::timeout(wait, client.recv_from(&mut buf)).await.ok()?.ok()?;
    assert_eq!(from, to, "replies come from the listener's address");
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}
