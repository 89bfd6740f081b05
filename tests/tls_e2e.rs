//! Issue 5 end to end with the real binary: mTLS on the config stream (a node with no or a wrong
//! client certificate is refused, and says so in its log), and an https listener fed by REST
//! certificates (SNI selection, wildcard, default, rotation with a connection held open).
//! Certificates are generated here.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sluice_e2e::l7::{wait_acked, Backend};
use sluice_e2e::tls::{
    any_cert_client_config, peer_leaf as leaf, self_signed, tls_connect as connect, trusting_client as trusting, Ca,
    Pem,
};
use sluice_e2e::{eventually, free_addr, Api, Sluice};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const WAIT: Duration = Duration::from_secs(60);

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p: PathBuf = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// `sluice proxy` with extra TLS flags; returns once its /healthz answers.
async fn proxy(node_id: &str, url: &str, tls: &[String]) -> Sluice {
    let admin = free_addr();
    let mut a = args(&["proxy", "--control-plane", url, "--node-id", node_id, "--admin-addr", &admin.to_string()]);
    a.extend(tls.iter().cloned());
    let mut s = Sluice::spawn(BIN, &format!("proxy-{node_id}"), &a, &[]);
    s.admin_addr = Some(admin);
    let http = reqwest::Client::new();
    eventually(WAIT, &format!("{node_id}'s /healthz"), || {
        if let Some(status) = s.exited() {
            panic!("{node_id} exited early ({status}):\n{}", s.log());
        }
        let http = http.clone();
        async move {
            let r = http.get(format!("http://{admin}/healthz")).send().await.ok()?;
            r.status().is_success().then_some(())
        }
    })
    .await;
    s
}

async fn readyz(s: &Sluice) -> u16 {
    let url = format!("http://{}/readyz", s.admin_addr.unwrap());
    reqwest::get(url).await.map(|r| r.status().as_u16()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_stream_mtls_refuses_nodes_without_a_valid_client_certificate() {
    let ca = Ca::new("sluice test CA");
    let rogue_ca = Ca::new("rogue CA");
    let server = ca.leaf(&["127.0.0.1", "localhost"]);
    let client = ca.leaf(&["node-good"]);
    let rogue = rogue_ca.leaf(&["node-rogue"]);
    let files = tempfile_dir();
    let dir = files.path();
    let ca_file = write(dir, "ca.pem", &ca.pem.cert);

    let (api, grpc) = (free_addr(), free_addr());
    let cp_args = args(&[
        "control-plane",
        "--database-url",
        "sqlite://./cp.db",
        "--api-addr",
        &api.to_string(),
        "--grpc-addr",
        &grpc.to_string(),
        "--grpc-tls-cert",
        &write(dir, "server.pem", &server.cert),
        "--grpc-tls-key",
        &write(dir, "server.key", &server.key),
        "--grpc-client-ca",
        &ca_file,
    ]);
    let mut cp = Sluice::spawn(BIN, "control-plane", &cp_args, &[]);
    cp.api_addr = Some(api);
    cp.grpc_addr = Some(grpc);
    let rest = cp.api();
    eventually(WAIT, "the control plane's /healthz", || {
        if let Some(status) = cp.exited() {
            panic!("the control plane exited early ({status}):\n{}", cp.log());
        }
        let rest = rest.clone();
        async move { rest.healthy().await.then_some(()) }
    })
    .await;
    let backend = Backend::start("app").await;
    let listener = free_addr();
    rest.put("clusters", "app", json!({"endpoints": [{"address": backend.address.to_string()}]})).await;
    rest.put("listeners", "web", json!({"address": listener.to_string(), "protocol": "http"})).await;
    let revision = rest.put("routes", "app", json!({"listener": "web", "backends": [{"cluster": "app"}]})).await;

    let url = format!("https://{grpc}");
    // Started first, so they had every chance to connect before the good node does.
    let anonymous = proxy("node-anonymous", &url, &args(&["--tls-ca", &ca_file])).await;
    let wrong = proxy(
        "node-rogue",
        &url,
        &args(&[
            "--tls-ca",
            &ca_file,
            "--tls-cert",
            &write(dir, "rogue.pem", &rogue.cert),
            "--tls-key",
            &write(dir, "rogue.key", &rogue.key),
        ]),
    )
    .await;
    let good = proxy(
        "node-good",
        &url,
        &args(&[
            "--tls-ca",
            &ca_file,
            "--tls-cert",
            &write(dir, "client.pem", &client.cert),
            "--tls-key",
            &write(dir, "client.key", &client.key),
        ]),
    )
    .await;
    wait_acked(&rest, &["node-good"], revision).await;
    let (status, body) = sluice_e2e::http_get(listener, "any", "/").await.expect("the good node serves");
    assert_eq!((status, body.as_str()), (200, "app\n"));

    let known: Vec<String> = rest.nodes().await.iter().filter_map(|n| n["id"].as_str().map(String::from)).collect();
    assert_eq!(known, vec!["node-good".to_string()], "only the node with a valid client certificate got in");
    assert_eq!(readyz(&anonymous).await, 503);
    assert_eq!(readyz(&wrong).await, 503);
    // Each refused node says why, in words that name what to check.
    for (node, alert) in [(&wrong, "UnknownCA"), (&anonymous, "CertificateRequired")] {
        let clear = format!(
            "the control plane at {url}/ refused this node's client certificate ({alert}): check --tls-cert/--tls-key \
             and the control plane's --grpc-client-ca"
        );
        eventually(WAIT, &format!("{} to log {clear:?}", node.name), || {
            let found = node.log().contains(&clear);
            async move { found.then_some(()) }
        })
        .await;
    }
    let cp_log = cp.log();
    assert!(!cp_log.contains("BEGIN PRIVATE KEY"), "a key leaked into the log");

    // A plaintext node cannot talk to the TLS port either, and a node cannot skip verifying us.
    let plain = proxy("node-plain", &format!("http://{grpc}"), &[]).await;
    assert_eq!(readyz(&plain).await, 503);
    assert_eq!(rest.nodes().await.len(), 1);
    drop((good, anonymous, wrong, plain, cp));
}

fn tempfile_dir() -> sluice_e2e::l7::TempDir {
    sluice_e2e::l7::tempdir()
}

fn any_cert_client() -> TlsConnector {
    TlsConnector::from(Arc::new(any_cert_client_config(rustls::DEFAULT_VERSIONS, &[])))
}

/// One request on a kept-alive connection; the body (the backend answers `NAME\n` with a length).
async fn get(s: &mut TlsStream<TcpStream>, host: &str) -> (u16, String) {
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let read = async {
        loop {
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(0);
                if body.len() >= len {
                    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
                    return (status, body.to_string());
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

async fn put_certificate(rest: &Api, name: &str, pem: &Pem) -> u64 {
    rest.put("certificates", name, pem.json()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_listener_picks_rest_certificates_by_sni_and_rotates_under_open_connections() {
    let cp = Sluice::control_plane(BIN).await;
    let rest = cp.api();
    let node = Sluice::proxy(BIN, cp.grpc_addr.unwrap(), "edge").await;
    let backend = Backend::start("app").await;
    let exact = self_signed(&["api.example.com"]);
    let wild = self_signed(&["*.example.com"]);
    let default = self_signed(&["default.test"]);
    put_certificate(&rest, "default", &default).await;
    put_certificate(&rest, "exact", &exact).await;
    put_certificate(&rest, "wild", &wild).await;
    let listener = free_addr();
    rest.put("clusters", "app", json!({"endpoints": [{"address": backend.address.to_string()}]})).await;
    rest.put(
        "listeners",
        "web",
        json!({"address": listener.to_string(), "protocol": "https", "certificates": ["default", "exact", "wild"]}),
    )
    .await;
    let revision = rest.put("routes", "app", json!({"listener": "web", "backends": [{"cluster": "app"}]})).await;
    wait_acked(&rest, &["edge"], revision).await;

    let any = any_cert_client();
    for (sni, want) in [
        ("api.example.com", &exact),
        ("www.example.com", &wild),
        ("deep.www.example.com", &default),
        ("unknown.test", &default),
    ] {
        let s = connect(&any, listener, sni).await.unwrap();
        assert_eq!(leaf(&s), want.der, "certificate for {sni}");
    }

    let mut held = connect(&trusting(&exact.der), listener, "api.example.com").await.unwrap();
    assert_eq!(get(&mut held, "api.example.com").await, (200, "app\n".to_string()));
    let seen = backend.seen();
    assert_eq!(seen.last().unwrap().headers.get("x-forwarded-proto").unwrap(), "https");

    // Rotation: PUT a new certificate under the same name.
    let rotated = self_signed(&["api.example.com"]);
    let revision = put_certificate(&rest, "exact", &rotated).await;
    wait_acked(&rest, &["edge"], revision).await;
    let fresh = connect(&trusting(&rotated.der), listener, "api.example.com").await.unwrap();
    assert_eq!(leaf(&fresh), rotated.der);
    assert!(connect(&trusting(&exact.der), listener, "api.example.com").await.is_err());
    // The connection from before the rotation continues untouched.
    assert_eq!(leaf(&held), exact.der);
    for _ in 0..3 {
        assert_eq!(get(&mut held, "api.example.com").await, (200, "app\n".to_string()));
    }
    drop((node, cp));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_is_validated_and_its_client_certificate_is_protected_from_delete() {
    let cp = Sluice::control_plane(BIN).await;
    let rest = cp.api();
    let ca = Ca::new("backend CA");
    let client = ca.leaf(&["sluice-proxy"]);
    let cluster = |cert: &str| {
        json!({"endpoints": [{"address": "127.0.0.1:9443"}],
               "tls": {"ca_pem": ca.pem.cert, "server_name": "backend.internal", "client_certificate": cert}})
    };
    // A client certificate that does not exist: 422 naming the field, nothing stored.
    let (status, body) = rest.call(reqwest::Method::PUT, "/v1/clusters/secure", Some(&cluster("missing"))).await;
    assert_eq!(status.as_u16(), 422, "{body}");
    assert_eq!(body["error"]["field"], "tls.client_certificate", "{body}");
    assert_eq!(rest.get("/v1/clusters/secure").await.0.as_u16(), 404);
    // A CA bundle that is no certificate: 422.
    let bad = json!({"endpoints": [{"address": "127.0.0.1:9443"}], "tls": {"ca_pem": "nope"}});
    let (status, body) = rest.call(reqwest::Method::PUT, "/v1/clusters/secure", Some(&bad)).await;
    assert_eq!((status.as_u16(), body["error"]["field"].as_str()), (422, Some("tls.ca_pem")), "{body}");

    put_certificate(&rest, "backend-client", &client).await;
    rest.put("clusters", "secure", cluster("backend-client")).await;
    let (status, body) = rest.get("/v1/clusters/secure").await;
    assert_eq!(status.as_u16(), 200);
    assert_eq!(body["tls"]["client_certificate"], "backend-client", "{body}");
    // The certificate is in use by the cluster: 409 on delete.
    let (status, body) = rest.call(reqwest::Method::DELETE, "/v1/certificates/backend-client", None).await;
    assert_eq!(status.as_u16(), 409, "{body}");
    assert!(body.to_string().contains("cluster secure"), "{body}");
    drop(cp);
}
