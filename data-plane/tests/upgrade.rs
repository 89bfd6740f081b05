//! Protocol switches (WebSocket and the like) end to end: a real node, a raw backend that answers
//! `101` and then echoes bytes, or refuses the switch.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Reads up to the end of a head (`\r\n\r\n`); returns it as text.
async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut byte)).await {
            Ok(Ok(1)) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// A backend that switches to an echo protocol when asked (`Upgrade: echo`), and answers 400 to
/// anything else; each head it received is sent on `heads`.
async fn echo_backend(heads: tokio::sync::mpsc::UnboundedSender<String>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let heads = heads.clone();
            tokio::spawn(async move {
                let head = read_head(&mut s).await;
                let switch = head.to_ascii_lowercase().contains("upgrade: echo");
                let _ = heads.send(head);
                if !switch {
                    let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\nno").await;
                    return;
                }
                let _ = s
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
                    .await;
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

async fn setup() -> (ControlPlane, sluice_data_plane::Node, SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let backend = echo_backend(tx).await;
    let listener = free_addr();
    let cfg = config(json!({
        "clusters": {"ws": {"endpoints": [{"address": backend.to_string()}]}},
        "listeners": {"main": {"address": listener.to_string(), "protocol": "http", "drain_ms": 300}},
        "routes": {"ws": {"listener": "main", "match": {"hosts": ["ws.test"]}, "backends": [{"cluster": "ws"}],
                          "timeout_ms": 2000}}
    }));
    let cp = ControlPlane::start(Some(snapshot(&cfg, 1))).await;
    let node = start_node(vec![cp.url()], None).await;
    cp.expect_ack(1).await;
    eventually("listener up", || async { TcpStream::connect(listener).await.ok() }).await;
    (cp, node, listener, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switched_connection_carries_raw_bytes_both_ways() {
    let (cp, node, listener, mut heads) = setup().await;
    let mut c = TcpStream::connect(listener).await.unwrap();
    c.write_all(b"GET /chat HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n").await.unwrap();
    let head = read_head(&mut c).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("upgrade: echo") && lower.contains("connection: upgrade"), "{head}");
    let seen = heads.recv().await.unwrap().to_ascii_lowercase();
    assert!(seen.contains("connection: upgrade") && seen.contains("x-forwarded-for: 127.0.0.1"), "{seen}");

    // Bytes that would be refused as an HTTP head pass: they are the other protocol's now.
    for msg in [&b"hello"[..], b"GARBAGE \x01\x02 HTTP/9\r\n\r\n", &[0u8; 70_000]] {
        c.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut back)).await.unwrap().unwrap();
        assert_eq!(back, msg);
    }
    // The client closing ends the tunnel on both sides.
    c.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut rest)).await.unwrap().unwrap();
    assert_eq!(n, 0);
    node.shutdown().await;
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_switch_answers_and_closes_the_connection() {
    let (cp, node, listener, _heads) = setup().await;
    let mut c = TcpStream::connect(listener).await.unwrap();
    // The endpoint refuses `Upgrade: other`; what the client sends next must not pass unchecked
    // as the start of another request on this connection.
    c.write_all(b"GET / HTTP/1.1\r\nHost: ws.test\r\nUpgrade: other\r\n\r\n").await.unwrap();
    let mut all = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut all)).await.unwrap();
    let text = String::from_utf8_lossy(&all).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 400"), "{text}");
    assert!(text.contains("connection: close"), "{text}");

    // The same for an answer of the proxy's own (no route): the connection closes after it, so
    // the "upgraded" bytes that follow are never taken for another request.
    let mut c = TcpStream::connect(listener).await.unwrap();
    let sneaky = "GET / HTTP/1.1\r\nHost: nowhere.test\r\nUpgrade: echo\r\n\r\n\
                  GET / HTTP/1.1\r\nHost: ws.test\r\n\r\n";
    c.write_all(sneaky.as_bytes()).await.unwrap();
    let mut all = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut all)).await.unwrap();
    let text = String::from_utf8_lossy(&all).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 404") && text.contains("connection: close"), "{text}");
    assert_eq!(text.matches("http/1.1").count(), 1, "the bytes after the upgrade request were served: {text}");
    node.shutdown().await;
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_upgrade_is_ignored_and_the_connection_stays_http() {
    let (cp, node, listener, mut heads) = setup().await;
    let mut c = TcpStream::connect(listener).await.unwrap();
    let req = "GET / HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
               HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n";
    for _ in 0..2 {
        c.write_all(req.as_bytes()).await.unwrap();
        let head = read_head(&mut c).await;
        assert!(head.starts_with("HTTP/1.1 400"), "served as plain HTTP/1.1: {head}");
        let mut body = [0u8; 2];
        c.read_exact(&mut body).await.unwrap();
        let seen = heads.recv().await.unwrap().to_ascii_lowercase();
        assert!(!seen.contains("upgrade") && !seen.contains("http2-settings"), "{seen}");
    }
    node.shutdown().await;
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_outlives_a_drain_but_not_its_listener() {
    let (cp, node, listener, _heads) = setup().await;
    let mut c = TcpStream::connect(listener).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: ws.test\r\nUpgrade: echo\r\n\r\n").await.unwrap();
    assert!(read_head(&mut c).await.starts_with("HTTP/1.1 101"));
    // The listener goes away (drain_ms 300): the tunnel keeps working while it drains...
    let cfg = config(json!({"clusters": {"ws": {"endpoints": []}}}));
    cp.send_snapshot(snapshot(&cfg, 2)).await;
    cp.expect_ack(2).await;
    c.write_all(b"still here").await.unwrap();
    let mut back = [0u8; 10];
    tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut back)).await.unwrap().unwrap();
    assert_eq!(&back, b"still here");
    // ...and is cut once the drain is over.
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut rest)).await;
    assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "the tunnel was not cut: {n:?}");
    node.shutdown().await;
    cp.stop().await;
}
