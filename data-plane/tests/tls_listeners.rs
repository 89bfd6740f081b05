//! https (termination, certificate by SNI, rotation) and tls passthrough (routing by SNI) listeners
//! of a node fed by a mock control plane. Certificates are generated here; all traffic on loopback.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::PrivateKeyDer;
use serde_json::json;
use sluice_e2e::tls::{
    any_cert_client_config, peer_leaf as leaf, provider, self_signed, tls_connect, trusting_client, Pem,
};
use sluice_shared::proto::v1 as pb;
use sluice_shared::Config;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

fn any_cert_client(versions: &[&'static rustls::SupportedProtocolVersion], alpn: &[&[u8]]) -> TlsConnector {
    TlsConnector::from(Arc::new(any_cert_client_config(versions, alpn)))
}

/// One keep-alive request on an open connection; reads exactly one response (Content-Length body).
async fn request<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(s: &mut S, host: &str) -> RawResponse {
    s.write_all(format!("GET /hello HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let read = async {
        loop {
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let r = parse(head);
                let len: usize = r.headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
                if body.len() >= len {
                    return parse(&text);
                }
            }
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed before a whole response");
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read).await.expect("a response in time")
}

fn https_config(listener: SocketAddr, backend: SocketAddr, certs: &[(&str, &Pem)]) -> Config {
    let mut cfg = config(json!({
        "clusters": {"app": {"endpoints": [{"address": backend.to_string()}]}},
        "listeners": {"web": {"address": listener.to_string(), "protocol": "https",
                              "certificates": certs.iter().map(|(n, _)| *n).collect::<Vec<_>>()}},
        "routes": {"app": {"listener": "web", "backends": [{"cluster": "app"}]}}
    }));
    for (name, c) in certs {
        cfg.certificates.insert(name.to_string(), serde_json::from_value(c.json()).unwrap());
    }
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_picks_the_certificate_by_sni_and_forwards_as_https() {
    let backend = Backend::start("app").await;
    let default = self_signed(&["default.test"]);
    let exact = self_signed(&["api.example.com"]);
    let wild = self_signed(&["*.example.com"]);
    let addr = free_addr();
    let cfg = https_config(addr, backend.addr, &[("default", &default), ("exact", &exact), ("wild", &wild)]);
    let cp = ControlPlane::start(Some(snapshot(&cfg, 1))).await;
    let node = start_node(vec![cp.url()], None).await;
    cp.expect_ack(1).await;

    let any = any_cert_client(&[&rustls::version::TLS13, &rustls::version::TLS12], &[b"h2", b"http/1.1"]);
    for (sni, want, what) in [
        ("api.example.com", &exact, "exact name"),
        ("API.example.COM", &exact, "exact name, any case"),
        ("www.example.com", &wild, "wildcard"),
        ("a.b.example.com", &default, "wildcard is one label deep"),
        ("other.test", &default, "unknown name"),
        ("127.0.0.1", &default, "no SNI (an IP address)"),
    ] {
        let s = tls_connect(&any, addr, sni).await.unwrap();
        assert_eq!(leaf(&s), want.der, "{what}: {sni}");
        assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "{what}: ALPN prefers h2");
    }

    // A verifying client trusting the exact certificate gets proxied, marked https.
    let mut s = tls_connect(&trusting_client(&exact.der), addr, "api.example.com").await.unwrap();
    let r = request(&mut s, "api.example.com").await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert!(r.body.contains("backend=app"), "{}", r.body);
    assert!(r.body.contains("x-forwarded-proto: https"), "{}", r.body);

    // TLS 1.2 is served too.
    let tls12 = any_cert_client(&[&rustls::version::TLS12], &[]);
    let mut s = tls_connect(&tls12, addr, "www.example.com").await.unwrap();
    assert_eq!(s.get_ref().1.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_2));
    assert_eq!(request(&mut s, "www.example.com").await.status, 200);

    // Plain HTTP on the https port is no request: nothing reaches the backend.
    let hits = backend.hits();
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain.write_all(b"GET / HTTP/1.1\r\nHost: api.example.com\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut buf)).await.expect("closed");
    assert!(!String::from_utf8_lossy(&buf).contains("backend=app"));
    assert_eq!(backend.hits(), hits);

    node.shutdown().await;
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_reaches_new_handshakes_while_an_open_connection_continues() {
    let backend = Backend::start("app").await;
    let old = self_signed(&["api.example.com"]);
    let new = self_signed(&["api.example.com"]);
    let addr = free_addr();
    let cp = ControlPlane::start(Some(snapshot(&https_config(addr, backend.addr, &[("api", &old)]), 1))).await;
    let node = start_node(vec![cp.url()], None).await;
    cp.expect_ack(1).await;

    let mut held = tls_connect(&trusting_client(&old.der), addr, "api.example.com").await.unwrap();
    assert_eq!(request(&mut held, "api.example.com").await.status, 200);

    // PUT a new certificate under the same name: revision 2.
    cp.send_snapshot(snapshot(&https_config(addr, backend.addr, &[("api", &new)]), 2)).await;
    cp.expect_ack(2).await;

    let fresh = tls_connect(&trusting_client(&new.der), addr, "api.example.com").await.unwrap();
    assert_eq!(leaf(&fresh), new.der);
    assert!(tls_connect(&trusting_client(&old.der), addr, "api.example.com").await.is_err(), "old certificate served");

    // The connection opened before the rotation keeps its session and keeps serving.
    assert_eq!(leaf(&held), old.der);
    for _ in 0..3 {
        let r = request(&mut held, "api.example.com").await;
        assert_eq!(r.status, 200, "{}", r.raw);
    }

    node.shutdown().await;
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_with_a_mismatched_key_is_nacked_and_the_old_one_keeps_serving() {
    let backend = Backend::start("app").await;
    let good = self_signed(&["api.example.com"]);
    let addr = free_addr();
    let cp = ControlPlane::start(Some(snapshot(&https_config(addr, backend.addr, &[("api", &good)]), 1))).await;
    let node = start_node(vec![cp.url()], None).await;
    cp.expect_ack(1).await;

    let mut bad = self_signed(&["api.example.com"]);
    bad.key = self_signed(&["other"]).key;
    cp.send_snapshot(snapshot(&https_config(addr, backend.addr, &[("api", &bad)]), 2)).await;
    match cp.reply_to(2).await {
        pb::node_message::Msg::Nack(n) => {
            assert!(n.message.contains("key"), "{}", n.message);
            assert!(!n.message.contains("PRIVATE KEY"), "{}", n.message);
        }
        other => panic!("expected a nack: {other:?}"),
    }
    let s = tls_connect(&trusting_client(&good.der), addr, "api.example.com").await.unwrap();
    assert_eq!(leaf(&s), good.der);

    node.shutdown().await;
    cp.stop().await;
}

/// A TLS backend that answers every connection with its name, then closes.
async fn tls_backend(name: &'static str, cert: &Pem) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let key = PrivateKeyDer::try_from(rcgen::KeyPair::from_pem(&cert.key).unwrap().serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der.clone()], key)
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut s) = acceptor.accept(tcp).await {
                    let _ = s.write_all(format!("backend={name}").as_bytes()).await;
                    let _ = s.shutdown().await;
                }
            });
        }
    });
    (addr, task)
}

async fn read_all(mut s: TlsStream<TcpStream>) -> String {
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await.expect("backend answer");
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_routes_by_sni_without_terminating() {
    let a_cert = self_signed(&["a.pass.test"]);
    let w_cert = self_signed(&["*.wild.test"]);
    let d_cert = self_signed(&["default.test"]);
    let (a, _a) = tls_backend("a", &a_cert).await;
    let (w, _w) = tls_backend("wild", &w_cert).await;
    let (d, _d) = tls_backend("default", &d_cert).await;
    let addr = free_addr();
    let cfg = config(json!({
        "clusters": {
            "a": {"endpoints": [{"address": a.to_string()}]},
            "wild": {"endpoints": [{"address": w.to_string()}]},
            "default": {"endpoints": [{"address": d.to_string()}]}
        },
        "listeners": {"edge": {"address": addr.to_string(), "protocol": "tls", "cluster": "default",
                               "sni": {"a.pass.test": "a", "*.wild.test": "wild"}}}
    }));
    let cp = ControlPlane::start(Some(snapshot(&cfg, 1))).await;
    let node = start_node(vec![cp.url()], None).await;
    cp.expect_ack(1).await;

    // Each client verifies the backend's own certificate end to end: the proxy did not terminate.
    let s = tls_connect(&trusting_client(&a_cert.der), addr, "a.pass.test").await.unwrap();
    assert_eq!(read_all(s).await, "backend=a");
    let s = tls_connect(&trusting_client(&w_cert.der), addr, "x.wild.test").await.unwrap();
    assert_eq!(read_all(s).await, "backend=wild");
    let s = tls_connect(&trusting_client(&d_cert.der), addr, "default.test").await.unwrap();
    assert_eq!(read_all(s).await, "backend=default");
    let s = tls_connect(&any_cert_client(&[&rustls::version::TLS13], &[]), addr, "unknown.test").await.unwrap();
    assert_eq!(leaf(&s), d_cert.der, "unknown name goes to the default cluster");

    // Not TLS: closed without reaching any backend.
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain.write_all(b"GET / HTTP/1.1\r\nHost: a.pass.test\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut buf)).await.expect("closed");
    assert!(buf.is_empty());

    node.shutdown().await;
    cp.stop().await;
}

/// The bytes a real TLS client opens with, for `server_name` (rustls, in memory).
fn client_hello(server_name: &str) -> Vec<u8> {
    let config = any_cert_client_config(&[&rustls::version::TLS13], &[]);
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    hello
}

/// Once routed by its SNI, a passthrough connection is an L4 connection: the listener's
/// `max_connections` holds, an endpoint that refuses is skipped for the next one, and the
/// `sluice_l4_*` series count it. (An echo endpoint: the ClientHello coming back proves it was
/// replayed and the splice runs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_connections_are_admitted_retried_and_counted_like_tcp() {
    let (echo, _echo) = echo_backend().await;
    let (refusing, _held) = refusing_addr();
    let addr = free_addr();
    let cfg = config(json!({
        "clusters": {"c": {"endpoints": [{"address": refusing.to_string()}, {"address": echo.to_string()}]}},
        "listeners": {"edge": {"address": addr.to_string(), "protocol": "tls", "cluster": "c", "max_connections": 1}}
    }));
    let cp = ControlPlane::start(Some(snapshot(&cfg, 1))).await;
    let node = start_node(vec![cp.url()], None).await;
    cp.expect_ack(1).await;
    let hello = client_hello("db.pass.test");
    let echoed = |mut s: TcpStream| {
        let hello = hello.clone();
        async move {
            s.write_all(&hello).await.unwrap();
            let mut back = vec![0u8; hello.len()];
            tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut back)).await.expect("echo").unwrap();
            assert_eq!(back, hello);
            s
        }
    };

    let held = echoed(TcpStream::connect(addr).await.unwrap()).await;
    // Over the limit: closed without an answer.
    let mut refused = TcpStream::connect(addr).await.unwrap();
    refused.write_all(&hello).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), refused.read_to_end(&mut buf)).await.expect("closed");
    assert!(buf.is_empty(), "a connection over max_connections got through");
    drop(held);
    eventually("the slot is free", || async {
        (metric(&node, "sluice_l4_active_connections", &[("listener", "edge")]).await == Some(0.0)).then_some(())
    })
    .await;
    // Round robin over [refusing, echo]: of two connections, one is sent to the refusing endpoint
    // first and goes on to the next.
    drop(echoed(TcpStream::connect(addr).await.unwrap()).await);

    let m = |name: &'static str| metric(&node, name, &[("listener", "edge")]);
    assert_eq!(m("sluice_l4_connections_total").await, Some(2.0));
    assert_eq!(m("sluice_l4_rejected_total").await, Some(1.0));
    let refusing = refusing.to_string();
    let failures =
        metric(&node, "sluice_l4_connect_failures_total", &[("listener", "edge"), ("endpoint", &refusing)]).await;
    assert!(failures.unwrap_or(0.0) >= 1.0, "the refusing endpoint was never tried");
    eventually("bytes both ways counted", || async {
        let sent = m("sluice_l4_sent_bytes_total").await?;
        let received = m("sluice_l4_received_bytes_total").await?;
        (sent >= 2.0 * hello.len() as f64 && received >= 2.0 * hello.len() as f64).then_some(())
    })
    .await;

    node.shutdown().await;
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_sends_the_proxy_header_before_the_client_hello() {
    let (echo, _echo) = echo_backend().await;
    let (v1, v2) = (free_addr(), free_addr());
    let listener = |addr: SocketAddr, version: &str| json!({"address": addr.to_string(), "protocol": "tls", "cluster": "c", "proxy_protocol": version});
    let cfg = config(json!({
        "clusters": {"c": {"endpoints": [{"address": echo.to_string()}]}},
        "listeners": {"edge1": listener(v1, "v1"), "edge2": listener(v2, "v2")}
    }));
    let cp = ControlPlane::start(Some(snapshot(&cfg, 1))).await;
    let node = start_node(vec![cp.url()], None).await;
    cp.expect_ack(1).await;
    let hello = client_hello("db.pass.test");
    for addr in [v1, v2] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let client = s.local_addr().unwrap();
        s.write_all(&hello).await.unwrap();
        let mut want = if addr == v1 {
            format!("PROXY TCP4 {} {} {} {}\r\n", client.ip(), addr.ip(), client.port(), addr.port()).into_bytes()
        } else {
            // v2: 12 bytes of addresses and ports, then the server name as PP2_TYPE_AUTHORITY.
            let mut h = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x1b".to_vec();
            for ip in [client.ip(), addr.ip()] {
                let IpAddr::V4(ip) = ip else { panic!("IPv4 loopback") };
                h.extend_from_slice(&ip.octets());
            }
            h.extend_from_slice(&client.port().to_be_bytes());
            h.extend_from_slice(&addr.port().to_be_bytes());
            h.extend_from_slice(b"\x02\x00\x0cdb.pass.test");
            h
        };
        want.extend_from_slice(&hello);
        let mut back = vec![0u8; want.len()];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut back)).await.expect("echo").unwrap();
        assert_eq!(back, want, "{addr}");
    }
    node.shutdown().await;
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_behind_a_balancer_takes_the_proxy_header_before_the_handshake() {
    let backend = Backend::start("app").await;
    let cert = self_signed(&["api.example.com"]);
    let addr = free_addr();
    let mut cfg = https_config(addr, backend.addr, &[("api", &cert)]);
    cfg.listeners.get_mut("web").unwrap().accept_proxy_protocol = true;
    let cp = ControlPlane::start(Some(snapshot(&cfg, 1))).await;
    let node = start_node(vec![cp.url()], None).await;
    cp.expect_ack(1).await;

    // The header, then the handshake on the same connection: the header was consumed exactly,
    // or the handshake would fail on its bytes.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"PROXY TCP4 198.51.100.20 192.0.2.1 1234 443\r\n").await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("api.example.com").unwrap();
    let mut s = tokio::time::timeout(Duration::from_secs(10), trusting_client(&cert.der).connect(name, tcp))
        .await
        .expect("handshake in time")
        .unwrap();
    let r = request(&mut s, "api.example.com").await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert!(r.body.contains("x-forwarded-for: 198.51.100.20\n"), "{}", r.body);
    assert!(r.body.contains("x-forwarded-proto: https"), "{}", r.body);

    // A handshake without the header: closed, nothing handshaken, counted.
    assert!(tls_connect(&trusting_client(&cert.der), addr, "api.example.com").await.is_err());
    let m = metric(&node, "sluice_proxy_protocol_errors_total", &[("listener", "web")]).await;
    assert_eq!(m, Some(1.0));
    node.shutdown().await;
    cp.stop().await;
}
