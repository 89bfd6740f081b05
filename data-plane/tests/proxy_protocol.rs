//! Listeners behind another L4 balancer (`accept_proxy_protocol`): the header's client address
//! stands for the connection's everywhere (X-Forwarded-For, the header sent on to an endpoint),
//! and a connection without a valid header, or from a source not trusted to send one
//! (`proxy_protocol_from`), is closed before it reaches anything.

mod l4_support;
mod support;

use std::net::SocketAddr;

use l4_support::{metric, node_with, TaggedEcho, IO_TIMEOUT};
use serde_json::json;
use support::{config, free_addr, raw, Backend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A v2 header for a TCP-over-IPv4 connection from `client` to `local`, built from the spec.
fn v2_header(client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let (SocketAddr::V4(c), SocketAddr::V4(l)) = (client, local) else { panic!("IPv4 only") };
    let mut h = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    h.extend_from_slice(&c.ip().octets());
    h.extend_from_slice(&l.ip().octets());
    h.extend_from_slice(&c.port().to_be_bytes());
    h.extend_from_slice(&l.port().to_be_bytes());
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_listener_passes_the_announced_client_on_to_the_endpoint() {
    let echo = TaggedEcho::start("e").await;
    let addr = free_addr();
    let cfg = config(json!({
        "clusters": {"db": {"endpoints": [{"address": echo.addr.to_string()}]}},
        "listeners": {"pg": {"address": addr.to_string(), "protocol": "tcp", "cluster": "db",
                             "accept_proxy_protocol": true, "proxy_protocol": "v1"}},
    }));
    let (_cp, node) = node_with(&cfg).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    let announced = v2_header("203.0.113.7:5555".parse().unwrap(), "198.51.100.1:5432".parse().unwrap());
    c.write_all(&[announced.as_slice(), b"ping"].concat()).await.unwrap();
    c.shutdown().await.unwrap();
    let mut back = Vec::new();
    tokio::time::timeout(IO_TIMEOUT, c.read_to_end(&mut back)).await.unwrap().unwrap();
    // The header in was consumed to its last byte; the one sent on names the announced client
    // and the address it connected to, not this connection's.
    assert_eq!(String::from_utf8_lossy(&back), "e\nPROXY TCP4 203.0.113.7 198.51.100.1 5555 5432\r\nping");

    // No header: closed before any endpoint is connected.
    let mut bare = TcpStream::connect(addr).await.unwrap();
    bare.write_all(b"ping").await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(IO_TIMEOUT, bare.read_to_end(&mut got)).await.expect("closed");
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    assert_eq!(echo.accepted(), 1);
    assert_eq!(metric(&node, "sluice_proxy_protocol_errors_total{listener=\"pg\"}").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_listener_forwards_the_announced_client() {
    let app = Backend::start("app").await;
    let addr = free_addr();
    let cfg = config(json!({
        "clusters": {"app": {"endpoints": [{"address": app.addr.to_string()}]}},
        "listeners": {"web": {"address": addr.to_string(), "protocol": "http", "accept_proxy_protocol": true}},
        "routes": {"all": {"listener": "web", "backends": [{"cluster": "app"}]}},
    }));
    let (_cp, node) = node_with(&cfg).await;
    let get = b"GET / HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n";

    let r = raw(addr, &[&b"PROXY TCP4 198.51.100.9 192.0.2.1 4444 80\r\n"[..], get].concat()).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert!(r.body.contains("x-forwarded-for: 198.51.100.9\n"), "{}", r.body);

    // v2 LOCAL (a balancer's own health check): the connection's own address stands.
    let local = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00";
    let r = raw(addr, &[&local[..], get].concat()).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert!(r.body.contains("x-forwarded-for: 127.0.0.1\n"), "{}", r.body);

    // A plain request, and a malformed header: closed unanswered, the backend never asked.
    let hits = app.hits();
    for bad in [get.to_vec(), [&b"PROXY TCP4 198.51.100.9 192.0.2.1 99999 80\r\n"[..], get].concat()] {
        let r = raw(addr, &bad).await;
        assert!(r.raw.is_empty(), "{}", r.raw);
    }
    assert_eq!(app.hits(), hits);
    assert_eq!(metric(&node, "sluice_proxy_protocol_errors_total{listener=\"web\"}").await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_trusted_balancers_may_send_the_header() {
    let app = Backend::start("app").await;
    let addr = free_addr();
    let cfg = config(json!({
        "clusters": {"app": {"endpoints": [{"address": app.addr.to_string()}]}},
        "listeners": {"web": {"address": addr.to_string(), "protocol": "http", "accept_proxy_protocol": true,
                              "proxy_protocol_from": ["127.0.0.2", "10.0.0.0/8"]}},
        "routes": {"all": {"listener": "web", "backends": [{"cluster": "app"}]}},
    }));
    let (_cp, node) = node_with(&cfg).await;
    let request =
        b"PROXY TCP4 198.51.100.9 192.0.2.1 4444 80\r\nGET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    let from = |source: [u8; 4]| async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from((source, 0))).unwrap();
        let mut s = socket.connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        s.shutdown().await.unwrap();
        let mut back = Vec::new();
        let _ = tokio::time::timeout(IO_TIMEOUT, s.read_to_end(&mut back)).await.expect("closed");
        String::from_utf8_lossy(&back).into_owned()
    };
    let trusted = from([127, 0, 0, 2]).await;
    assert!(trusted.starts_with("HTTP/1.1 200") && trusted.contains("x-forwarded-for: 198.51.100.9\n"), "{trusted}");
    // The same header from a source not on the list: closed unread, never proxied.
    assert_eq!(from([127, 0, 0, 3]).await, "");
    assert_eq!(app.hits(), 1);
    assert_eq!(metric(&node, "sluice_proxy_protocol_errors_total{listener=\"web\"}").await, 1.0);
}
