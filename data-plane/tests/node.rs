//! A node and its control plane: install + ACK (in part when a port is taken on the node), NACK
//! on invalid snapshots with the old table serving,
//! readiness, revision advance, failover between URLs, listener removal, the snapshot cache, TCP.

mod support;

use std::net::SocketAddr;

use serde_json::json;
use sluice_shared::proto::v1 as pb;
use sluice_shared::Config;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn one_route(listener: SocketAddr, backend: SocketAddr) -> Config {
    config(json!({
        "clusters": {"app": {"endpoints": [{"address": backend.to_string()}]}},
        "listeners": {"main": {"address": listener.to_string(), "protocol": "http"}},
        "routes": {"app": {"listener": "main", "backends": [{"cluster": "app"}]}}
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_is_left_out_and_an_invalid_snapshot_nacked() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let cp = ControlPlane::start(None).await;
    let node = start_node(vec![cp.url()], None).await;
    assert_eq!(admin(&node, "/healthz").await.status, 200);
    assert_eq!(admin(&node, "/readyz").await.status, 503);
    let hello = eventually("hello", || async {
        cp.received().into_iter().find_map(|m| match m {
            pb::node_message::Msg::Hello(h) => Some(h),
            _ => None,
        })
    })
    .await;
    assert_eq!(
        (hello.node_id.as_str(), hello.group.as_str(), hello.last_applied_revision),
        ("test-node", "default", 0)
    );

    let main = free_addr();
    cp.send_snapshot(snapshot(&one_route(main, a.addr), 1)).await;
    match cp.reply_to(1).await {
        pb::node_message::Msg::Ack(ack) => assert_eq!(ack.nonce, "nonce-1"),
        other => panic!("expected an ack, got {other:?}"),
    }
    assert_eq!(admin(&node, "/readyz").await.status, 200);
    assert!(get(main, "x", "/").await.body.contains("backend=a"));

    // Revision 2 points the route at b and adds a listener on a taken port: everything but that
    // listener is installed, and the Ack says what was left out and why.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let mut cfg = one_route(main, b.addr);
    cfg.listeners.insert(
        "extra".into(),
        config(json!({"listeners": {"x": {"address": taken_addr.to_string(), "protocol": "http"}}})).listeners["x"]
            .clone(),
    );
    cp.send_snapshot(snapshot(&cfg, 2)).await;
    match cp.reply_to(2).await {
        pb::node_message::Msg::Ack(a) => {
            assert_eq!(a.nonce, "nonce-2");
            assert_eq!(a.errors.len(), 1, "{:?}", a.errors);
            let e = &a.errors[0];
            assert_eq!((e.kind.as_str(), e.name.as_str()), ("listener", "extra"));
            assert!(e.message.contains(&format!("cannot bind {taken_addr}")), "{}", e.message);
        }
        other => panic!("expected an ack, got {other:?}"),
    }
    assert!(get(main, "x", "/").await.body.contains("backend=b"), "the rest of revision 2 serves");
    assert_eq!(node.revision(), 2);

    // An invalid snapshot (route to a missing cluster) is refused with the field at fault.
    let mut bad = one_route(main, b.addr);
    bad.routes.get_mut("app").unwrap().backends[0].cluster = "missing".into();
    cp.send_snapshot(snapshot(&bad, 3)).await;
    match cp.reply_to(3).await {
        pb::node_message::Msg::Nack(n) => assert!(n.message.contains("routes.app"), "{}", n.message),
        other => panic!("expected a nack, got {other:?}"),
    }

    assert!(get(main, "x", "/").await.body.contains("backend=b"), "revision 2 keeps serving");

    // Once the port is free, the next snapshot binds it; a listener moved to a taken port keeps
    // its previous address.
    drop(taken);
    cp.send_snapshot(snapshot(&cfg, 4)).await;
    match cp.reply_to(4).await {
        pb::node_message::Msg::Ack(a) => assert!(a.errors.is_empty(), "{:?}", a.errors),
        other => panic!("expected an ack, got {other:?}"),
    }
    assert_eq!(get(taken_addr, "x", "/").await.status, 404, "the listener that was left out now serves");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut moved = one_route(taken.local_addr().unwrap(), b.addr);
    moved.listeners.insert("extra".into(), cfg.listeners["extra"].clone());
    cp.send_snapshot(snapshot(&moved, 5)).await;
    match cp.reply_to(5).await {
        pb::node_message::Msg::Ack(a) => {
            let what: Vec<_> = a.errors.iter().map(|e| (e.kind.as_str(), e.name.as_str())).collect();
            assert_eq!(what, [("listener", "main")]);
            assert!(
                a.errors[0].message.contains(&format!("still serving its previous address {main}")),
                "{:?}",
                a.errors
            );
        }
        other => panic!("expected an ack, got {other:?}"),
    }
    assert!(get(main, "x", "/").await.body.contains("backend=b"), "the moved listener serves where it was");
    drop(taken);
    cp.send(pb::server_message::Msg::Advance(pb::RevisionAdvance { revision: 9 })).await;
    eventually("advance", || async { (node.revision() == 9).then_some(()) }).await;
    let metrics = admin(&node, "/metrics").await.body;
    assert!(metrics.contains("sluice_config_applies_total 4"), "{metrics}");
    assert!(metrics.contains("sluice_config_rejects_total 1"), "{metrics}");
    assert!(metrics.contains("sluice_config_revision 9"), "{metrics}");
    node.shutdown().await;
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_listener_stops_accepting_and_fails_over_between_urls() {
    let a = Backend::start("a").await;
    let (main, other) = (free_addr(), free_addr());
    let mut cfg = one_route(main, a.addr);
    cfg.listeners.insert(
        "other".into(),
        config(json!({"listeners": {"x": {"address": other.to_string(), "protocol": "http"}}})).listeners["x"].clone(),
    );
    let cp = ControlPlane::start(Some(snapshot(&cfg, 1))).await;
    // The first URL answers nothing: the node moves on to the second.
    let dead = format!("http://{}", free_addr());
    let node = start_node(vec![dead, cp.url()], None).await;
    assert!(matches!(cp.reply_to(1).await, pb::node_message::Msg::Ack(_)));
    assert_eq!(get(other, "x", "/").await.status, 404, "listener without routes answers 404");

    cp.send_snapshot(snapshot(&one_route(main, a.addr), 2)).await;
    assert!(matches!(cp.reply_to(2).await, pb::node_message::Msg::Ack(_)));
    eventually("removed listener closed", || async {
        tokio::net::TcpStream::connect(other).await.is_err().then_some(())
    })
    .await;
    assert_eq!(get(main, "x", "/").await.status, 200);
    node.shutdown().await;
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boots_from_the_cache_without_a_control_plane() {
    let dir = tempfile::tempdir().unwrap();
    let a = Backend::start("a").await;
    let main = free_addr();
    let cp = ControlPlane::start(Some(snapshot(&one_route(main, a.addr), 5))).await;
    let node = start_node(vec![cp.url()], Some(dir.path().to_path_buf())).await;
    assert!(matches!(cp.reply_to(5).await, pb::node_message::Msg::Ack(_)));
    node.shutdown().await;
    cp.stop().await;

    // Restarted with no control plane reachable: ready at once from the cache, serving.
    let unreachable = format!("http://{}", free_addr());
    let node = start_node(vec![unreachable], Some(dir.path().to_path_buf())).await;
    assert_eq!(admin(&node, "/readyz").await.status, 200);
    assert_eq!(node.revision(), 5);
    let r = eventually("cached listener", || async { try_get(main, "x", "/").await }).await;
    assert!(r.body.contains("backend=a"), "{}", r.body);
    node.shutdown().await;

    // The next control plane hears the cached revision in the Hello.
    let cp = ControlPlane::start(None).await;
    let node = start_node(vec![cp.url()], Some(dir.path().to_path_buf())).await;
    let hello = eventually("hello", || async {
        cp.received().into_iter().find_map(|m| match m {
            pb::node_message::Msg::Hello(h) => Some(h),
            _ => None,
        })
    })
    .await;
    assert_eq!(hello.last_applied_revision, 5);
    node.shutdown().await;
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_cache_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("snapshot-default.bin"), b"SLUICE-SNAPSHOT 1 10 0000000000000000\n0123456789")
        .unwrap();
    let node = start_node(vec![], Some(dir.path().to_path_buf())).await;
    assert_eq!(admin(&node, "/healthz").await.status, 200);
    assert_eq!(admin(&node, "/readyz").await.status, 503);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_listener_forwards_bytes_both_ways() {
    let (echo, _task) = echo_backend().await;
    let listener = free_addr();
    let (dead, _dead) = refusing_addr();
    let cfg = config(json!({
        "clusters": {"echo": {"endpoints": [
            {"address": dead.to_string()},
            {"address": echo.to_string()}
        ]}},
        "listeners": {"pg": {"address": listener.to_string(), "protocol": "tcp", "cluster": "echo"}}
    }));
    let cp = ControlPlane::start(Some(snapshot(&cfg, 1))).await;
    let node = start_node(vec![cp.url()], None).await;
    assert!(matches!(cp.reply_to(1).await, pb::node_message::Msg::Ack(_)));
    // Several connections: round robin hits the dead endpoint too, and moves on to the live one.
    for i in 0..4 {
        let mut s = tokio::net::TcpStream::connect(listener).await.unwrap();
        let msg = format!("ping {i}");
        s.write_all(msg.as_bytes()).await.unwrap();
        s.shutdown().await.unwrap();
        let mut back = String::new();
        s.read_to_string(&mut back).await.unwrap();
        assert_eq!(back, msg);
    }
    node.shutdown().await;
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_request_survives_its_listener_being_removed() {
    let a = Backend::start("a").await;
    let main = free_addr();
    let cp = ControlPlane::start(Some(snapshot(&one_route(main, a.addr), 1))).await;
    let node = start_node(vec![cp.url()], None).await;
    assert!(matches!(cp.reply_to(1).await, pb::node_message::Msg::Ack(_)));
    eventually("listener up", || async { try_get(main, "x", "/").await }).await;
    let before = a.hits();

    // `/slow` takes 2 s at the backend; the listener goes away meanwhile.
    let in_flight = tokio::spawn(async move { get(main, "x", "/slow").await });
    eventually("request at the backend", || async { (a.hits() > before).then_some(()) }).await;
    let empty = config(json!({"clusters": {"app": {"endpoints": [{"address": a.addr.to_string()}]}}}));
    cp.send_snapshot(snapshot(&empty, 2)).await;
    assert!(matches!(cp.reply_to(2).await, pb::node_message::Msg::Ack(_)));
    eventually("listener closed", || async { tokio::net::TcpStream::connect(main).await.is_err().then_some(()) }).await;

    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.raw);
    assert!(r.body.contains("backend=a"));
    node.shutdown().await;
    cp.stop().await;
}
