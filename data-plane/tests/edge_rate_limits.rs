//! Route rate limits end to end: a client over its bucket gets 429 with `Retry-After` and the
//! `RateLimit-*` fields and never reaches the endpoint; keys by client IP, header and route; and
//! a fleet-wide limit shared by two nodes, whose total stays near the configured rate.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;
use sluice_shared::proto::v1 as pb;
use support::*;

fn request(host: &str, extra: &str) -> Vec<u8> {
    format!("GET / HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n").into_bytes()
}

/// Sends `n` requests at once-ish; (answered 200, answered 429).
async fn burst(addr: SocketAddr, host: &str, extra: &str, n: usize) -> (usize, usize) {
    let (mut ok, mut limited) = (0, 0);
    for _ in 0..n {
        match raw(addr, &request(host, extra)).await.status {
            200 => ok += 1,
            429 => limited += 1,
            other => panic!("unexpected {other}"),
        }
    }
    (ok, limited)
}

fn limited_count(metrics: &str, route: &str) -> u64 {
    metric_in(metrics, "sluice_route_rate_limited_total", &[("route", route)]).unwrap_or(0.0) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets_by_client_header_and_route() {
    let app = Backend::start("app").await;
    let listener = free_addr();
    // One request per 10 s once the burst is spent: nothing refills during the test.
    let slow = |burst: u32, key: serde_json::Value| {
        let mut l = json!({"requests_per_s": 1, "burst": burst});
        l.as_object_mut().unwrap().extend(key.as_object().unwrap().clone());
        l
    };
    let cfg = config(json!({
        "clusters": {"app": {"endpoints": [{"address": app.addr.to_string()}]}},
        "listeners": {"web": {"address": listener.to_string(), "protocol": "http"}},
        "routes": {
            "by-ip": {"listener": "web", "match": {"hosts": ["ip.test"]}, "backends": [{"cluster": "app"}],
                      "rate_limit": slow(3, json!({}))},
            "by-key": {"listener": "web", "match": {"hosts": ["key.test"]}, "backends": [{"cluster": "app"}],
                       "rate_limit": slow(2, json!({"key": "header", "header": "x-api-key"}))},
            "whole": {"listener": "web", "match": {"hosts": ["route.test"]}, "backends": [{"cluster": "app"}],
                      "rate_limit": slow(4, json!({"key": "route"}))}
        }
    }));
    let (_cp, node) = node_with(&cfg).await;

    let hits = app.hits();
    assert_eq!(burst(listener, "ip.test", "", 5).await, (3, 2));
    assert_eq!(app.hits(), hits + 3, "refused requests never reach the endpoint");
    let r = raw(listener, &request("ip.test", "")).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.body, "rate limited\n");
    assert_eq!(r.headers.get("retry-after").map(String::as_str), Some("1"));
    assert_eq!(r.headers.get("ratelimit-limit").map(String::as_str), Some("3"));
    assert_eq!(r.headers.get("ratelimit-remaining").map(String::as_str), Some("0"));
    assert_eq!(r.headers.get("ratelimit-policy").map(String::as_str), Some("1;w=1;burst=3"));

    // Per API key: each key its own bucket; requests without the key share one.
    assert_eq!(burst(listener, "key.test", "X-Api-Key: alice\r\n", 3).await, (2, 1));
    assert_eq!(burst(listener, "key.test", "X-Api-Key: bob\r\n", 3).await, (2, 1));
    assert_eq!(burst(listener, "key.test", "", 3).await, (2, 1));
    // Per route: everyone together.
    assert_eq!(burst(listener, "route.test", "X-Api-Key: alice\r\n", 3).await, (3, 0));
    assert_eq!(burst(listener, "route.test", "X-Api-Key: bob\r\n", 3).await, (1, 2));

    let metrics = admin(&node, "/metrics").await.body;
    assert_eq!(limited_count(&metrics, "by-ip"), 3, "{metrics}");
    assert_eq!(limited_count(&metrics, "by-key"), 3);
    assert_eq!(limited_count(&metrics, "whole"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_limit_holds_across_two_nodes() {
    const RATE: u32 = 40;
    const BURST: u32 = 4;
    let app = Backend::start("app").await;
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let listener = free_addr();
        let cfg = config(json!({
            "clusters": {"app": {"endpoints": [{"address": app.addr.to_string()}]}},
            "listeners": {"web": {"address": listener.to_string(), "protocol": "http"}},
            "routes": {"api": {"listener": "web", "backends": [{"cluster": "app"}],
                               "rate_limit": {"requests_per_s": RATE, "burst": BURST, "key": "route", "fleet": true}}}
        }));
        let (cp, node) = node_with(&cfg).await;
        // What the control plane tells each node of a two-node group.
        cp.send(pb::server_message::Msg::FleetShare(pb::FleetShare { group_nodes: 2 })).await;
        nodes.push((cp, node, listener));
    }
    // The share is taken once the node has it: a burst of the whole limit is already refused.
    for (_, _, listener) in &nodes {
        let listener = *listener;
        eventually("the fleet share applied", || async move {
            let r = raw(listener, &request("a.test", "")).await;
            (r.headers.get("ratelimit-limit").map(String::as_str) == Some("2")).then_some(())
        })
        .await;
    }

    // Both nodes under as much load as they take, for 2 s.
    let window = Duration::from_secs(2);
    let hits = app.hits();
    let started = Instant::now();
    let loads: Vec<_> = nodes
        .iter()
        .flat_map(|(_, _, l)| [*l, *l])
        .map(|listener| {
            tokio::spawn(async move {
                let mut sent = 0u32;
                while started.elapsed() < window && sent < 5_000 {
                    let _ = raw(listener, &request("a.test", "")).await;
                    sent += 1;
                }
                sent
            })
        })
        .collect();
    let mut sent = 0;
    for l in loads {
        sent += l.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let allowed = (app.hits() - hits) as f64;
    let configured = f64::from(RATE) * elapsed + f64::from(BURST);
    println!(
        "fleet limit {RATE}/s over {elapsed:.2} s: {allowed} allowed of {sent} sent by two nodes \
         ({:.1}% of the configured {configured:.0})",
        100.0 * allowed / configured
    );
    assert!(u64::from(sent) as f64 > 2.0 * configured, "the load must exceed the limit: {sent}");
    assert!(allowed <= configured + 2.0, "{allowed} > {configured}");
    assert!(allowed >= 0.8 * configured, "{allowed} < 80% of {configured}");
}
