//! Health checks and outlier detection end to end: a real node fed by a mock control plane, real
//! backends that turn sick (500 on /healthz or on everything), refuse (closed port) or come back.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use sluice_data_plane::Node;
use sluice_shared::proto::v1 as pb;
use support::*;
use tokio::net::TcpListener;

/// An HTTP backend whose `/healthz` status and whose status for everything else can be switched.
struct Switchable {
    addr: SocketAddr,
    /// Requests other than `/healthz`.
    hits: Arc<AtomicUsize>,
    health: Arc<AtomicU16>,
    status: Arc<AtomicU16>,
    task: tokio::task::JoinHandle<()>,
}

impl Switchable {
    async fn start(name: &'static str) -> Switchable {
        Switchable::on(TcpListener::bind("127.0.0.1:0").await.unwrap(), name)
    }

    fn on(listener: TcpListener, name: &'static str) -> Switchable {
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let health = Arc::new(AtomicU16::new(200));
        let status = Arc::new(AtomicU16::new(200));
        let (h, hl, st) = (hits.clone(), health.clone(), status.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (h, hl, st) = (h.clone(), hl.clone(), st.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let code = if req.uri().path() == "/healthz" {
                            hl.load(Ordering::SeqCst)
                        } else {
                            h.fetch_add(1, Ordering::SeqCst);
                            st.load(Ordering::SeqCst)
                        };
                        let mut resp = hyper::Response::new(Full::new(Bytes::from(format!("backend={name}\n"))));
                        *resp.status_mut() = hyper::StatusCode::from_u16(code).unwrap();
                        async move { Ok::<_, std::convert::Infallible>(resp) }
                    });
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        Switchable { addr, hits, health, status, task }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Switchable {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Setup {
    cp: ControlPlane,
    node: Node,
    listener: SocketAddr,
}

/// One listener routing everything to cluster `api` with the given spec.
fn api_config(listener: SocketAddr, cluster: Value) -> sluice_shared::Config {
    config(json!({
        "clusters": {"api": cluster},
        "listeners": {"main": {"address": listener.to_string(), "protocol": "http"}},
        "routes": {"all": {"listener": "main", "match": {}, "backends": [{"cluster": "api"}]}}
    }))
}

async fn setup(cluster: Value) -> Setup {
    let listener = free_addr();
    let cp = ControlPlane::start(Some(snapshot(&api_config(listener, cluster), 1))).await;
    let node = start_node(vec![cp.url()], None).await;
    assert!(matches!(cp.reply_to(1).await, pb::node_message::Msg::Ack(_)));
    eventually("listener up", || async { try_get(listener, "x", "/").await }).await;
    Setup { cp, node, listener }
}

fn endpoints(addrs: &[SocketAddr]) -> Value {
    Value::Array(addrs.iter().map(|a| json!({"address": a.to_string()})).collect())
}

/// The value of `sluice_endpoint_<what>` for `addr` in /metrics.
async fn endpoint_metric(node: &Node, what: &str, addr: SocketAddr) -> Option<u64> {
    let text = admin(node, "/metrics").await.body;
    let prefix = format!("sluice_endpoint_{what}{{cluster=\"api\",endpoint=\"{addr}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.parse().ok())
}

async fn wait_health(node: &Node, addr: SocketAddr, healthy: bool) {
    let want = u64::from(healthy);
    eventually(&format!("{addr} healthy={healthy}"), || async {
        (endpoint_metric(node, "healthy", addr).await == Some(want)).then_some(())
    })
    .await;
}

const CHECK_MS: u64 = 100;

fn http_check() -> Value {
    json!({"http": {"path": "/healthz"}, "interval_ms": CHECK_MS, "timeout_ms": 500,
           "healthy_threshold": 2, "unhealthy_threshold": 2})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_check_takes_a_sick_endpoint_out_and_brings_it_back() {
    let (a, b) = (Switchable::start("a").await, Switchable::start("b").await);
    let s = setup(json!({"endpoints": endpoints(&[a.addr, b.addr]), "health_check": http_check()})).await;
    wait_health(&s.node, b.addr, true).await;

    b.health.store(500, Ordering::SeqCst);
    let sick = Instant::now();
    wait_health(&s.node, b.addr, false).await;
    // Two failed probes in a row at 100 ms (plus the first probe's jitter): well under 2 s.
    assert!(sick.elapsed() < Duration::from_secs(2), "ejected after {:?}", sick.elapsed());
    let before = b.hits();
    for _ in 0..20 {
        let r = get(s.listener, "x", "/").await;
        assert_eq!(r.status, 200);
        assert!(r.body.contains("backend=a"), "{}", r.raw);
    }
    assert_eq!(b.hits(), before, "an unhealthy endpoint got traffic");

    b.health.store(200, Ordering::SeqCst);
    let back = Instant::now();
    wait_health(&s.node, b.addr, true).await;
    assert!(back.elapsed() < Duration::from_secs(2), "back after {:?}", back.elapsed());
    for _ in 0..10 {
        assert_eq!(get(s.listener, "x", "/").await.status, 200);
    }
    assert!(b.hits() > before, "a recovered endpoint gets traffic again");
    s.node.shutdown().await;
    s.cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expected_status_is_checked() {
    let a = Switchable::start("a").await;
    let check = json!({"http": {"path": "/healthz", "expected_status": 204}, "interval_ms": CHECK_MS,
                       "timeout_ms": 500, "healthy_threshold": 1, "unhealthy_threshold": 1});
    let s = setup(json!({"endpoints": endpoints(&[a.addr]), "health_check": check})).await;
    // 200 is a 2xx but not the expected 204.
    wait_health(&s.node, a.addr, false).await;
    a.health.store(204, Ordering::SeqCst);
    wait_health(&s.node, a.addr, true).await;
    s.node.shutdown().await;
    s.cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_check_sees_a_refusing_endpoint_and_its_return() {
    let a = Switchable::start("a").await;
    let closed = free_addr();
    let check = json!({"tcp": {}, "interval_ms": CHECK_MS, "timeout_ms": 500,
                       "healthy_threshold": 1, "unhealthy_threshold": 2});
    let s = setup(json!({"endpoints": endpoints(&[a.addr, closed]), "health_check": check})).await;
    wait_health(&s.node, closed, false).await;
    for _ in 0..20 {
        let r = get(s.listener, "x", "/").await;
        assert_eq!(r.status, 200, "a refusing endpoint was tried: {}", r.raw);
    }
    // The endpoint comes back on its port.
    let revived = Switchable::on(TcpListener::bind(closed).await.unwrap(), "revived");
    wait_health(&s.node, closed, true).await;
    let hit = eventually("traffic to the revived endpoint", || async {
        get(s.listener, "x", "/").await.body.contains("backend=revived").then_some(())
    });
    hit.await;
    assert!(revived.hits() > 0);
    s.node.shutdown().await;
    s.cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_unhealthy_answers_503_at_once_and_panic_mode_spreads() {
    let (a, b) = (Switchable::start("a").await, Switchable::start("b").await);
    a.health.store(500, Ordering::SeqCst);
    b.health.store(503, Ordering::SeqCst);
    let cluster = json!({"endpoints": endpoints(&[a.addr, b.addr]), "health_check": http_check()});
    let s = setup(cluster.clone()).await;
    wait_health(&s.node, a.addr, false).await;
    wait_health(&s.node, b.addr, false).await;
    // (The setup's "listener up" request may have reached a backend before the checks failed.)
    let hits = a.hits() + b.hits();
    let started = Instant::now();
    let r = get(s.listener, "x", "/").await;
    assert_eq!(r.status, 503, "{}", r.raw);
    assert_eq!(r.body.trim(), "no healthy endpoint");
    assert!(started.elapsed() < Duration::from_millis(500), "503 took {:?}", started.elapsed());
    assert_eq!(a.hits() + b.hits(), hits);
    let (a0, b0) = (a.hits(), b.hits());

    // Panic mode: the same sick cluster serves from every endpoint. Health state carries over.
    let mut panicky = cluster;
    panicky["panic_mode"] = json!(true);
    s.cp.send_snapshot(snapshot(&api_config(s.listener, panicky), 2)).await;
    assert!(matches!(s.cp.reply_to(2).await, pb::node_message::Msg::Ack(_)));
    assert_eq!(endpoint_metric(&s.node, "healthy", a.addr).await, Some(0), "health reset by a revision");
    for _ in 0..20 {
        assert_eq!(get(s.listener, "x", "/").await.status, 200);
    }
    assert!(a.hits() > a0 && b.hits() > b0, "panic mode spreads: a={} b={}", a.hits(), b.hits());
    s.node.shutdown().await;
    s.cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_health_check_makes_endpoints_healthy_again() {
    let a = Switchable::start("a").await;
    a.health.store(500, Ordering::SeqCst);
    let s = setup(json!({"endpoints": endpoints(&[a.addr]), "health_check": http_check()})).await;
    wait_health(&s.node, a.addr, false).await;
    s.cp.send_snapshot(snapshot(&api_config(s.listener, json!({"endpoints": endpoints(&[a.addr])})), 2)).await;
    assert!(matches!(s.cp.reply_to(2).await, pb::node_message::Msg::Ack(_)));
    wait_health(&s.node, a.addr, true).await;
    assert_eq!(get(s.listener, "x", "/").await.status, 200);
    s.node.shutdown().await;
    s.cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection_ejects_a_failing_endpoint_without_health_checks() {
    let (a, b) = (Switchable::start("a").await, Switchable::start("b").await);
    b.status.store(500, Ordering::SeqCst);
    let od = json!({"consecutive_failures": 3, "ejection_ms": 400});
    let s = setup(json!({"endpoints": endpoints(&[a.addr, b.addr]), "outlier_detection": od})).await;

    // Round robin: b sees every other request; its third 500 ejects it.
    let mut fives = 0;
    for _ in 0..6 {
        if get(s.listener, "x", "/").await.status == 500 {
            fives += 1;
        }
    }
    // (3 unless the setup's first request already reached b.)
    assert!((2..=3).contains(&fives), "b answered {fives} requests before ejection");
    assert_eq!(endpoint_metric(&s.node, "ejected", b.addr).await, Some(1));
    let ejected_at = Instant::now();
    let hits = b.hits();
    let mut served = 0;
    while ejected_at.elapsed() < Duration::from_millis(300) {
        assert_eq!(get(s.listener, "x", "/").await.status, 200);
        served += 1;
    }
    assert!(served > 0);
    assert_eq!(b.hits(), hits, "an ejected endpoint got traffic");

    // Time-based return, then a repeat ejection that lasts twice as long.
    eventually("b back from ejection", || async { (get(s.listener, "x", "/").await.status == 500).then_some(()) })
        .await;
    assert!(ejected_at.elapsed() >= Duration::from_millis(390), "back after {:?}", ejected_at.elapsed());
    for _ in 0..12 {
        get(s.listener, "x", "/").await;
        if endpoint_metric(&s.node, "ejections_total", b.addr).await == Some(2) {
            break;
        }
    }
    assert_eq!(endpoint_metric(&s.node, "ejections_total", b.addr).await, Some(2));
    let second = Instant::now();
    eventually("b back from its second ejection", || async {
        (get(s.listener, "x", "/").await.status == 500).then_some(())
    })
    .await;
    assert!(second.elapsed() >= Duration::from_millis(700), "second ejection lasted only {:?}", second.elapsed());
    assert_eq!(endpoint_metric(&s.node, "ejections_total", a.addr).await, Some(0));
    s.node.shutdown().await;
    s.cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection_counts_connect_failures() {
    let a = Switchable::start("a").await;
    let (closed, _closed) = refusing_addr();
    let od = json!({"consecutive_failures": 2, "ejection_ms": 30000});
    let s = setup(json!({"endpoints": endpoints(&[a.addr, closed]), "outlier_detection": od})).await;
    let mut bad = 0;
    for _ in 0..8 {
        if get(s.listener, "x", "/").await.status == 502 {
            bad += 1;
        }
    }
    assert!((1..=2).contains(&bad), "{bad} connect failures before ejection");
    assert_eq!(endpoint_metric(&s.node, "ejected", closed).await, Some(1));
    for _ in 0..10 {
        assert_eq!(get(s.listener, "x", "/").await.status, 200);
    }
    s.node.shutdown().await;
    s.cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_ejection_is_capped_at_half_the_cluster() {
    let backends = [
        Switchable::start("a").await,
        Switchable::start("b").await,
        Switchable::start("c").await,
        Switchable::start("d").await,
    ];
    for b in &backends {
        b.status.store(500, Ordering::SeqCst);
    }
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let od = json!({"consecutive_failures": 1, "ejection_ms": 30000});
    let s = setup(json!({"endpoints": endpoints(&addrs), "outlier_detection": od})).await;
    for _ in 0..40 {
        // Never a 503: the two endpoints left keep answering (with their 500s).
        assert_eq!(get(s.listener, "x", "/").await.status, 500);
    }
    let mut ejected = 0;
    for a in &addrs {
        ejected += endpoint_metric(&s.node, "ejected", *a).await.unwrap();
    }
    assert_eq!(ejected, 2, "at most half of 4 endpoints ejected");

    // A one-endpoint cluster can still eject its endpoint: then 503.
    let solo = Switchable::start("solo").await;
    solo.status.store(500, Ordering::SeqCst);
    let cluster = json!({"endpoints": endpoints(&[solo.addr]), "outlier_detection": od});
    s.cp.send_snapshot(snapshot(&api_config(s.listener, cluster), 2)).await;
    assert!(matches!(s.cp.reply_to(2).await, pb::node_message::Msg::Ack(_)));
    assert_eq!(get(s.listener, "x", "/").await.status, 500);
    let r = get(s.listener, "x", "/").await;
    assert_eq!(r.status, 503, "{}", r.raw);
    s.node.shutdown().await;
    s.cp.stop().await;
}
