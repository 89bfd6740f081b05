//! Endpoint health reported on the config stream (issue 6): a tonic client playing the node sends
//! a HealthReport, `GET /v1/clusters/{name}` through the API router shows it per endpoint, a report
//! from a node of a group that does not receive the cluster is not counted, and a node's health
//! disappears when its stream ends.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use sluice_control_plane::api::{app, ApiState};
use sluice_control_plane::server::{ControlPlane, ControlPlaneOptions};
use sluice_control_plane::store::{Change, Resource};
use sluice_shared::proto::v1 as pb;
use sluice_shared::proto::v1::config_discovery_client::ConfigDiscoveryClient;
use sluice_shared::proto::v1::node_message::Msg as NodeMsg;
use sluice_shared::proto::v1::server_message::Msg as ServerMsg;
use sluice_shared::validate::parse_json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tower::ServiceExt;

const WAIT: Duration = Duration::from_secs(10);
const TOKEN: &str = "test-token";

struct Node {
    tx: mpsc::Sender<pb::NodeMessage>,
    _rx: tonic::Streaming<pb::ServerMessage>,
}

impl Node {
    /// Connects, receives the group's snapshot and acknowledges it.
    async fn connect(addr: SocketAddr, id: &str, group: &str) -> Node {
        let mut client = ConfigDiscoveryClient::connect(format!("http://{addr}")).await.unwrap();
        let (tx, out) = mpsc::channel(16);
        let hello =
            pb::Hello { node_id: id.into(), group: group.into(), last_applied_revision: 0, version: "t".into() };
        tx.send(pb::NodeMessage { msg: Some(NodeMsg::Hello(hello)) }).await.unwrap();
        let mut rx = client.stream(ReceiverStream::new(out)).await.unwrap().into_inner();
        let snapshot = match tokio::time::timeout(WAIT, rx.message()).await {
            Ok(Ok(Some(pb::ServerMessage { msg: Some(ServerMsg::Snapshot(s)) }))) => s,
            other => panic!("expected a snapshot, got {other:?}"),
        };
        let ack = pb::Ack { revision: snapshot.revision, nonce: snapshot.nonce, errors: vec![] };
        tx.send(pb::NodeMessage { msg: Some(NodeMsg::Ack(ack)) }).await.unwrap();
        Node { tx, _rx: rx }
    }

    async fn report(&self, endpoints: &[(&str, &str, bool, bool)]) {
        let endpoints = endpoints
            .iter()
            .map(|(cluster, address, healthy, ejected)| pb::EndpointHealth {
                cluster: cluster.to_string(),
                address: address.to_string(),
                healthy: *healthy,
                ejected: *ejected,
            })
            .collect();
        let msg = NodeMsg::Health(pb::HealthReport { revision: 1, endpoints });
        self.tx.send(pb::NodeMessage { msg: Some(msg) }).await.unwrap();
    }
}

async fn get_cluster(app: &axum::Router, name: &str) -> Value {
    let req = Request::get(format!("/v1/clusters/{name}"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap()
}

/// Polls the cluster until the health of endpoint `i` equals `want`.
async fn health_eventually(app: &axum::Router, cluster: &str, i: usize, want: Value) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let body = get_cluster(app, cluster).await;
        if body["endpoints"][i]["health"] == want {
            return body;
        }
        assert!(tokio::time::Instant::now() < deadline, "endpoint {i} of {cluster} never {want}: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn reported_health_shows_per_endpoint_and_clears_on_disconnect() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(ControlPlaneOptions {
        database_url: format!("sqlite://{}", dir.path().join("sluice.db").display()),
        api_addr: "127.0.0.1:0".parse().unwrap(),
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        admin_token: TOKEN.into(),
        control_plane_id: Some("cp-test".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let store = cp.store().clone();
    let put = |r: Resource| {
        let store = store.clone();
        async move { store.apply(Change::Put(r), None).await.unwrap() }
    };
    let spec = r#"{"endpoints":[{"address":"127.0.0.1:9001"},{"address":"127.0.0.1:9002","weight":3}],
                   "health_check":{"tcp":{},"interval_ms":1000,"timeout_ms":500,"healthy_threshold":1,"unhealthy_threshold":1}}"#;
    put(Resource::Cluster("api".into(), parse_json(spec.as_bytes()).unwrap())).await;
    put(Resource::Listener("web".into(), parse_json(br#"{"address":"127.0.0.1:18080","protocol":"http"}"#).unwrap()))
        .await;
    put(Resource::Route("api".into(), parse_json(br#"{"listener":"web","backends":[{"cluster":"api"}]}"#).unwrap()))
        .await;
    let api = app(ApiState::new(store.clone(), TOKEN));

    let before = get_cluster(&api, "api").await;
    assert_eq!(before["endpoints"][0]["health"], json!({"healthy_nodes": 0, "unhealthy_nodes": 0, "nodes": []}));
    assert_eq!(before["endpoints"][1]["weight"], 3, "existing fields unchanged: {before}");
    assert_eq!(before["endpoints"][1]["address"], "127.0.0.1:9002");

    let a = Node::connect(cp.grpc_addr(), "node-a", "default").await;
    let b = Node::connect(cp.grpc_addr(), "node-b", "default").await;
    // A node of a group that does not receive `api` is not counted, whatever it says.
    let other = Node::connect(cp.grpc_addr(), "node-edge", "edge").await;
    other.report(&[("api", "127.0.0.1:9001", false, false)]).await;
    a.report(&[("api", "127.0.0.1:9001", false, false), ("api", "127.0.0.1:9002", true, false)]).await;
    b.report(&[("api", "127.0.0.1:9001", true, false), ("api", "127.0.0.1:9002", true, true)]).await;

    let body = health_eventually(
        &api,
        "api",
        0,
        json!({"healthy_nodes": 1, "unhealthy_nodes": 1, "nodes": [
            {"node": "node-a", "healthy": false, "ejected": false},
            {"node": "node-b", "healthy": true, "ejected": false}]}),
    )
    .await;
    assert_eq!(
        body["endpoints"][1]["health"],
        json!({"healthy_nodes": 1, "unhealthy_nodes": 1, "nodes": [
            {"node": "node-a", "healthy": true, "ejected": false},
            {"node": "node-b", "healthy": true, "ejected": true}]})
    );

    // A later report replaces the earlier one.
    a.report(&[("api", "127.0.0.1:9001", true, false), ("api", "127.0.0.1:9002", true, false)]).await;
    health_eventually(
        &api,
        "api",
        0,
        json!({"healthy_nodes": 2, "unhealthy_nodes": 0, "nodes": [
            {"node": "node-a", "healthy": true, "ejected": false},
            {"node": "node-b", "healthy": true, "ejected": false}]}),
    )
    .await;

    // node-b goes away: its health goes with it.
    drop(b);
    health_eventually(
        &api,
        "api",
        1,
        json!({"healthy_nodes": 1, "unhealthy_nodes": 0, "nodes": [{"node": "node-a", "healthy": true, "ejected": false}]}),
    )
    .await;
    drop((a, other));
    cp.shutdown().await;
}
