//! Node health reported to the control plane (issue 6): `sluice control-plane` + `sluice proxy`, a
//! cluster with a TCP health check whose one endpoint is a closed port. `GET /v1/clusters/{name}`
//! shows it unhealthy on the one node; once something listens on that port, healthy.

use std::time::Duration;

use serde_json::{json, Value};
use sluice_e2e::l7::wait_acked;
use sluice_e2e::{eventually, free_addr, Sluice};
use tokio::net::TcpListener;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// The `health` object of the cluster's first endpoint once `want` holds for it.
async fn health_until(api: &sluice_e2e::Api, what: &str, want: impl Fn(&Value) -> bool) -> Value {
    eventually(Duration::from_secs(20), what, || {
        let api = api.clone();
        let want = &want;
        async move {
            let (status, body) = api.get("/v1/clusters/svc").await;
            let health = body["endpoints"][0]["health"].clone();
            (status.is_success() && want(&health)).then_some(health)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_health_follows_the_backend() {
    let cp = Sluice::control_plane(BIN).await;
    let api = cp.api();
    let _node = Sluice::proxy(BIN, cp.grpc_addr.unwrap(), "node-1").await;

    let endpoint = free_addr(); // nothing listens here yet
    let check =
        json!({"tcp": {}, "interval_ms": 100, "timeout_ms": 500, "healthy_threshold": 1, "unhealthy_threshold": 2});
    api.put("clusters", "svc", json!({"endpoints": [{"address": endpoint.to_string()}], "health_check": check})).await;
    api.put("listeners", "web", json!({"address": free_addr().to_string(), "protocol": "http"})).await;
    let rev = api.put("routes", "svc", json!({"listener": "web", "backends": [{"cluster": "svc"}]})).await;
    wait_acked(&api, &["node-1"], rev).await;

    let down = health_until(&api, "the endpoint to be unhealthy on node-1", |h| h["unhealthy_nodes"] == 1).await;
    assert_eq!(
        down,
        json!({"healthy_nodes": 0, "unhealthy_nodes": 1, "nodes": [{"node": "node-1", "healthy": false, "ejected": false}]})
    );
    let (_, body) = api.get("/v1/clusters/svc").await;
    assert_eq!(body["endpoints"][0]["address"], endpoint.to_string(), "existing fields unchanged: {body}");
    assert_eq!(body["endpoints"][0]["weight"], 1);

    // A backend comes up on that port: connects succeed, the check passes.
    let backend = TcpListener::bind(endpoint).await.expect("binding the endpoint's port");
    let accept = tokio::spawn(async move {
        while let Ok((conn, _)) = backend.accept().await {
            drop(conn);
        }
    });
    let up = health_until(&api, "the endpoint to be healthy on node-1", |h| h["healthy_nodes"] == 1).await;
    assert_eq!(
        up,
        json!({"healthy_nodes": 1, "unhealthy_nodes": 0, "nodes": [{"node": "node-1", "healthy": true, "ejected": false}]})
    );
    accept.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_by_name_is_resolved_by_the_node_and_reported_per_address() {
    let cp = Sluice::control_plane(BIN).await;
    let api = cp.api();
    let _node = Sluice::proxy(BIN, cp.grpc_addr.unwrap(), "node-1").await;
    let backend = sluice_e2e::l7::Backend::start("by-name").await;
    // `localhost` resolves through the system's resolver (/etc/hosts).
    let by_name = format!("localhost:{}", backend.address.port());
    let check =
        json!({"tcp": {}, "interval_ms": 100, "timeout_ms": 500, "healthy_threshold": 1, "unhealthy_threshold": 2});
    api.put("clusters", "svc", json!({"endpoints": [{"address": by_name}], "health_check": check})).await;
    let web = free_addr();
    api.put("listeners", "web", json!({"address": web.to_string(), "protocol": "http"})).await;
    let rev = api.put("routes", "svc", json!({"listener": "web", "backends": [{"cluster": "svc"}]})).await;
    wait_acked(&api, &["node-1"], rev).await;

    let answer = sluice_e2e::http_get(web, "any", "/").await;
    assert_eq!(answer, Some((200, "by-name\n".to_string())));
    let up = health_until(&api, "the name's address to be healthy on node-1", |h| h["healthy_nodes"] == 1).await;
    assert_eq!(up["nodes"], json!([{"node": "node-1", "healthy": true, "ejected": false}]));
    let (_, body) = api.get("/v1/clusters/svc").await;
    let endpoint = &body["endpoints"][0];
    assert_eq!(endpoint["address"], by_name, "the spec as written: {body}");
    // Each address of the answer (127.0.0.1, and ::1 where the resolver adds it for localhost).
    let resolved = endpoint["resolved"].as_array().expect("resolved addresses").clone();
    assert!(
        resolved.contains(&json!({"address": backend.address.to_string(), "healthy_nodes": 1, "unhealthy_nodes": 0})),
        "{resolved:?}"
    );
    for r in &resolved {
        let address: std::net::SocketAddr = r["address"].as_str().unwrap().parse().unwrap();
        assert!(address.ip().is_loopback() && address.port() == backend.address.port(), "{resolved:?}");
    }
}
