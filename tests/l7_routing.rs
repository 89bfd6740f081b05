//! L7 routing through the real `sluice` binaries (DESIGN §3, §5): every matcher and the precedence
//! rules, the proxy's own answers (404/502/503/504), forwarding headers, strict parsing, a weighted
//! split, and a weight shift seen by two nodes in different groups via `sluice weights --wait`.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_e2e::l7::{proxy_in_group, raw_exchange, sample, tempdir, wait_acked, wait_connected, Backend, KeepAlive};
use sluice_e2e::{cli, free_addr, Api, Sluice};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// A control plane and one proxy in group `edge` with an HTTP listener `web`.
struct OneNode {
    cp: Sluice,
    _proxy: Sluice,
    _cache: sluice_e2e::l7::TempDir,
    api: Api,
    web: std::net::SocketAddr,
}

async fn one_node() -> OneNode {
    let cp = Sluice::control_plane(BIN).await;
    let api = cp.api();
    let cache = tempdir();
    let proxy = proxy_in_group(BIN, &[cp.grpc_addr.unwrap()], "edge-1", "edge", cache.path()).await;
    wait_connected(&api, "edge-1").await;
    let web = free_addr();
    api.put("listeners", "web", json!({"address": web.to_string(), "protocol": "http", "group": "edge"})).await;
    OneNode { cp, _proxy: proxy, _cache: cache, api, web }
}

/// Starts a backend answering `name`, a cluster `name` of it and a route `name` on `web` to it.
async fn route_to_own_backend(api: &Api, name: &str, priority: i32, matcher: Value) -> Backend {
    let b = Backend::start(name).await;
    api.put("clusters", name, json!({"endpoints": [{"address": b.address.to_string()}]})).await;
    api.put(
        "routes",
        name,
        json!({"listener": "web", "priority": priority, "match": matcher, "backends": [{"cluster": name}]}),
    )
    .await;
    b
}

/// One request and what should answer it: (method, host, path, headers, route name or status).
type Case = (&'static str, &'static str, &'static str, Vec<(&'static str, &'static str)>, &'static str);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_matcher_and_the_precedence_rules() {
    let n = one_node().await;
    let routes: Vec<(&str, i32, Value)> = vec![
        // Host tiers: exact > wildcard (longer suffix first) > any.
        ("host-exact", 0, json!({"hosts": ["shop.test"], "path": {"prefix": "/p/"}})),
        ("host-wild", 0, json!({"hosts": ["*.shop.test"], "path": {"prefix": "/p/"}})),
        ("host-wild-eu", 0, json!({"hosts": ["*.eu.shop.test"], "path": {"prefix": "/p/"}})),
        ("host-any", 0, json!({"path": {"prefix": "/p/"}})),
        // Path tiers: exact > longer prefix > shorter prefix > regex.
        ("path-exact", 0, json!({"path": {"exact": "/q/a/b"}})),
        ("path-long", 0, json!({"path": {"prefix": "/q/a/"}})),
        ("path-short", 0, json!({"path": {"prefix": "/q/"}})),
        ("path-regex", 0, json!({"path": {"regex": "^/(q|r)/[a-z]+\\.png$"}})),
        // More method/header/query conditions win over fewer.
        ("m-post", 0, json!({"path": {"prefix": "/m/"}, "methods": ["POST"]})),
        ("m-any", 0, json!({"path": {"prefix": "/m/"}})),
        ("h-canary", 0, json!({"path": {"prefix": "/h/"}, "headers": [{"name": "x-canary", "exact": "1"}]})),
        ("h-regex", 0, json!({"path": {"prefix": "/h/"}, "headers": [{"name": "x-user", "regex": "^vip-"}]})),
        ("h-any", 0, json!({"path": {"prefix": "/h/"}})),
        ("q-debug", 0, json!({"path": {"prefix": "/qs/"}, "query": [{"name": "debug", "present": true}]})),
        ("q-v2", 0, json!({"path": {"prefix": "/qs/"}, "query": [{"name": "v", "exact": "2"}]})),
        ("q-any", 0, json!({"path": {"prefix": "/qs/"}})),
        (
            "two-conds",
            0,
            json!({"path": {"prefix": "/mc/"}, "methods": ["GET"], "headers": [{"name": "x-a", "present": true}]}),
        ),
        ("one-cond", 0, json!({"path": {"prefix": "/mc/"}, "methods": ["GET"]})),
        ("only-post", 0, json!({"path": {"prefix": "/op/"}, "methods": ["POST"]})),
        // Priority beats specificity.
        ("prio-exact-low", 0, json!({"path": {"exact": "/pr/x"}})),
        ("prio-prefix-high", 10, json!({"path": {"prefix": "/pr/"}})),
        // The host tier is compared before the path tier.
        ("tier-host", 0, json!({"hosts": ["tier.test"], "path": {"prefix": "/"}})),
        ("tier-path", 0, json!({"path": {"exact": "/tier/x"}})),
        // A full tie goes to the name that sorts first.
        ("tie-b", 0, json!({"path": {"prefix": "/tie/"}})),
        ("tie-a", 0, json!({"path": {"prefix": "/tie/"}})),
    ];
    let mut backends = Vec::new();
    for (name, priority, matcher) in routes {
        backends.push(route_to_own_backend(&n.api, name, priority, matcher).await);
    }
    let rev = n.api.revision().await.unwrap();
    wait_acked(&n.api, &["edge-1"], rev).await;

    let any = "any.test";
    let cases: Vec<Case> = vec![
        ("GET", "shop.test", "/p/x", vec![], "host-exact"),
        ("GET", "SHOP.test:8080", "/p/x", vec![], "host-exact"),
        ("GET", "a.shop.test", "/p/x", vec![], "host-wild"),
        ("GET", "x.eu.shop.test", "/p/x", vec![], "host-wild-eu"),
        ("GET", "other.test", "/p/x", vec![], "host-any"),
        ("GET", any, "/q/a/b", vec![], "path-exact"),
        ("GET", any, "/q/a/bc", vec![], "path-long"),
        ("GET", any, "/q/a/b.png", vec![], "path-long"),
        ("GET", any, "/q/z", vec![], "path-short"),
        ("GET", any, "/q/img.png", vec![], "path-short"),
        ("GET", any, "/r/img.png", vec![], "path-regex"),
        ("GET", any, "/r/img.png?x=1", vec![], "path-regex"),
        ("GET", any, "/m/x", vec![], "m-any"),
        ("POST", any, "/m/x", vec![], "m-post"),
        ("GET", any, "/h/x", vec![], "h-any"),
        ("GET", any, "/h/x", vec![("X-Canary", "1")], "h-canary"),
        ("GET", any, "/h/x", vec![("x-canary", "2")], "h-any"),
        ("GET", any, "/h/x", vec![("x-user", "vip-7")], "h-regex"),
        ("GET", any, "/h/x", vec![("x-user", "vip-7"), ("x-canary", "1")], "h-canary"),
        ("GET", any, "/qs/x?debug=1", vec![], "q-debug"),
        ("GET", any, "/qs/x?a=1&debug", vec![], "q-debug"),
        ("GET", any, "/qs/x?v=2", vec![], "q-v2"),
        ("GET", any, "/qs/x?v=3", vec![], "q-any"),
        ("GET", any, "/qs/x", vec![], "q-any"),
        ("GET", any, "/mc/x", vec![("x-a", "")], "two-conds"),
        ("GET", any, "/mc/x", vec![], "one-cond"),
        ("POST", any, "/op/x", vec![], "only-post"),
        ("GET", any, "/op/x", vec![], "404"),
        ("GET", any, "/pr/x", vec![], "prio-prefix-high"),
        ("GET", "tier.test", "/tier/x", vec![], "tier-host"),
        ("GET", any, "/tier/x", vec![], "tier-path"),
        ("GET", any, "/tie/x", vec![], "tie-a"),
        ("GET", any, "/nothing", vec![], "404"),
        ("GET", any, "/", vec![], "404"),
    ];
    let mut c = KeepAlive::new(n.web);
    let mut wrong = Vec::new();
    for (method, host, path, headers, want) in &cases {
        let (status, body) = c.request(method, host, path, headers).await.unwrap_or_else(|e| panic!("{e}"));
        let got = if status == 200 { body.trim().to_string() } else { status.to_string() };
        if got != *want {
            wrong.push(format!("{method} {host}{path} {headers:?}: want {want}, got {got} ({})", body.trim()));
        }
    }
    assert!(wrong.is_empty(), "misrouted:\n{}", wrong.join("\n"));
    let total: u64 = backends.iter().map(Backend::hits).sum();
    assert_eq!(total, cases.iter().filter(|c| c.4 != "404").count() as u64, "a 404 must not reach a backend");
    drop(n.cp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_answers_forwarding_headers_and_strict_parsing() {
    let n = one_node().await;
    let api = &n.api;
    let fwd = route_to_own_backend(api, "fwd", 0, json!({"path": {"prefix": "/fwd/"}})).await;
    api.put("clusters", "empty", json!({"endpoints": []})).await;
    api.put(
        "routes",
        "empty",
        json!({"listener": "web", "match": {"path": {"prefix": "/empty"}}, "backends": [{"cluster": "empty"}]}),
    )
    .await;
    // Nothing listens on this address: connections are refused.
    api.put("clusters", "refused", json!({"endpoints": [{"address": free_addr().to_string()}]})).await;
    api.put(
        "routes",
        "refused",
        json!({"listener": "web", "match": {"path": {"prefix": "/refused"}}, "backends": [{"cluster": "refused"}]}),
    )
    .await;
    let slow = Backend::with_delay("slow", Duration::from_secs(5)).await;
    api.put("clusters", "slow", json!({"endpoints": [{"address": slow.address.to_string()}]})).await;
    api.put(
        "routes",
        "slow",
        json!({"listener": "web", "match": {"path": {"prefix": "/slow"}}, "backends": [{"cluster": "slow"}], "timeout_ms": 300}),
    )
    .await;
    let rev = api.revision().await.unwrap();
    wait_acked(api, &["edge-1"], rev).await;

    let mut c = KeepAlive::new(n.web);
    for (path, want) in [("/nothing", 404), ("/empty", 503), ("/refused/x", 502)] {
        let (status, body) = c.request("GET", "e.test", path, &[]).await.unwrap();
        assert_eq!(status, want, "{path}: {body}");
        assert!(!body.trim().is_empty(), "{path}: the answer says which: {body:?}");
    }
    let started = Instant::now();
    let (status, body) = c.request("GET", "e.test", "/slow", &[]).await.unwrap();
    assert_eq!(status, 504, "{body}");
    assert!(started.elapsed() < Duration::from_secs(3), "504 after {:?}, timeout_ms is 300", started.elapsed());
    assert_eq!(slow.hits(), 1);

    // Forwarding headers: added, x-forwarded-for appended to, x-request-id generated or kept.
    assert_eq!(c.get("fwd.test", "/fwd/a?x=1").await, (200, "fwd".to_string()));
    assert_eq!(c.get("fwd.test", "/fwd/b").await, (200, "fwd".to_string()));
    let kept = [("x-request-id", "req-42"), ("x-forwarded-for", "10.1.2.3")];
    assert_eq!(c.request("GET", "fwd.test", "/fwd/c", &kept).await.unwrap().0, 200);
    let seen = fwd.seen();
    assert_eq!(seen.len(), 3, "{seen:?}");
    let h = |i: usize, name: &str| seen[i].headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    assert_eq!(seen[0].path_and_query, "/fwd/a?x=1");
    assert_eq!(h(0, "x-forwarded-for"), "127.0.0.1");
    assert_eq!(h(0, "x-forwarded-proto"), "http");
    assert_eq!(h(0, "x-forwarded-host"), "fwd.test");
    assert_eq!(h(0, "host"), "fwd.test", "the backend sees the client's Host");
    assert!(!h(0, "x-request-id").is_empty() && h(0, "x-request-id") != h(1, "x-request-id"), "{seen:?}");
    assert_eq!(h(2, "x-request-id"), "req-42");
    assert_eq!(h(2, "x-forwarded-for"), "10.1.2.3, 127.0.0.1");

    // Malformed or ambiguous requests are answered by the proxy, the connection closed, no backend reached.
    let long_target = format!("/fwd/{}", "a".repeat(9 * 1024));
    let many_headers: String = (0..101).map(|i| format!("x-h{i}: v\r\n")).collect();
    let bad: Vec<(&str, String, &str)> = vec![
        (
            "CL+TE",
            "POST /fwd/smuggle HTTP/1.1\r\nHost: fwd.test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                .to_string(),
            "400",
        ),
        ("request line over 8 KiB", format!("GET {long_target} HTTP/1.1\r\nHost: fwd.test\r\n\r\n"), "414"),
        ("101 headers", format!("GET /fwd/many HTTP/1.1\r\nHost: fwd.test\r\n{many_headers}\r\n"), "431"),
        ("control byte in a header", "GET /fwd/ctl HTTP/1.1\r\nHost: fwd.test\r\nx-a: a\x01b\r\n\r\n".to_string(), "400"),
    ];
    let mut wrong = Vec::new();
    for (what, raw, want) in &bad {
        let (answer, closed) = raw_exchange(n.web, raw.as_bytes()).await;
        let status = answer.split_whitespace().nth(1).unwrap_or("none");
        if status != *want || !closed {
            wrong.push(format!("{what}: want {want} and a closed connection, got {status:?} closed={closed}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(fwd.hits(), 3, "a malformed request reached the backend: {:?}", fwd.seen().last());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_and_a_weight_shift_seen_by_two_nodes_in_two_groups() {
    let cp = Sluice::control_plane(BIN).await;
    let api = cp.api();
    let cache = tempdir();
    let grpc = [cp.grpc_addr.unwrap()];
    let _a = proxy_in_group(BIN, &grpc, "node-a", "group-a", &cache.path().join("a")).await;
    let _b = proxy_in_group(BIN, &grpc, "node-b", "group-b", &cache.path().join("b")).await;
    wait_connected(&api, "node-a").await;
    wait_connected(&api, "node-b").await;

    let (blue, green) = (Backend::start("blue").await, Backend::start("green").await);
    api.put("clusters", "blue", json!({"endpoints": [{"address": blue.address.to_string()}]})).await;
    api.put("clusters", "green", json!({"endpoints": [{"address": green.address.to_string()}]})).await;
    let (web_a, web_b) = (free_addr(), free_addr());
    api.put("listeners", "web-a", json!({"address": web_a.to_string(), "protocol": "http", "group": "group-a"})).await;
    api.put("listeners", "web-b", json!({"address": web_b.to_string(), "protocol": "http", "group": "group-b"})).await;
    for (route, listener) in [("split-a", "web-a"), ("split-b", "web-b")] {
        api.put(
            "routes",
            route,
            json!({"listener": listener, "backends": [{"cluster": "blue", "weight": 90}, {"cluster": "green", "weight": 10}]}),
        )
        .await;
    }
    let rev = api.revision().await.unwrap();
    wait_acked(&api, &["node-a", "node-b"], rev).await;

    for (node, addr) in [("node-a", web_a), ("node-b", web_b)] {
        let r = sample(addr, "split.test", "/", 3000).await;
        assert_eq!(r.failed, 0, "{node}: {:?}", r.failures);
        let share = r.count("blue") as f64 / r.ok as f64;
        assert!((0.87..=0.93).contains(&share), "{node}: blue share {share:.3} of {} (want 0.90): {r:?}", r.ok);
    }

    let cp_api = cp.api_addr.unwrap();
    for route in ["split-a", "split-b"] {
        let out = cli(BIN, cp_api, &["weights", route, "blue=25", "green=75", "--wait", "--timeout", "30s"]).await;
        assert!(out.success(), "{out:?}");
        assert!(out.stdout.contains("acknowledged by 2 node(s)"), "{out:?}");
    }
    // Acknowledged means installed: traffic follows at once, on both nodes.
    for (node, addr) in [("node-a", web_a), ("node-b", web_b)] {
        let r = sample(addr, "split.test", "/", 2000).await;
        assert_eq!(r.failed, 0, "{node}: {:?}", r.failures);
        let share = r.count("green") as f64 / r.ok as f64;
        assert!((0.71..=0.79).contains(&share), "{node}: green share {share:.3} of {} (want 0.75): {r:?}", r.ok);
    }
    let rev = api.revision().await.unwrap();
    for id in ["node-a", "node-b"] {
        let node = api.node(id).await.unwrap();
        assert_eq!(node["state"], "synced", "{node}");
        assert_eq!(node["acked_revision"].as_u64(), Some(rev), "{node}");
    }
}
