//! L4 UDP through a real node: per-client sessions, replies to the right client, idle expiry,
//! the session cap, hashing on the client IP, a listener removed.

mod l4_support;
mod support;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use l4_support::*;
use serde_json::{json, Value};
use sluice_shared::Config;
use support::{config, free_addr};
use tokio::net::UdpSocket;

const WAIT: Duration = Duration::from_secs(5);

fn udp_config(listener: SocketAddr, policy: &str, backends: &[&UdpEcho], extra: Value) -> Config {
    let endpoints: Vec<Value> = backends.iter().map(|b| json!({"address": b.addr.to_string()})).collect();
    let mut l = json!({"address": listener.to_string(), "protocol": "udp", "cluster": "dns"});
    for (k, v) in extra.as_object().unwrap() {
        l[k] = v.clone();
    }
    config(json!({
        "clusters": {"dns": {"lb_policy": policy, "endpoints": endpoints}},
        "listeners": {"resolver": l},
    }))
}

/// A port free for UDP a moment ago (the listener binds UDP only).
fn free_udp_addr() -> SocketAddr {
    loop {
        let a = free_addr();
        if std::net::UdpSocket::bind(a).is_ok() {
            return a;
        }
    }
}

async fn client(ip: &str) -> UdpSocket {
    UdpSocket::bind(format!("{ip}:0")).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_round_robin_and_replies_reach_the_right_client() {
    let bs = [UdpEcho::start("a").await, UdpEcho::start("b").await, UdpEcho::start("c").await];
    let addr = free_udp_addr();
    let (_cp, node) = node_with(&udp_config(addr, "round_robin", &bs.iter().collect::<Vec<_>>(), json!({}))).await;
    let mut clients = Vec::new();
    for _ in 0..6 {
        clients.push(client("127.0.0.1").await);
    }
    let mut backend_of: Vec<String> = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        let reply = udp_round_trip(c, addr, &format!("hello from {i}"), WAIT).await.expect("first reply");
        let (backend, payload) = reply.split_once(':').unwrap();
        assert_eq!(payload, format!("hello from {i}"));
        backend_of.push(backend.to_string());
    }
    // New sessions go round robin: two clients per backend.
    let mut per: HashMap<&str, usize> = HashMap::new();
    for b in &backend_of {
        *per.entry(b.as_str()).or_default() += 1;
    }
    assert_eq!(per.len(), 3, "{per:?}");
    assert!(per.values().all(|&n| n == 2), "{per:?}");
    // Later datagrams stay in their session, interleaved across clients, each reply to its sender.
    for round in 0..3 {
        for (i, c) in clients.iter().enumerate() {
            let msg = format!("round {round} client {i}");
            let reply = udp_round_trip(c, addr, &msg, WAIT).await.expect("reply");
            assert_eq!(reply, format!("{}:{msg}", backend_of[i]));
        }
    }
    wait_metric(&node, "sluice_l4_active_connections{listener=\"resolver\"}", 6.0).await;
    assert_eq!(metric(&node, "sluice_l4_connections_total{listener=\"resolver\"}").await, 6.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_expire_when_idle_and_the_cap_bounds_them() {
    let a = UdpEcho::start("a").await;
    let addr = free_udp_addr();
    let extra = json!({"idle_timeout_ms": 1500, "max_connections": 2});
    let (_cp, node) = node_with(&udp_config(addr, "round_robin", &[&a], extra)).await;
    let (c1, c2, c3) = (client("127.0.0.1").await, client("127.0.0.1").await, client("127.0.0.1").await);
    assert!(udp_round_trip(&c1, addr, "1", WAIT).await.is_some());
    assert!(udp_round_trip(&c2, addr, "2", WAIT).await.is_some());
    // The cap: a third client gets no session while two are open.
    assert!(udp_round_trip(&c3, addr, "3", Duration::from_millis(300)).await.is_none());
    assert!(metric(&node, "sluice_l4_rejected_total{listener=\"resolver\"}").await >= 1.0);
    // Both sessions idle out, which frees the slots.
    wait_metric(&node, "sluice_l4_active_connections{listener=\"resolver\"}", 0.0).await;
    assert!(metric(&node, "sluice_l4_idle_timeouts_total{listener=\"resolver\"}").await >= 2.0);
    assert_eq!(udp_round_trip(&c3, addr, "3 again", WAIT).await.as_deref(), Some("a:3 again"));
    // An expired client starts a new session and is answered again.
    assert_eq!(udp_round_trip(&c1, addr, "back", WAIT).await.as_deref(), Some("a:back"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clusters_circuit_breaker_bounds_sessions() {
    let a = UdpEcho::start("a").await;
    let addr = free_udp_addr();
    let mut cfg = udp_config(addr, "round_robin", &[&a], json!({"idle_timeout_ms": 1000}));
    cfg.clusters.get_mut("dns").unwrap().circuit_breaker =
        Some(serde_json::from_value(json!({"max_connections": 1})).unwrap());
    let (_cp, node) = node_with(&cfg).await;
    let (c1, c2) = (client("127.0.0.1").await, client("127.0.0.1").await);
    assert_eq!(udp_round_trip(&c1, addr, "1", WAIT).await.as_deref(), Some("a:1"));
    wait_metric(&node, "sluice_cluster_connections{cluster=\"dns\"}", 1.0).await;
    // The breaker's one connection is c1's session: c2 gets none, and no listener slot either.
    assert!(udp_round_trip(&c2, addr, "2", Duration::from_millis(300)).await.is_none());
    let overflow = "sluice_cluster_overflow_total{cluster=\"dns\",limit=\"connections\"}";
    assert!(metric(&node, overflow).await >= 1.0);
    assert_eq!(metric(&node, "sluice_l4_connections_total{listener=\"resolver\"}").await, 1.0);
    assert_eq!(metric(&node, "sluice_l4_rejected_total{listener=\"resolver\"}").await, 0.0);
    // c1's session idles out and hands its connection over.
    wait_metric(&node, "sluice_cluster_connections{cluster=\"dns\"}", 0.0).await;
    assert_eq!(udp_round_trip(&c2, addr, "2 again", WAIT).await.as_deref(), Some("a:2 again"));
    assert_eq!(metric(&node, "sluice_cluster_connections{cluster=\"dns\"}").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoints_max_connections_bounds_its_sessions() {
    let a = UdpEcho::start("a").await;
    let addr = free_udp_addr();
    let mut cfg = udp_config(addr, "round_robin", &[&a], json!({"idle_timeout_ms": 1000}));
    cfg.clusters.get_mut("dns").unwrap().endpoints[0].max_connections = Some(1);
    let (_cp, node) = node_with(&cfg).await;
    let (c1, c2) = (client("127.0.0.1").await, client("127.0.0.1").await);
    assert_eq!(udp_round_trip(&c1, addr, "1", WAIT).await.as_deref(), Some("a:1"));
    // The endpoint's one place is c1's session: c2's datagram is dropped and counted.
    assert!(udp_round_trip(&c2, addr, "2", Duration::from_millis(300)).await.is_none());
    assert!(metric(&node, "sluice_l4_endpoints_full_total{listener=\"resolver\"}").await >= 1.0);
    assert_eq!(metric(&node, "sluice_l4_no_endpoint_total{listener=\"resolver\"}").await, 0.0);
    // c1's session idles out and frees the place.
    let gauge = format!("sluice_endpoint_active_requests{{cluster=\"dns\",endpoint=\"{}\"}}", a.addr);
    wait_metric(&node, &gauge, 0.0).await;
    assert_eq!(udp_round_trip(&c2, addr, "2 again", WAIT).await.as_deref(), Some("a:2 again"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_ip_hashing_keeps_a_client_ip_on_one_endpoint() {
    let bs = [UdpEcho::start("a").await, UdpEcho::start("b").await, UdpEcho::start("c").await];
    let addr = free_udp_addr();
    let extra = json!({"hash_on": {"source_ip": true}, "idle_timeout_ms": 60000});
    let (_cp, _node) = node_with(&udp_config(addr, "maglev", &bs.iter().collect::<Vec<_>>(), extra)).await;
    let mut used = HashSet::new();
    for i in 0..30u8 {
        let ip = format!("127.0.{}.{}", 10 + i, 1 + i);
        // Two sockets (ports) of one IP: separate sessions, same endpoint.
        let (x, y) = (client(&ip).await, client(&ip).await);
        let rx = udp_round_trip(&x, addr, "x", WAIT).await.unwrap();
        let ry = udp_round_trip(&y, addr, "y", WAIT).await.unwrap();
        let (bx, by) = (rx.split_once(':').unwrap().0.to_string(), ry.split_once(':').unwrap().0.to_string());
        assert_eq!(bx, by, "client ip {ip}");
        used.insert(bx);
    }
    assert_eq!(used.len(), 3, "30 client IPs spread over the endpoints: {used:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_udp_listener_stops_new_sessions() {
    let a = UdpEcho::start("a").await;
    let addr = free_udp_addr();
    let (cp, node) = node_with(&udp_config(addr, "round_robin", &[&a], json!({"drain_ms": 300}))).await;
    let c = client("127.0.0.1").await;
    assert!(udp_round_trip(&c, addr, "1", WAIT).await.is_some());
    let mut cfg = udp_config(addr, "round_robin", &[&a], json!({}));
    cfg.listeners.clear();
    apply(&cp, &cfg, 2).await;
    // The open session keeps working while the listener drains...
    assert_eq!(udp_round_trip(&c, addr, "draining", WAIT).await.as_deref(), Some("a:draining"));
    // ...and after the drain bound, the socket is gone: nothing answers.
    wait_metric(&node, "sluice_listener_draining{listener=\"resolver\"}", 0.0).await;
    let fresh = client("127.0.0.1").await;
    assert!(udp_round_trip(&fresh, addr, "2", Duration::from_millis(300)).await.is_none());
}

/// A UDP echo with a TCP listener on the same port that accepts and drops connections: what the
/// TCP health checks of a UDP endpoint probe (as a DNS server answers on both). Abort the task
/// to fail them. The port the echo got may be taken for TCP by another test: then another echo.
async fn udp_echo_with_tcp_health_port(name: &str) -> (UdpEcho, tokio::task::JoinHandle<()>) {
    for _ in 0..50 {
        let echo = UdpEcho::start(name).await;
        let Ok(listener) = std::net::TcpListener::bind(echo.addr) else { continue };
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        return (echo, tokio::spawn(async move { while listener.accept().await.is_ok() {} }));
    }
    panic!("no port free for both UDP and TCP in 50 tries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_leaves_an_endpoint_that_fails_its_health_checks() {
    let ((a, a_check), (b, b_check)) =
        (udp_echo_with_tcp_health_port("a").await, udp_echo_with_tcp_health_port("b").await);
    let checks: HashMap<String, (SocketAddr, tokio::task::JoinHandle<()>)> =
        [("a".to_string(), (a.addr, a_check)), ("b".to_string(), (b.addr, b_check))].into();
    let bs = [a, b];
    let addr = free_udp_addr();
    let mut cfg = udp_config(addr, "round_robin", &bs.iter().collect::<Vec<_>>(), json!({}));
    cfg.clusters.get_mut("dns").unwrap().health_check = Some(
        serde_json::from_value(
            json!({"tcp": {}, "interval_ms": 100, "healthy_threshold": 1, "unhealthy_threshold": 1}),
        )
        .unwrap(),
    );
    // Panic mode: with nothing healthy the pick still gives an endpoint, which must not move it.
    cfg.clusters.get_mut("dns").unwrap().panic_mode = true;
    // A breaker with room for one session: a moving session keeps its place under it.
    cfg.clusters.get_mut("dns").unwrap().circuit_breaker =
        Some(serde_json::from_value(json!({"max_connections": 1})).unwrap());
    let (_cp, node) = node_with(&cfg).await;
    let fail_checks_of = |name: &str| {
        let (endpoint, task) = &checks[name];
        task.abort();
        format!("sluice_endpoint_healthy{{cluster=\"dns\",endpoint=\"{endpoint}\"}}")
    };
    let c = client("127.0.0.1").await;
    let backend = |reply: Option<String>| reply.expect("a reply").split_once(':').unwrap().0.to_string();
    let first = backend(udp_round_trip(&c, addr, "1", WAIT).await);
    // Its endpoint fails its checks (it still answers UDP): the next datagram goes to the other.
    wait_metric(&node, &fail_checks_of(&first), 0.0).await;
    let second = backend(udp_round_trip(&c, addr, "2", WAIT).await);
    assert_ne!(first, second);
    assert_eq!(backend(udp_round_trip(&c, addr, "3", WAIT).await), second);
    assert_eq!(metric(&node, "sluice_cluster_connections{cluster=\"dns\"}").await, 1.0);
    assert_eq!(metric(&node, "sluice_cluster_overflow_total{cluster=\"dns\",limit=\"connections\"}").await, 0.0);
    // No healthy endpoint left: the session stays where it is rather than be dropped or churned.
    wait_metric(&node, &fail_checks_of(&second), 0.0).await;
    for i in 4..8 {
        assert_eq!(backend(udp_round_trip(&c, addr, &i.to_string(), WAIT).await), second);
    }
    assert_eq!(metric(&node, "sluice_l4_connections_total{listener=\"resolver\"}").await, 2.0);
    assert_eq!(metric(&node, "sluice_l4_no_endpoint_total{listener=\"resolver\"}").await, 0.0);
}
