//! Config changes on running nodes (DESIGN §4, §5): no failed request while weights, routes and
//! endpoints change dozens of times under load; listeners added and removed at runtime; a port
//! taken on the node leaves only that listener out, visible on GET /v1/nodes, while every other
//! change keeps flowing.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use sluice_e2e::l7::{proxy_in_group, readyz, spawn_load, tempdir, wait_acked, wait_connected, Backend, KeepAlive};
use sluice_e2e::{eventually, free_addr, Api, Sluice};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

async fn put_listener(api: &Api, name: &str, addr: SocketAddr, group: &str) -> u64 {
    api.put("listeners", name, json!({"address": addr.to_string(), "protocol": "http", "group": group})).await
}

async fn delete(api: &Api, kind: &str, name: &str) -> u64 {
    let (st, body) = api.call(reqwest::Method::DELETE, &format!("/v1/{kind}/{name}"), None).await;
    assert!(st.is_success(), "DELETE /v1/{kind}/{name}: {st} {body}");
    body["revision"].as_u64().unwrap_or_else(|| panic!("no revision in {body}"))
}

async fn shift(api: &Api, route: &str, blue: u32, green: u32) -> u64 {
    let body = json!({"weights": {"blue": blue, "green": green}});
    let (st, body) = api.call(reqwest::Method::POST, &format!("/v1/routes/{route}/weights"), Some(&body)).await;
    assert!(st.is_success(), "weights of {route}: {st} {body}");
    body["revision"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_failed_request_while_weights_routes_and_endpoints_change_under_load() {
    let cp = Sluice::control_plane(BIN).await;
    let api = cp.api();
    let cache = tempdir();
    let grpc = [cp.grpc_addr.unwrap()];
    let _a = proxy_in_group(BIN, &grpc, "node-a", "group-a", &cache.path().join("a")).await;
    let _b = proxy_in_group(BIN, &grpc, "node-b", "group-b", &cache.path().join("b")).await;
    let (blue1, blue2, green) =
        (Backend::start("blue").await, Backend::start("blue").await, Backend::start("green").await);
    api.put("clusters", "blue", json!({"endpoints": [{"address": blue1.address.to_string()}]})).await;
    api.put("clusters", "green", json!({"endpoints": [{"address": green.address.to_string()}]})).await;
    let (web_a, web_b) = (free_addr(), free_addr());
    put_listener(&api, "web-a", web_a, "group-a").await;
    put_listener(&api, "web-b", web_b, "group-b").await;
    let live = |listener: &str, timeout_ms: u64| {
        json!({"listener": listener, "timeout_ms": timeout_ms,
               "backends": [{"cluster": "blue", "weight": 50}, {"cluster": "green", "weight": 50}]})
    };
    api.put("routes", "live-a", live("web-a", 10_000)).await;
    api.put("routes", "live-b", live("web-b", 10_000)).await;
    let rev = api.revision().await.unwrap();
    wait_acked(&api, &["node-a", "node-b"], rev).await;

    // 4 keep-alive clients per node, bounded in count and time; stopped once the changes are done.
    let stop = Arc::new(AtomicBool::new(false));
    let load = spawn_load(&[web_a, web_b], "load.test", "/", 4, 5_000, Duration::from_secs(45), stop.clone());
    let hits = || blue1.hits() + blue2.hits() + green.hits();
    let before = hits();
    eventually(Duration::from_secs(10), "the load to get going", || async { (hits() > before + 200).then_some(()) })
        .await;

    let changes = 48;
    for i in 0..changes {
        let k = 1 + (i * 37) % 99; // never all-zero weights
        let rev = match i % 6 {
            0 => {
                shift(&api, "live-a", k, 100 - k).await;
                shift(&api, "live-b", 100 - k, k).await
            }
            1 => {
                // A new route elsewhere on both listeners, and the previous one gone.
                for (l, suffix) in [("web-a", "a"), ("web-b", "b")] {
                    let spec = json!({"listener": l, "match": {"path": {"prefix": format!("/extra-{i}/")}},
                                      "backends": [{"cluster": "green"}]});
                    api.put("routes", &format!("extra-{i}-{suffix}"), spec).await;
                    if i >= 6 {
                        delete(&api, "routes", &format!("extra-{}-{suffix}", i - 6)).await;
                    }
                }
                api.revision().await.unwrap()
            }
            2 => {
                // Endpoints come and go (both stay up, so nothing may fail).
                let eps = if i % 12 == 2 { vec![&blue1, &blue2] } else { vec![&blue2] };
                let eps: Vec<Value> = eps.iter().map(|b| json!({"address": b.address.to_string()})).collect();
                api.put("clusters", "blue", json!({"endpoints": eps})).await
            }
            3 => {
                // The live routes themselves are replaced (weights reset, timeout changed).
                api.put("routes", "live-a", live("web-a", 10_000 + i as u64)).await;
                api.put("routes", "live-b", live("web-b", 10_000 + i as u64)).await
            }
            4 => {
                // A higher-priority route takes over "/" on node a, then goes again.
                if i % 12 == 4 {
                    api.put(
                        "routes",
                        "takeover-a",
                        json!({"listener": "web-a", "priority": 5, "match": {"path": {"prefix": "/"}},
                               "backends": [{"cluster": "green"}]}),
                    )
                    .await
                } else {
                    delete(&api, "routes", "takeover-a").await
                }
            }
            _ => shift(&api, "live-a", 100 - k, k).await,
        };
        // Let each few changes land before the next ones, so the nodes install many revisions.
        if i % 3 == 2 {
            wait_acked(&api, &["node-a", "node-b"], rev).await;
        }
    }
    let rev = api.revision().await.unwrap();
    wait_acked(&api, &["node-a", "node-b"], rev).await;
    let during = hits() - before;
    stop.store(true, Ordering::Relaxed);
    let report = load.await.unwrap();
    eprintln!(
        "{changes} changes under load: {} ok, {} failed, {} connections, bodies {:?}",
        report.ok, report.failed, report.connects, report.bodies
    );
    assert_eq!(report.failed, 0, "failed requests during {changes} changes: {:?}", report.failures);
    assert!(report.ok >= 500 && during >= 500, "too little load to mean anything: {report:?}");
    assert!(report.count("blue") > 0 && report.count("green") > 0, "{report:?}");
    assert!(report.connects <= 8 + 8, "the proxy closed keep-alive connections: {report:?}");
    for id in ["node-a", "node-b"] {
        assert_eq!(api.node(id).await.unwrap()["state"], "synced");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_added_and_removed_at_runtime() {
    let cp = Sluice::control_plane(BIN).await;
    let api = cp.api();
    let cache = tempdir();
    let _p = proxy_in_group(BIN, &[cp.grpc_addr.unwrap()], "edge-1", "edge", cache.path()).await;
    let one = Backend::start("one").await;
    api.put("clusters", "one", json!({"endpoints": [{"address": one.address.to_string()}]})).await;
    let web = free_addr();
    put_listener(&api, "web", web, "edge").await;
    let rev = api.put("routes", "r-web", json!({"listener": "web", "backends": [{"cluster": "one"}]})).await;
    wait_acked(&api, &["edge-1"], rev).await;
    let mut c = KeepAlive::new(web);
    assert_eq!(c.get("a.test", "/").await, (200, "one".to_string()));

    let slow = Backend::with_delay("slow", Duration::from_millis(1500)).await;
    api.put("clusters", "slow", json!({"endpoints": [{"address": slow.address.to_string()}]})).await;
    let second = free_addr();
    for round in 0..2u64 {
        // Added: the new port serves as soon as the node acknowledged.
        put_listener(&api, "second", second, "edge").await;
        api.put("routes", "r-second", json!({"listener": "second", "backends": [{"cluster": "one"}]})).await;
        let rev = api
            .put(
                "routes",
                "r-slow",
                json!({"listener": "second", "match": {"path": {"prefix": "/slow"}}, "backends": [{"cluster": "slow"}]}),
            )
            .await;
        wait_acked(&api, &["edge-1"], rev).await;
        let mut s = KeepAlive::new(second);
        assert_eq!(s.get("a.test", "/").await, (200, "one".to_string()), "round {round}");

        // A request in flight on the listener when it is removed still gets its answer.
        let in_flight = tokio::spawn(async move { KeepAlive::new(second).get("a.test", "/slow").await });
        eventually(Duration::from_secs(10), "the slow request to reach its backend", || async {
            (slow.hits() > round).then_some(())
        })
        .await;

        // Removed: the port stops accepting; the other listener is untouched.
        delete(&api, "routes", "r-second").await;
        delete(&api, "routes", "r-slow").await;
        let rev = delete(&api, "listeners", "second").await;
        wait_acked(&api, &["edge-1"], rev).await;
        eventually(Duration::from_secs(10), "the removed listener to refuse connections", || async {
            tokio::net::TcpStream::connect(second).await.is_err().then_some(())
        })
        .await;
        assert_eq!(c.get("a.test", "/").await, (200, "one".to_string()), "round {round}");
        assert_eq!(in_flight.await.unwrap(), (200, "slow".to_string()), "the in-flight request, round {round}");
    }
    assert_eq!(c.connects, 1, "the untouched listener kept its keep-alive connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_taken_on_the_node_blocks_only_its_listener() {
    let cp = Sluice::control_plane(BIN).await;
    let api = cp.api();
    let cache = tempdir();
    let grpc = [cp.grpc_addr.unwrap()];
    let p = proxy_in_group(BIN, &grpc, "edge-1", "edge", &cache.path().join("edge")).await;
    let _other = proxy_in_group(BIN, &grpc, "other-1", "other", &cache.path().join("other")).await;
    wait_connected(&api, "other-1").await;
    let one = Backend::start("one").await;
    api.put("clusters", "one", json!({"endpoints": [{"address": one.address.to_string()}]})).await;
    let web = free_addr();
    put_listener(&api, "web", web, "edge").await;
    let good = api
        .put(
            "routes",
            "old",
            json!({"listener": "web", "match": {"path": {"prefix": "/old/"}}, "backends": [{"cluster": "one"}]}),
        )
        .await;
    wait_acked(&api, &["edge-1", "other-1"], good).await;

    // Held here (without SO_REUSEPORT), so the node cannot bind it.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let bad = put_listener(&api, "taken", taken_addr, "edge").await;
    let left_out = |revision: u64| {
        let api = api.clone();
        async move {
            let n = api.node("edge-1").await?;
            (n["acked_revision"].as_u64()? >= revision && n["state"] == "degraded").then_some(n)
        }
    };
    let node: Value = eventually(Duration::from_secs(30), "edge-1 to leave the listener out", || left_out(bad)).await;
    let errors = node["resource_errors"].as_array().unwrap();
    assert_eq!(
        (errors.len(), errors[0]["kind"].as_str(), errors[0]["name"].as_str()),
        (1, Some("listener"), Some("taken"))
    );
    let message = errors[0]["message"].as_str().unwrap_or_default();
    assert!(message.contains(&taken_addr.to_string()), "the error names the address {taken_addr}: {node}");
    assert!(node["last_nack"].is_null(), "{node}");

    // Later revisions keep flowing to that node: each is installed but for the listener.
    let newer = api
        .put(
            "routes",
            "new",
            json!({"listener": "web", "match": {"path": {"prefix": "/new/"}}, "backends": [{"cluster": "one"}]}),
        )
        .await;
    eventually(Duration::from_secs(30), "edge-1 to install the newer revision", || left_out(newer)).await;
    let mut c = KeepAlive::new(web);
    assert_eq!(c.get("a.test", "/old/x").await, (200, "one".to_string()));
    assert_eq!(c.get("a.test", "/new/x").await, (200, "one".to_string()), "the newer revision serves");
    assert!(readyz(p.admin_addr.unwrap()).await);
    // The node of the other group never had to bind that port.
    wait_acked(&api, &["other-1"], newer).await;
    assert_eq!(api.node("other-1").await.unwrap()["state"], "synced");

    // Removing the culprit is a revision the node applies cleanly: the error clears.
    drop(taken);
    let fixed = delete(&api, "listeners", "taken").await;
    wait_acked(&api, &["edge-1"], fixed).await;
    let node = api.node("edge-1").await.unwrap();
    assert_eq!(node["state"], "synced", "{node}");
    assert_eq!(node["resource_errors"], json!([]), "{node}");
}
