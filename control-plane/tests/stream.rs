//! The config stream against a real control plane (SQLite in a tempdir, ports picked by the OS),
//! with a tonic client playing the node.
//!
//! Absence ("nothing was resent") is shown by order, never by waiting: the stream is ordered, so
//! when the next message is the snapshot of a later write, nothing came before it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use sluice_control_plane::nodes::NodeRecord;
use sluice_control_plane::server::{ControlPlane, ControlPlaneOptions};
use sluice_control_plane::store::{Change, Resource, Store};
use sluice_shared::proto::v1 as pb;
use sluice_shared::proto::v1::config_discovery_client::ConfigDiscoveryClient;
use sluice_shared::proto::v1::node_message::Msg as NodeMsg;
use sluice_shared::proto::v1::server_message::Msg as ServerMsg;
use sluice_shared::validate::parse_json;
use sluice_shared::{Config, Revision};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const WAIT: Duration = Duration::from_secs(10);

struct Harness {
    cp: ControlPlane,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn start() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let opts = ControlPlaneOptions {
            database_url: format!("sqlite://{}", dir.path().join("sluice.db").display()),
            api_addr: "127.0.0.1:0".parse().unwrap(),
            grpc_addr: "127.0.0.1:0".parse().unwrap(),
            admin_token: "test-token".into(),
            control_plane_id: Some("cp-test".into()),
            ..Default::default()
        };
        let cp = ControlPlane::start(opts).await.unwrap();
        assert_ne!(cp.grpc_addr().port(), 0);
        assert_ne!(cp.api_addr().port(), 0);
        let h = Harness { cp, _dir: dir };
        h.put_cluster("api", 9001).await;
        h.put_cluster("db", 9002).await;
        h.put(Resource::Listener("web".into(), json(r#"{"address":"127.0.0.1:18080","protocol":"http"}"#))).await;
        h.put(Resource::Route(
            "api".into(),
            json(r#"{"listener":"web","match":{"path":{"prefix":"/api/"}},"backends":[{"cluster":"api"}]}"#),
        ))
        .await;
        h
    }

    fn store(&self) -> &Store {
        self.cp.store()
    }

    async fn put(&self, r: Resource) -> Revision {
        self.store().apply(Change::Put(r), None).await.unwrap().revision
    }

    async fn put_cluster(&self, name: &str, port: u16) -> Revision {
        let spec = format!(r#"{{"endpoints":[{{"address":"127.0.0.1:{port}"}}]}}"#);
        self.put(Resource::Cluster(name.into(), json(&spec))).await
    }

    /// A change for the `edge` group only: nodes of `default` see nothing new.
    async fn put_edge_listener(&self, port: u16) -> Revision {
        let spec = format!(r#"{{"address":"127.0.0.1:{port}","protocol":"tcp","cluster":"db","group":"edge"}}"#);
        self.put(Resource::Listener(format!("edge-{port}"), json(&spec))).await
    }

    async fn set_weight(&self, w: u32) -> Revision {
        let weights = BTreeMap::from([("api".to_string(), w)]);
        self.store().apply(Change::SetWeights { route: "api".into(), weights }, None).await.unwrap().revision
    }

    async fn node_eventually(&self, id: &str, what: &str, ok: impl Fn(&NodeRecord) -> bool) -> NodeRecord {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let nodes = self.store().nodes().await.unwrap();
            if let Some(n) = nodes.iter().find(|n| n.id == id).filter(|n| ok(n)) {
                return n.clone();
            }
            assert!(tokio::time::Instant::now() < deadline, "node {id} never {what}: {nodes:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn json<T: serde::de::DeserializeOwned>(s: &str) -> T {
    parse_json(s.as_bytes()).unwrap()
}

/// A data-plane node as the control plane sees it.
struct Node {
    tx: mpsc::Sender<pb::NodeMessage>,
    rx: tonic::Streaming<pb::ServerMessage>,
    /// The group's node count the last `FleetShare` said.
    group_nodes: Option<u32>,
}

impl Node {
    async fn connect(addr: SocketAddr, id: &str, group: &str, last_applied: Revision) -> Node {
        let mut client = ConfigDiscoveryClient::connect(format!("http://{addr}")).await.unwrap();
        let (tx, out) = mpsc::channel(16);
        let hello = pb::Hello {
            node_id: id.into(),
            group: group.into(),
            last_applied_revision: last_applied,
            version: "test".into(),
        };
        tx.send(pb::NodeMessage { msg: Some(NodeMsg::Hello(hello)) }).await.unwrap();
        let rx = client.stream(ReceiverStream::new(out)).await.unwrap().into_inner();
        Node { tx, rx, group_nodes: None }
    }

    /// The next snapshot or advance; fleet shares on the way are noted.
    async fn next(&mut self) -> ServerMsg {
        loop {
            match tokio::time::timeout(WAIT, self.rx.message()).await {
                Ok(Ok(Some(pb::ServerMessage { msg: Some(ServerMsg::FleetShare(f)) }))) => {
                    self.group_nodes = Some(f.group_nodes)
                }
                Ok(Ok(Some(pb::ServerMessage { msg: Some(m) }))) => return m,
                other => panic!("expected a message, got {other:?}"),
            }
        }
    }

    /// Reads messages until a `FleetShare` says `n` nodes.
    async fn fleet_share(&mut self, n: u32) {
        while self.group_nodes != Some(n) {
            match tokio::time::timeout(WAIT, self.rx.message()).await {
                Ok(Ok(Some(pb::ServerMessage { msg: Some(ServerMsg::FleetShare(f)) }))) => {
                    self.group_nodes = Some(f.group_nodes)
                }
                Ok(Ok(Some(_))) => {}
                other => panic!("expected a fleet share of {n}, got {other:?}"),
            }
        }
    }

    async fn snapshot(&mut self) -> pb::Snapshot {
        match self.next().await {
            ServerMsg::Snapshot(s) => s,
            ServerMsg::Advance(a) => panic!("expected a snapshot, got an advance to {}", a.revision),
            ServerMsg::FleetShare(_) => unreachable!("next skips fleet shares"),
        }
    }

    async fn ack(&self, s: &pb::Snapshot) {
        let ack = pb::Ack { revision: s.revision, nonce: s.nonce.clone(), errors: vec![] };
        self.tx.send(pb::NodeMessage { msg: Some(NodeMsg::Ack(ack)) }).await.unwrap();
    }

    async fn ack_in_part(&self, s: &pb::Snapshot, errors: Vec<pb::ResourceError>) {
        let ack = pb::Ack { revision: s.revision, nonce: s.nonce.clone(), errors };
        self.tx.send(pb::NodeMessage { msg: Some(NodeMsg::Ack(ack)) }).await.unwrap();
    }

    async fn nack(&self, s: &pb::Snapshot, message: &str) {
        let nack = pb::Nack { revision: s.revision, nonce: s.nonce.clone(), message: message.into() };
        self.tx.send(pb::NodeMessage { msg: Some(NodeMsg::Nack(nack)) }).await.unwrap();
    }
}

#[tokio::test]
async fn hello_gets_the_group_snapshot_and_ack_is_recorded() {
    let h = Harness::start().await;
    h.put_edge_listener(15432).await;
    let rev = h.store().state().revision;
    let mut node = Node::connect(h.cp.grpc_addr(), "n1", "default", 0).await;
    let s = node.snapshot().await;
    assert_eq!(s.revision, rev);
    assert_eq!(s.control_plane_id, "cp-test");
    assert!(!s.nonce.is_empty());
    let cfg = Config::try_from(s.clone()).unwrap();
    cfg.validate().unwrap();
    assert_eq!(cfg, h.store().state().config.for_group("default"));
    assert!(!cfg.clusters.contains_key("db"), "the edge group's cluster is not sent");

    let n = h.node_eventually("n1", "connected", |n| n.connected).await;
    assert_eq!((n.group.as_str(), n.acked_revision), ("default", 0));
    node.ack(&s).await;
    h.node_eventually("n1", "acked", |n| n.acked_revision == rev && n.last_nack.is_none()).await;

    // A change to the group: a new snapshot with a new nonce.
    let rev2 = h.put_cluster("api", 9003).await;
    let s2 = node.snapshot().await;
    assert_eq!(s2.revision, rev2);
    assert_ne!(s2.nonce, s.nonce);

    drop(node);
    h.node_eventually("n1", "disconnected", |n| !n.connected).await;
    h.cp.shutdown().await;
}

#[tokio::test]
async fn nacked_content_is_never_resent() {
    let h = Harness::start().await;
    let mut node = Node::connect(h.cp.grpc_addr(), "n1", "default", 0).await;
    let s1 = node.snapshot().await;
    node.ack(&s1).await;
    h.node_eventually("n1", "acked", |n| n.acked_revision == s1.revision).await;

    let bad = h.set_weight(7).await;
    let s2 = node.snapshot().await;
    assert_eq!(s2.revision, bad);
    node.nack(&s2, "port 18080 in use").await;
    let n = h.node_eventually("n1", "nacked", |n| n.last_nack.is_some()).await;
    assert_eq!(n.last_nack, Some((bad, "port 18080 in use".to_string())));
    assert_eq!(n.acked_revision, s1.revision, "the node kept its previous table");

    // A reconnect does not bring the NACKed content back, and keeps the NACK in the status.
    drop(node);
    h.node_eventually("n1", "disconnected", |n| !n.connected).await;
    let mut node = Node::connect(h.cp.grpc_addr(), "n1", "default", s1.revision).await;
    let n = h.node_eventually("n1", "reconnected", |n| n.connected).await;
    assert_eq!(n.last_nack, Some((bad, "port 18080 in use".to_string())));

    // Same content for this group (another group changed): neither the NACKed revision nor this one.
    h.put_edge_listener(15432).await;
    // A real change: the next message is its snapshot, so nothing was sent in between.
    let fixed = h.set_weight(8).await;
    let s3 = node.snapshot().await;
    assert_eq!(s3.revision, fixed);
    node.ack(&s3).await;
    let n = h.node_eventually("n1", "acked the fix", |n| n.acked_revision == fixed).await;
    assert_eq!(n.last_nack, None, "an installed revision clears the NACK");

    // Going back to the NACKed content is not resent either, even at a new revision.
    h.set_weight(7).await;
    let later = h.set_weight(9).await;
    assert_eq!(node.snapshot().await.revision, later);
    h.cp.shutdown().await;
}

#[tokio::test]
async fn resources_a_node_left_out_are_recorded_until_it_applies_cleanly() {
    let h = Harness::start().await;
    let mut node = Node::connect(h.cp.grpc_addr(), "n1", "default", 0).await;
    let s1 = node.snapshot().await;
    let taken = pb::ResourceError { kind: "listener".into(), name: "web".into(), message: "port in use".into() };
    node.ack_in_part(&s1, vec![taken; 500]).await;
    let n = h.node_eventually("n1", "acked in part", |n| n.acked_revision == s1.revision).await;
    assert_eq!(n.resource_errors.len(), 100, "bounded whatever a node sends");
    assert_eq!((n.resource_errors[0].name.as_str(), n.resource_errors[0].message.as_str()), ("web", "port in use"));

    // Later revisions keep flowing to the node, and a clean Ack clears what it reported.
    let next = h.set_weight(4).await;
    let s2 = node.snapshot().await;
    assert_eq!(s2.revision, next);
    node.ack(&s2).await;
    let n = h.node_eventually("n1", "acked cleanly", |n| n.acked_revision == next).await;
    assert!(n.resource_errors.is_empty(), "{n:?}");
    h.cp.shutdown().await;
}

#[tokio::test]
async fn reconnect_with_the_current_revision_gets_no_resend() {
    let h = Harness::start().await;
    let mut node = Node::connect(h.cp.grpc_addr(), "n1", "default", 0).await;
    let s = node.snapshot().await;
    node.ack(&s).await;
    h.node_eventually("n1", "acked", |n| n.acked_revision == s.revision).await;
    drop(node);
    h.node_eventually("n1", "disconnected", |n| !n.connected).await;

    let mut node = Node::connect(h.cp.grpc_addr(), "n1", "default", s.revision).await;
    h.node_eventually("n1", "reconnected", |n| n.connected).await;
    let next = h.set_weight(3).await;
    assert_eq!(node.snapshot().await.revision, next, "the first message is the new write, not a resend");
    h.cp.shutdown().await;
}

#[tokio::test]
async fn other_groups_writes_advance_without_resend() {
    let h = Harness::start().await;
    let mut node = Node::connect(h.cp.grpc_addr(), "n1", "default", 0).await;
    let s = node.snapshot().await;
    node.ack(&s).await;
    let rev = h.put_edge_listener(15432).await;
    match node.next().await {
        ServerMsg::Advance(a) => assert_eq!(a.revision, rev),
        ServerMsg::Snapshot(s) => panic!("resent unchanged content at {}", s.revision),
        ServerMsg::FleetShare(_) => unreachable!("next skips fleet shares"),
    }
    h.node_eventually("n1", "advanced", |n| n.acked_revision == rev).await;
    h.cp.shutdown().await;
}

#[tokio::test]
async fn a_burst_of_writes_is_coalesced_into_the_newest() {
    let h = Harness::start().await;
    let mut node = Node::connect(h.cp.grpc_addr(), "n1", "default", 0).await;
    let s = node.snapshot().await;
    node.ack(&s).await;
    h.node_eventually("n1", "acked", |n| n.acked_revision == s.revision).await;

    let store = h.store().clone();
    let burst = tokio::spawn(async move {
        // From 2: the route starts at weight 1, and an unchanged weight would be an advance.
        for w in 2..=101 {
            let weights = BTreeMap::from([("api".to_string(), w)]);
            store.apply(Change::SetWeights { route: "api".into(), weights }, None).await.unwrap();
        }
    });
    // The node is slow: it holds its first ACK until the burst is over.
    let first = node.snapshot().await;
    burst.await.unwrap();
    let last_rev = h.store().state().revision;
    let mut received = vec![first.revision];
    node.ack(&first).await;
    while *received.last().unwrap() != last_rev {
        let s = node.snapshot().await;
        received.push(s.revision);
        node.ack(&s).await;
        assert!(received.len() <= 100, "not coalesced: {received:?}");
    }
    assert!(received.len() <= 2, "expected at most two snapshots, got {received:?}");
    let n = h.node_eventually("n1", "synced", |n| n.acked_revision == last_rev).await;
    assert!(n.connected);
    h.cp.shutdown().await;
}

#[tokio::test]
async fn a_stream_must_start_with_hello() {
    let h = Harness::start().await;
    let mut client = ConfigDiscoveryClient::connect(format!("http://{}", h.cp.grpc_addr())).await.unwrap();
    let (tx, out) = mpsc::channel(4);
    tx.send(pb::NodeMessage { msg: Some(NodeMsg::Ack(pb::Ack { revision: 1, nonce: "x".into(), errors: vec![] })) })
        .await
        .unwrap();
    let mut rx = client.stream(ReceiverStream::new(out)).await.unwrap().into_inner();
    let status = tokio::time::timeout(WAIT, rx.message()).await.unwrap().unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    h.cp.shutdown().await;
}

#[tokio::test]
async fn shutdown_marks_connected_nodes_disconnected() {
    let h = Harness::start().await;
    let mut node = Node::connect(h.cp.grpc_addr(), "n1", "default", 0).await;
    node.snapshot().await;
    h.node_eventually("n1", "connected", |n| n.connected).await;
    let store = h.store().clone();
    let dir = h._dir;
    let url = format!("sqlite://{}", dir.path().join("sluice.db").display());
    tokio::time::timeout(WAIT, h.cp.shutdown()).await.expect("shutdown is bounded");
    drop(store);
    let reopened = Store::open(&url).await.unwrap();
    let nodes = reopened.nodes().await.unwrap();
    assert!(nodes.iter().all(|n| !n.connected), "{nodes:?}");
}

#[tokio::test]
async fn nodes_of_one_group_get_the_same_content_with_their_own_nonce() {
    let h = Harness::start().await;
    let mut a = Node::connect(h.cp.grpc_addr(), "a", "default", 0).await;
    let mut b = Node::connect(h.cp.grpc_addr(), "b", "default", 0).await;
    let (sa, sb) = (a.snapshot().await, b.snapshot().await);
    assert_eq!(sa.revision, sb.revision);
    assert_ne!(sa.nonce, sb.nonce);
    assert_eq!(Config::try_from(sa.clone()).unwrap(), Config::try_from(sb.clone()).unwrap());
    // An ACK carrying another node's nonce is not an ACK.
    a.ack(&sb).await;
    b.ack(&sb).await;
    h.node_eventually("b", "acked", |n| n.acked_revision == sb.revision).await;
    let next = h.set_weight(4).await;
    assert_eq!(b.snapshot().await.revision, next);
    a.ack(&sa).await;
    assert_eq!(a.snapshot().await.revision, next, "a's own ACK released the next snapshot");
    h.cp.shutdown().await;
}

#[tokio::test]
async fn nodes_learn_how_many_share_their_group() {
    let h = Harness::start().await;
    let mut a = Node::connect(h.cp.grpc_addr(), "a", "default", 0).await;
    let s = a.snapshot().await;
    a.ack(&s).await;
    a.fleet_share(1).await;
    let mut b = Node::connect(h.cp.grpc_addr(), "b", "default", 0).await;
    let s = b.snapshot().await;
    b.ack(&s).await;
    b.fleet_share(2).await;
    // The first node hears of the second at its next status tick.
    a.fleet_share(2).await;
    let mut other = Node::connect(h.cp.grpc_addr(), "c", "edge", 0).await;
    let s = other.snapshot().await;
    other.ack(&s).await;
    other.fleet_share(1).await;
    h.cp.shutdown().await;
}
