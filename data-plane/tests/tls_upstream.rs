//! Upstream TLS per cluster: the proxy verifies the backend against the cluster's CA and presents
//! the cluster's client certificate (mTLS). Certificates are generated here; all on loopback.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rcgen::KeyPair;
use rustls::pki_types::PrivateKeyDer;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use serde_json::json;
use sluice_e2e::tls::{provider, Ca, Pem};
use sluice_shared::Config;
use support::*;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// An HTTPS backend that requires a client certificate signed by `client_ca`; counts requests.
async fn mtls_backend(server: &Pem, client_ca: &Ca) -> (SocketAddr, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let mut roots = RootCertStore::empty();
    roots.add(client_ca.pem.der.clone()).unwrap();
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider()).build().unwrap();
    let key = PrivateKeyDer::try_from(KeyPair::from_pem(&server.key).unwrap().serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![server.der.clone()], key)
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, counter) = (acceptor.clone(), counter.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let svc = service_fn(move |_req: hyper::Request<hyper::body::Incoming>| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    async { Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from("secure")))) }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), svc).await;
            });
        }
    });
    (addr, hits, task)
}

/// An mTLS-only backend named `backend.internal`, the CA that signed it, and a client
/// certificate it accepts (to be registered as `backend-client`).
struct MtlsBackend {
    backend_ca: Ca,
    client: Pem,
    backend: SocketAddr,
    hits: Arc<AtomicUsize>,
    _task: tokio::task::JoinHandle<()>,
}

impl MtlsBackend {
    async fn start() -> MtlsBackend {
        let backend_ca = Ca::new("backend CA");
        let client_ca = Ca::new("client CA");
        let server = backend_ca.leaf(&["backend.internal"]);
        let client = client_ca.leaf(&["sluice-proxy"]);
        let (backend, hits, _task) = mtls_backend(&server, &client_ca).await;
        MtlsBackend { backend_ca, client, backend, hits, _task }
    }
}

fn config_for(listener: SocketAddr, backend: SocketAddr, tls: serde_json::Value, client: Option<&Pem>) -> Config {
    let mut cfg = config(json!({
        "clusters": {"secure": {"endpoints": [{"address": backend.to_string()}], "tls": tls}},
        "listeners": {"web": {"address": listener.to_string(), "protocol": "http"}},
        "routes": {"secure": {"listener": "web", "backends": [{"cluster": "secure"}]}}
    }));
    if let Some(c) = client {
        cfg.certificates.insert("backend-client".into(), serde_json::from_value(c.json()).unwrap());
    }
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_mtls_verifies_the_backend_and_presents_the_client_certificate() {
    let MtlsBackend { backend_ca, client, backend, hits, _task } = MtlsBackend::start().await;
    let other_ca = Ca::new("other CA");
    let listener = free_addr();

    // Verified by name, with the client certificate: served.
    let tls = json!({"ca_pem": backend_ca.pem.cert, "server_name": "backend.internal", "client_certificate": "backend-client"});
    let cp = ControlPlane::start(Some(snapshot(&config_for(listener, backend, tls, Some(&client)), 1))).await;
    let node = start_node(vec![cp.url()], None).await;
    cp.expect_ack(1).await;
    for _ in 0..3 {
        let r = get(listener, "any", "/").await;
        assert_eq!((r.status, r.body.as_str()), (200, "secure"), "{}", r.raw);
    }
    assert_eq!(hits.load(Ordering::SeqCst), 3);

    // Without the client certificate the backend refuses the handshake: 502, nothing served.
    let tls = json!({"ca_pem": backend_ca.pem.cert, "server_name": "backend.internal"});
    cp.send_snapshot(snapshot(&config_for(listener, backend, tls, None), 2)).await;
    cp.expect_ack(2).await;
    assert_eq!(get(listener, "any", "/").await.status, 502);

    // A backend certificate from another CA is not trusted: 502.
    let tls =
        json!({"ca_pem": other_ca.pem.cert, "server_name": "backend.internal", "client_certificate": "backend-client"});
    cp.send_snapshot(snapshot(&config_for(listener, backend, tls, Some(&client)), 3)).await;
    cp.expect_ack(3).await;
    assert_eq!(get(listener, "any", "/").await.status, 502);

    // The wrong name (the default is the endpoint's IP, not in the certificate): 502.
    let tls = json!({"ca_pem": backend_ca.pem.cert, "client_certificate": "backend-client"});
    cp.send_snapshot(snapshot(&config_for(listener, backend, tls, Some(&client)), 4)).await;
    cp.expect_ack(4).await;
    assert_eq!(get(listener, "any", "/").await.status, 502);
    assert_eq!(hits.load(Ordering::SeqCst), 3);

    node.shutdown().await;
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_speak_the_clusters_tls() {
    let MtlsBackend { backend_ca, client, backend, hits, _task } = MtlsBackend::start().await;
    let listener = free_addr();
    let with_check = |tls: serde_json::Value| {
        let mut cfg = config_for(listener, backend, tls, Some(&client));
        let check = json!({"http": {"path": "/healthz"}, "interval_ms": 100, "timeout_ms": 1000,
                           "healthy_threshold": 1, "unhealthy_threshold": 1});
        cfg.clusters.get_mut("secure").unwrap().health_check = Some(serde_json::from_value(check).unwrap());
        cfg
    };
    let endpoint = backend.to_string();
    async fn healthy(node: &sluice_data_plane::Node, endpoint: &str) -> Option<f64> {
        metric(node, "sluice_endpoint_healthy", &[("cluster", "secure"), ("endpoint", endpoint)]).await
    }

    // Probes verify the backend and present the client certificate, like requests: healthy, and
    // the backend saw them (a plaintext probe would fail its TLS handshake).
    let tls = json!({"ca_pem": backend_ca.pem.cert, "server_name": "backend.internal", "client_certificate": "backend-client"});
    let cp = ControlPlane::start(Some(snapshot(&with_check(tls), 1))).await;
    let node = start_node(vec![cp.url()], None).await;
    cp.expect_ack(1).await;
    eventually("probes to pass over mTLS", || async {
        (hits.load(Ordering::SeqCst) >= 2 && healthy(&node, &endpoint).await == Some(1.0)).then_some(())
    })
    .await;
    assert_eq!(get(listener, "any", "/").await.status, 200);

    // A CA the backend's certificate does not chain to: probes fail, the endpoint turns unhealthy
    // and requests get the fast 503 instead of a 502 per request.
    let tls = json!({"ca_pem": Ca::new("other CA").pem.cert, "server_name": "backend.internal",
                     "client_certificate": "backend-client"});
    cp.send_snapshot(snapshot(&with_check(tls), 2)).await;
    cp.expect_ack(2).await;
    eventually("probes to fail verification", || async {
        (healthy(&node, &endpoint).await == Some(0.0)).then_some(())
    })
    .await;
    let r = get(listener, "any", "/").await;
    assert_eq!(r.status, 503, "{}", r.raw);
    assert!(r.body.contains("no healthy endpoint"), "{}", r.body);

    node.shutdown().await;
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_listener_speaks_tls_to_a_tls_cluster() {
    let MtlsBackend { backend_ca, client, backend, hits, _task } = MtlsBackend::start().await;
    let listener = free_addr();
    let tcp_config = |ca: &str| {
        let mut cfg = config(json!({
            "clusters": {"secure": {"endpoints": [{"address": backend.to_string()}],
                                    "tls": {"ca_pem": ca, "server_name": "backend.internal",
                                            "client_certificate": "backend-client"}}},
            "listeners": {"db": {"address": listener.to_string(), "protocol": "tcp", "cluster": "secure"}}
        }));
        cfg.certificates.insert("backend-client".into(), serde_json::from_value(client.json()).unwrap());
        cfg
    };
    let cp = ControlPlane::start(Some(snapshot(&tcp_config(&backend_ca.pem.cert), 1))).await;
    let node = start_node(vec![cp.url()], None).await;
    cp.expect_ack(1).await;

    // The client speaks plaintext; the endpoint only accepts mTLS: the proxy encrypts for it.
    // (No half-close from the client: the backend would take it as the end of the connection.)
    async fn exchange(addr: SocketAddr) -> RawResponse {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: db\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut buf = Vec::new();
        let read = tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "the connection was not closed");
        parse(&String::from_utf8_lossy(&buf))
    }
    let r = exchange(listener).await;
    assert_eq!((r.status, r.body.as_str()), (200, "secure"), "{}", r.raw);
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // An endpoint certificate the cluster's CA does not sign: no handshake, the client is closed.
    cp.send_snapshot(snapshot(&tcp_config(&Ca::new("other CA").pem.cert), 2)).await;
    cp.expect_ack(2).await;
    let r = exchange(listener).await;
    assert!(r.raw.is_empty(), "nothing may come back: {}", r.raw);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    node.shutdown().await;
    cp.stop().await;
}
