//! The process's cap on client connections (`SLUICE_MAX_CLIENT_CONNECTIONS` here, half of the
//! open-files limit by default): past it connections are closed at once, and near it idle
//! keep-alive connections make room first. Its own test binary: the cap is process-wide.

mod support;

use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n";

async fn exchange(s: &mut TcpStream) -> bool {
    if s.write_all(REQUEST).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 1024];
    matches!(tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await, Ok(Ok(n)) if n > 0 && buf.starts_with(b"HTTP/1.1 200"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_the_cap_idle_connections_make_room_first() {
    std::env::set_var("SLUICE_MAX_CLIENT_CONNECTIONS", "8");
    let (_cp, node, listener, _app) = one_route_node().await;

    // Eight keep-alive clients: the cap. Those that went idle at six or more open (three quarters
    // of the cap) get a short idle timeout.
    let mut clients = Vec::new();
    for i in 0..8 {
        let mut s = TcpStream::connect(listener).await.unwrap();
        assert!(exchange(&mut s).await, "client {i}");
        clients.push(s);
    }
    let mut ninth = TcpStream::connect(listener).await.unwrap();
    assert!(!exchange(&mut ninth).await, "past the cap: closed at once");
    let refused = metric(&node, "sluice_connections_refused_total", &[("listener", "web")]).await;
    assert!(refused >= Some(1.0), "{refused:?}");

    // The last to go idle are closed within about a second; the first keep theirs.
    let started = Instant::now();
    let mut last = clients.pop().unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), last.read_to_end(&mut rest)).await;
    assert!(matches!(read, Ok(Ok(0))), "{read:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    assert!(exchange(&mut clients[0]).await, "an early client keeps its connection");
    eventually("room for a new client", || async { (get(listener, "a.test", "/").await.status == 200).then_some(()) })
        .await;

    // Still near the cap: an HTTP/2 client that opens no stream gets a graceful GOAWAY within
    // about a second too (its listener's idle timeout is 300 s).
    let started = Instant::now();
    let (_send, conn) = h2::client::handshake(TcpStream::connect(listener).await.unwrap()).await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(matches!(ended, Ok(Ok(()))), "{ended:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
}
