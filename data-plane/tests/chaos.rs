//! Chaos (issue 6): endpoints die and come back on their address all the time under a steady
//! keep-alive load; health checks, outlier detection and retries must hide every death from the
//! clients. `SLUICE_CHAOS_SECS` (default 20) sets how long; run with `--nocapture` for the tally.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

/// Each client sends at most one request per tick.
const TICK: Duration = Duration::from_millis(4);
const CLIENTS: usize = 4;

#[derive(Debug, Default)]
struct Tally {
    requests: usize,
    failures: usize,
    longest_run: usize,
    samples: Vec<String>,
}

async fn client(addr: SocketAddr, stop: Arc<AtomicBool>, cap: usize) -> Tally {
    let mut client = Client::new(addr);
    let mut t = Tally::default();
    let mut run = 0;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::SeqCst) && t.requests < cap {
        tick.tick().await;
        t.requests += 1;
        let failure = match client.get("/").await {
            Ok(r) if r.status == 200 && r.body.starts_with("backend=") => None,
            Ok(r) => Some(format!("{} {}", r.status, r.body.trim())),
            Err(e) => Some(e),
        };
        match failure {
            None => run = 0,
            Some(f) => {
                t.failures += 1;
                run += 1;
                t.longest_run = t.longest_run.max(run);
                if t.samples.len() < 5 {
                    t.samples.push(f);
                }
            }
        }
    }
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_dying_and_returning_cost_no_request() {
    let secs: u64 = std::env::var("SLUICE_CHAOS_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    let backends = [Controlled::start("c1").await, Controlled::start("c2").await, Controlled::start("c3").await];
    let listener = free_addr();
    let eps: Vec<_> = backends.iter().map(|b| json!({"address": b.addr.to_string()})).collect();
    let cfg = config(json!({
        "clusters": {"api": {
            "endpoints": eps,
            "health_check": {"http": {"path": "/healthz"}, "interval_ms": 200, "timeout_ms": 200,
                             "unhealthy_threshold": 1, "healthy_threshold": 1},
            "outlier_detection": {"consecutive_failures": 1, "ejection_ms": 1000}
        }},
        "listeners": {"main": {"address": listener.to_string(), "protocol": "http"}},
        "routes": {"r": {"listener": "main", "backends": [{"cluster": "api"}],
                         "retries": {"attempts": 2, "on": ["connect_failure", "reset", "5xx"]}}}
    }));
    let cp = ControlPlane::start(Some(snapshot(&cfg, 1))).await;
    let node = start_node(vec![cp.url()], None).await;
    cp.expect_ack(1).await;
    wait_listener(listener).await;
    for b in &backends {
        let addr = b.addr.to_string();
        eventually(&format!("{addr} healthy"), || async {
            let healthy = metric(&node, "sluice_endpoint_healthy", &[("cluster", "api"), ("endpoint", &addr)]).await;
            (healthy == Some(1.0)).then_some(())
        })
        .await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    // Bounded whatever the speed: no more than one request per tick and client.
    let cap = (secs as usize * 1000 / TICK.as_millis() as usize) + 100;
    let clients: Vec<_> = (0..CLIENTS).map(|_| tokio::spawn(client(listener, stop.clone(), cap))).collect();

    // One endpoint down at a time, rotating: down 350 ms, back up, the next one 350 ms later.
    let started = Instant::now();
    let mut kills = 0;
    while started.elapsed() < Duration::from_secs(secs) {
        let b = &backends[kills % backends.len()];
        b.kill().await;
        kills += 1;
        tokio::time::sleep(Duration::from_millis(350)).await;
        b.restart().await;
        tokio::time::sleep(Duration::from_millis(350)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let mut total = Tally::default();
    for c in clients {
        let t = tokio::time::timeout(Duration::from_secs(30), c).await.expect("a client hung").unwrap();
        total.requests += t.requests;
        total.failures += t.failures;
        total.longest_run = total.longest_run.max(t.longest_run);
        total.samples.extend(t.samples);
    }
    let hits: Vec<usize> = backends.iter().map(Controlled::hits).collect();
    let route = [("route", "r")];
    let retries = metric(&node, "sluice_route_retries_total", &route).await.unwrap_or(0.0);
    let denied = metric(&node, "sluice_route_retry_budget_exhausted_total", &route).await.unwrap_or(0.0);
    println!(
        "chaos: {secs} s, {kills} kills, {} requests, {} failed, longest failure run {}, hits per endpoint \
         {hits:?}, retries {retries}, retries denied by the budget {denied}",
        total.requests, total.failures, total.longest_run
    );
    assert!(kills >= 1 && total.requests > 0);
    assert_eq!(total.failures, 0, "failed requests, first ones: {:?}", total.samples);
    assert!(hits.iter().all(|h| *h > 0), "an endpoint never served: {hits:?}");
    node.shutdown().await;
    cp.stop().await;
}
