//! The fleet without its control plane (DESIGN §4): killed (SIGKILL) under load with no failed
//! request, a node restarted meanwhile boots from its --cache-dir and serves, and once the control
//! plane is back the nodes resync (new writes reach them, acked_revision catches up).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sluice_e2e::l7::{control_plane_at, proxy_in_group, readyz, spawn_load, tempdir, wait_acked, Backend, KeepAlive};
use sluice_e2e::{eventually, free_addr};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_killed_under_load_node_restarted_from_cache_then_resync() {
    let root = tempdir();
    let db = root.path().join("cp.db");
    let (api_addr, grpc) = (free_addr(), free_addr());
    let cp = control_plane_at(BIN, &db, api_addr, grpc).await;
    let api = cp.api();
    let (cache_a, cache_b) = (root.path().join("cache-a"), root.path().join("cache-b"));
    let node_a = proxy_in_group(BIN, &[grpc], "node-a", "group-a", &cache_a).await;
    let _node_b = proxy_in_group(BIN, &[grpc], "node-b", "group-b", &cache_b).await;

    let (blue, green) = (Backend::start("blue").await, Backend::start("green").await);
    api.put("clusters", "blue", json!({"endpoints": [{"address": blue.address.to_string()}]})).await;
    api.put("clusters", "green", json!({"endpoints": [{"address": green.address.to_string()}]})).await;
    let (web_a, web_b) = (free_addr(), free_addr());
    for (listener, addr, group, route) in [("web-a", web_a, "group-a", "r-a"), ("web-b", web_b, "group-b", "r-b")] {
        api.put("listeners", listener, json!({"address": addr.to_string(), "protocol": "http", "group": group})).await;
        api.put(
            "routes",
            route,
            json!({"listener": listener, "backends": [{"cluster": "blue", "weight": 1}, {"cluster": "green", "weight": 0}]}),
        )
        .await;
    }
    let before_kill = api.revision().await.unwrap();
    wait_acked(&api, &["node-a", "node-b"], before_kill).await;

    // Load on both nodes, then the control plane is killed in the middle of it.
    let stop = Arc::new(AtomicBool::new(false));
    let load = spawn_load(&[web_a, web_b], "r.test", "/", 4, 5_000, Duration::from_secs(30), stop.clone());
    let start = blue.hits();
    eventually(Duration::from_secs(10), "the load to get going", || async {
        (blue.hits() > start + 200).then_some(())
    })
    .await;
    drop(cp); // SIGKILL
    eventually(Duration::from_secs(5), "the control plane to be gone", || {
        let api = api.clone();
        async move { (!api.healthy().await).then_some(()) }
    })
    .await;
    let at_kill = blue.hits();
    eventually(Duration::from_secs(10), "the nodes to keep serving without it", || async {
        (blue.hits() > at_kill + 500).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let report = load.await.unwrap();
    eprintln!(
        "control plane killed under load: {} ok, {} failed, {} connections",
        report.ok, report.failed, report.connects
    );
    assert_eq!(report.failed, 0, "failed requests while the control plane died: {:?}", report.failures);
    assert_eq!(report.count("green"), 0, "{report:?}");

    // A node restarted while the control plane is down boots from its cache and serves.
    drop(node_a);
    assert!(cache_a.read_dir().map(|mut d| d.next().is_some()).unwrap_or(false), "node-a cached nothing");
    let node_a = proxy_in_group(BIN, &[grpc], "node-a", "group-a", &cache_a).await;
    let admin_a = node_a.admin_addr.unwrap();
    eventually(Duration::from_secs(10), "the restarted node to be ready from its cache", || async move {
        readyz(admin_a).await.then_some(())
    })
    .await;
    let mut ca = KeepAlive::new(web_a);
    for _ in 0..5 {
        assert_eq!(ca.get("r.test", "/").await, (200, "blue".to_string()), "node-a from its cache");
    }

    // The control plane returns (same database, same addresses): the nodes resync.
    let cp = control_plane_at(BIN, &db, api_addr, grpc).await;
    let api = cp.api();
    assert_eq!(api.revision().await, Some(before_kill));
    let mut shifted = 0;
    for route in ["r-a", "r-b"] {
        let body = json!({"weights": {"blue": 0, "green": 1}});
        let (st, body) = api.call(reqwest::Method::POST, &format!("/v1/routes/{route}/weights"), Some(&body)).await;
        assert!(st.is_success(), "{st} {body}");
        shifted = body["revision"].as_u64().unwrap();
    }
    wait_acked(&api, &["node-a", "node-b"], shifted).await;
    for id in ["node-a", "node-b"] {
        let node = api.node(id).await.unwrap();
        assert_eq!(node["state"], "synced", "{node}");
        assert_eq!(node["acked_revision"].as_u64(), Some(shifted), "{node}");
    }
    let mut cb = KeepAlive::new(web_b);
    for _ in 0..5 {
        assert_eq!(ca.get("r.test", "/").await, (200, "green".to_string()), "node-a after the resync");
        assert_eq!(cb.get("r.test", "/").await, (200, "green".to_string()), "node-b after the resync");
    }
}
