//! `ControlPlane::start` wiring: both listeners on OS-picked ports, errors that say what failed.

use std::time::Duration;

use sluice_control_plane::{ControlPlane, ControlPlaneError, ControlPlaneOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn options(dir: &tempfile::TempDir) -> ControlPlaneOptions {
    ControlPlaneOptions {
        database_url: format!("sqlite://{}", dir.path().join("sluice.db").display()),
        api_addr: "127.0.0.1:0".parse().unwrap(),
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        admin_token: "secret".into(),
        ..Default::default()
    }
}

async fn http_get(addr: std::net::SocketAddr, path: &str, token: Option<&str>) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\n{auth}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out)).await.unwrap().unwrap();
    out
}

#[tokio::test]
async fn serves_the_rest_api_on_an_ephemeral_port() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(options(&dir)).await.unwrap();
    assert!(cp.control_plane_id().starts_with("cp-"), "generated id: {}", cp.control_plane_id());
    assert!(http_get(cp.api_addr(), "/healthz", None).await.starts_with("HTTP/1.1 200"));
    assert!(http_get(cp.api_addr(), "/v1/revision", None).await.starts_with("HTTP/1.1 401"));
    let ok = http_get(cp.api_addr(), "/v1/revision", Some("secret")).await;
    assert!(ok.starts_with("HTTP/1.1 200") && ok.contains(r#""revision":0"#), "{ok}");
    let grpc = cp.grpc_addr();
    tokio::time::timeout(Duration::from_secs(10), cp.shutdown()).await.expect("bounded shutdown");
    assert!(tokio::net::TcpStream::connect(grpc).await.is_err(), "gRPC listener closed");
}

#[tokio::test]
async fn start_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let empty = ControlPlaneOptions { admin_token: String::new(), ..options(&dir) };
    assert!(matches!(ControlPlane::start(empty).await, Err(ControlPlaneError::EmptyAdminToken)));

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = ControlPlaneOptions { grpc_addr: taken.local_addr().unwrap(), ..options(&dir) };
    match ControlPlane::start(busy).await {
        Err(e @ ControlPlaneError::Bind { what: "gRPC", .. }) => assert!(e.to_string().contains("gRPC")),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("bound a port that is in use"),
    }
}
