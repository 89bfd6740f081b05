//! A listener's `allow_from` / `deny_from`: a refused client's connection is closed before a byte
//! is read or an endpoint is connected (udp: its datagrams dropped), on the client address a
//! trusted PROXY header names, and counted.

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// Writes `bytes` on a fresh connection and reads what comes back until the server closes.
async fn exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the server neither answered nor closed");
    String::from_utf8_lossy(&buf).into_owned()
}

fn denied(metrics: &str, listener: &str) -> u64 {
    metric_in(metrics, "sluice_connections_denied_total", &[("listener", listener)]).unwrap_or(0.0) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_clients_are_closed_before_anything_reaches_an_endpoint() {
    let app = Backend::start("app").await;
    let (echo, _echo_task) = echo_backend().await;
    let udp_echo = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let udp_addr = udp_echo.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = udp_echo.recv_from(&mut buf).await {
            let _ = udp_echo.send_to(&buf[..n], from).await;
        }
    });
    let (open, denied_http, behind, tcp, udp) = (free_addr(), free_addr(), free_addr(), free_addr(), free_addr());
    let cfg = config(json!({
        "clusters": {
            "app": {"endpoints": [{"address": app.addr.to_string()}]},
            "echo": {"endpoints": [{"address": echo.to_string()}]},
            "udp": {"endpoints": [{"address": udp_addr.to_string()}]}
        },
        "listeners": {
            "open": {"address": open.to_string(), "protocol": "http", "allow_from": ["127.0.0.0/8"], "deny_from": ["10.0.0.0/8"]},
            "closed": {"address": denied_http.to_string(), "protocol": "http", "allow_from": ["127.0.0.0/8"], "deny_from": ["127.0.0.1"]},
            "behind": {"address": behind.to_string(), "protocol": "http", "accept_proxy_protocol": true,
                       "allow_from": ["192.0.2.0/24"]},
            "tcp": {"address": tcp.to_string(), "protocol": "tcp", "cluster": "echo", "allow_from": ["10.0.0.0/8"]},
            "udp": {"address": udp.to_string(), "protocol": "udp", "cluster": "udp", "deny_from": ["127.0.0.1/32"]}
        },
        "routes": {
            "open": {"listener": "open", "backends": [{"cluster": "app"}]},
            "closed": {"listener": "closed", "backends": [{"cluster": "app"}]},
            "behind": {"listener": "behind", "backends": [{"cluster": "app"}]}
        }
    }));
    let (_cp, node) = node_with(&cfg).await;
    let request = b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n";

    // Allowed: served. Denied (deny wins over allow): closed with nothing sent back, no endpoint hit.
    assert!(exchange(open, request).await.starts_with("HTTP/1.1 200"));
    let hits = app.hits();
    assert_eq!(exchange(denied_http, request).await, "");
    // On the PROXY header's client: 192.0.2.7 is allowed, 198.51.100.7 is not.
    let proxied = |client: &str| {
        format!("PROXY TCP4 {client} 127.0.0.1 5000 80\r\nGET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
    };
    assert!(exchange(behind, proxied("192.0.2.7").as_bytes()).await.starts_with("HTTP/1.1 200"));
    assert_eq!(exchange(behind, proxied("198.51.100.7").as_bytes()).await, "");
    assert_eq!(app.hits(), hits + 1, "only the allowed PROXY client reached the endpoint");

    // tcp: 127.0.0.1 is outside allow_from: closed before the endpoint greets or echoes.
    assert_eq!(exchange(tcp, b"hello\n").await, "");

    // udp: the datagram is dropped, no session opens.
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client.send_to(b"ping", udp).await.unwrap();
    let mut buf = [0u8; 64];
    let reply = tokio::time::timeout(Duration::from_millis(500), client.recv_from(&mut buf)).await;
    assert!(reply.is_err(), "a denied client got a reply: {reply:?}");

    let metrics = admin(&node, "/metrics").await.body;
    assert_eq!(denied(&metrics, "closed"), 1, "{metrics}");
    assert_eq!(denied(&metrics, "behind"), 1);
    assert_eq!(denied(&metrics, "tcp"), 1);
    assert_eq!(denied(&metrics, "udp"), 1);
    assert_eq!(denied(&metrics, "open"), 0);
}
