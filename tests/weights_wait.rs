//! `sluice weights --wait`: returns once every node acknowledged, fails at once, non-zero, when a
//! node could not apply the revision or part of it.

use std::time::Duration;

use serde_json::{json, Value};
use sluice_e2e::{cli, eventually, free_addr, http_get, HttpBackend, Sluice};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_wait_returns_after_the_dev_node_acks() {
    let dev = Sluice::dev(BIN, &[]).await;
    let api = dev.api();
    let (blue, green) = (HttpBackend::start("blue").await, HttpBackend::start("green").await);
    let web = free_addr();
    api.put("clusters", "blue", json!({"endpoints": [{"address": blue.address.to_string()}]})).await;
    api.put("clusters", "green", json!({"endpoints": [{"address": green.address.to_string()}]})).await;
    api.put("listeners", "web", json!({"address": web.to_string(), "protocol": "http"})).await;
    api.put(
        "routes",
        "api",
        json!({"listener": "web", "match": {"path": {"prefix": "/"}},
               "backends": [{"cluster": "blue", "weight": 1}, {"cluster": "green", "weight": 0}]}),
    )
    .await;
    eventually(Duration::from_secs(30), "blue to answer through the proxy", || async move {
        (http_get(web, "example.com", "/").await? == (200, "blue\n".to_string())).then_some(())
    })
    .await;

    let out =
        cli(BIN, dev.api_addr.unwrap(), &["weights", "api", "blue=0", "green=100", "--wait", "--timeout", "30s"]).await;
    assert!(out.success(), "{out:?}");
    assert!(out.stdout.contains("acknowledged by 1 node(s): dev"), "{out:?}");
    let rev = api.revision().await.unwrap();
    let node = api.node("dev").await.unwrap();
    assert!(node["acked_revision"].as_u64().unwrap() >= rev, "{node}");

    // Acknowledged means installed: every request now goes to green.
    for _ in 0..5 {
        assert_eq!(http_get(web, "example.com", "/").await, Some((200, "green\n".to_string())));
    }

    let out = cli(BIN, dev.api_addr.unwrap(), &["status"]).await;
    assert!(out.success(), "{out:?}");
    let row = out.stdout.lines().find(|l| l.starts_with("dev ")).unwrap_or_else(|| panic!("{out:?}"));
    assert!(row.contains("synced") && row.contains("default"), "{row}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_wait_fails_at_once_when_a_node_leaves_a_resource_out() {
    let cp = Sluice::control_plane(BIN).await;
    let api = cp.api();
    let _proxy = Sluice::proxy(BIN, cp.grpc_addr.unwrap(), "edge-1").await;
    eventually(Duration::from_secs(30), "node edge-1 to connect", || {
        let api = api.clone();
        async move { api.node("edge-1").await.filter(|n| n["state"] != "disconnected") }
    })
    .await;

    // The listener's port is held here, so the node cannot bind it: it installs the rest.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = HttpBackend::start("b").await;
    api.put("clusters", "b", json!({"endpoints": [{"address": backend.address.to_string()}]})).await;
    api.put("clusters", "c", json!({"endpoints": [{"address": backend.address.to_string()}]})).await;
    api.put("listeners", "web", json!({"address": taken.local_addr().unwrap().to_string(), "protocol": "http"})).await;
    api.put(
        "routes",
        "r",
        json!({"listener": "web", "backends": [{"cluster": "b", "weight": 1}, {"cluster": "c", "weight": 1}]}),
    )
    .await;

    let started = std::time::Instant::now();
    let out = cli(BIN, cp.api_addr.unwrap(), &["weights", "r", "b=1", "c=3", "--wait", "--timeout", "30s"]).await;
    assert_eq!(out.code, Some(3), "{out:?}");
    let taken_addr = taken.local_addr().unwrap();
    assert!(
        out.stderr.contains("node edge-1 installed revision")
            && out.stderr.contains(&format!("without: listener web: cannot bind {taken_addr}")),
        "names the node, the resource and the reason: {out:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(20), "fails once the node answers, not at the timeout");

    let node: Value = api.node("edge-1").await.unwrap();
    assert_eq!(node["state"], "degraded", "{node}");
    let out = cli(BIN, cp.api_addr.unwrap(), &["status"]).await;
    let row = out.stdout.lines().find(|l| l.starts_with("edge-1 ")).unwrap_or_else(|| panic!("{out:?}"));
    assert!(row.contains("degraded") && row.contains("listener web: cannot bind"), "{row}");
    drop(taken);
}
