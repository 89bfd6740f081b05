//! Failover and traffic policies end to end (issue 6): retries (connect failure, reset, 5xx,
//! per-try timeout, budget), sticky cookies, hash_on, least_request and circuit breaking. A real
//! node fed by a mock control plane, `support::Controlled` backends that fail on demand.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_data_plane::Node;
use support::*;

struct Setup {
    cp: ControlPlane,
    node: Node,
    listener: SocketAddr,
}

impl Setup {
    /// A node running `cfg` (revision 1) with its listener up. No request is sent anywhere, so
    /// backend counters start at zero.
    async fn start(listener: SocketAddr, cfg: Value) -> Setup {
        let cp = ControlPlane::start(Some(snapshot(&config(cfg), 1))).await;
        let node = start_node(vec![cp.url()], None).await;
        cp.expect_ack(1).await;
        wait_listener(listener).await;
        Setup { cp, node, listener }
    }

    async fn revise(&self, cfg: Value, revision: u64) {
        self.cp.send_snapshot(snapshot(&config(cfg), revision)).await;
        self.cp.expect_ack(revision).await;
    }

    async fn stop(self) {
        self.node.shutdown().await;
        self.cp.stop().await;
    }
}

/// Listener `main` on `listener`, cluster `api`, and route `r` to it with `route` merged in.
fn single(listener: SocketAddr, cluster: Value, route: Value) -> Value {
    let mut r = json!({"listener": "main", "backends": [{"cluster": "api"}]});
    if let Value::Object(extra) = route {
        r.as_object_mut().unwrap().extend(extra);
    }
    json!({
        "clusters": {"api": cluster},
        "listeners": {"main": {"address": listener.to_string(), "protocol": "http"}},
        "routes": {"r": r}
    })
}

fn endpoints(addrs: &[SocketAddr]) -> Value {
    Value::Array(addrs.iter().map(|a| json!({"address": a.to_string()})).collect())
}

fn named(backends: &[&Controlled]) -> Value {
    Value::Array(backends.iter().map(|b| json!({"address": b.addr.to_string(), "name": b.name})).collect())
}

/// A budget that never limits these tests (the default, 20 % + 10/s, would cut the retries of
/// tests where half the requests need one).
fn ample() -> Value {
    json!({"percent": 400, "min_per_s": 1000})
}

async fn get_ok(addr: SocketAddr) -> RawResponse {
    send_once(addr, "GET", "/", &[], b"").await
}

// ------------------------------------------------------------------------------------ retries

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_are_retried_for_any_method() {
    let live = Controlled::start("live").await;
    let listener = free_addr();
    let (dead, _dead) = refusing_addr();
    let cluster = json!({"endpoints": endpoints(&[dead, live.addr])});
    let route = json!({"retries": {"attempts": 2, "on": ["connect_failure"], "budget": ample()}});
    let s = Setup::start(listener, single(listener, cluster, route)).await;

    for i in 0..200 {
        let r = get_ok(s.listener).await;
        assert_eq!(r.status, 200, "GET {i}: {}", r.raw);
        assert_eq!(backend_of(&r), "live");
    }
    // No byte reached the dead endpoint: a POST with a body is retried too, body intact.
    for i in 0..50 {
        let r = send_once(s.listener, "POST", "/submit", &[], b"hello=world").await;
        assert_eq!(r.status, 200, "POST {i}: {}", r.raw);
        assert!(r.body.contains("body_len=11"), "body lost on the retry: {}", r.raw);
    }
    assert_eq!(live.hits(), 250);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_endpoint_is_given_up_on_after_the_clusters_connect_timeout() {
    let live = Controlled::start("live").await;
    let listener = free_addr();
    let (silent, _silent) = silent_addr();
    // Without `connect_timeout_ms`, a connect there takes 5 s to fail.
    let cluster = json!({"endpoints": endpoints(&[silent, live.addr]), "connect_timeout_ms": 300});
    let route = json!({"retries": {"attempts": 2, "on": ["connect_failure"], "budget": ample()}});
    let s = Setup::start(listener, single(listener, cluster, route)).await;
    for i in 0..4 {
        let started = std::time::Instant::now();
        let r = get_ok(s.listener).await;
        assert_eq!(r.status, 200, "GET {i}: {}", r.raw);
        assert_eq!(backend_of(&r), "live");
        assert!(started.elapsed() < Duration::from_millis(1500), "GET {i} took {:?}", started.elapsed());
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundreds_are_retried_only_for_idempotent_requests() {
    let (bad, good) = (Controlled::start("bad").await, Controlled::start("good").await);
    bad.set_status(503);
    let listener = free_addr();
    let cluster = json!({"lb_policy": "round_robin", "endpoints": endpoints(&[bad.addr, good.addr])});
    let route = json!({"retries": {"attempts": 1, "on": ["5xx"], "budget": ample()}});
    let s = Setup::start(listener, single(listener, cluster, route)).await;

    for i in 0..100 {
        let r = get_ok(s.listener).await;
        assert_eq!(r.status, 200, "GET {i}: {}", r.raw);
        assert_eq!(backend_of(&r), "good");
    }
    assert_eq!(good.hits(), 100);
    // Round robin sent about half of the first tries to the failing endpoint.
    assert!(bad.hits() >= 20, "only {} GETs went to the failing endpoint first", bad.hits());

    bad.reset_counts();
    good.reset_counts();
    let (mut failed, mut ok) = (0, 0);
    for i in 0..40 {
        let r = send_once(s.listener, "POST", "/order", &[], b"item=1").await;
        match r.status {
            503 => {
                assert_eq!(backend_of(&r), "bad", "{}", r.raw);
                failed += 1;
            }
            200 => ok += 1,
            _ => panic!("POST {i}: {}", r.raw),
        }
    }
    assert!(failed > 0, "a non-idempotent POST was retried on 5xx");
    assert_eq!(bad.hits(), failed, "every POST the failing endpoint saw reached the client as is");
    assert_eq!(good.hits(), ok);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_are_retried_for_gets() {
    let (reset, good) = (Controlled::start("reset").await, Controlled::start("good").await);
    reset.set_reset(true);
    let listener = free_addr();
    let cluster = json!({"endpoints": endpoints(&[reset.addr, good.addr])});
    let route = json!({"retries": {"attempts": 1, "on": ["reset"], "budget": ample()}});
    let s = Setup::start(listener, single(listener, cluster, route)).await;

    for i in 0..50 {
        let r = get_ok(s.listener).await;
        assert_eq!(r.status, 200, "GET {i}: {}", r.raw);
        assert_eq!(backend_of(&r), "good");
    }
    assert!(reset.hits() >= 10, "only {} GETs reached the resetting endpoint", reset.hits());
    assert_eq!(good.hits(), 50);

    // A POST may have had an effect before the connection dropped: never replayed.
    reset.reset_counts();
    let mut failed = 0;
    for i in 0..20 {
        let r = send_once(s.listener, "POST", "/order", &[], b"item=1").await;
        match r.status {
            502 => failed += 1,
            200 => {}
            _ => panic!("POST {i}: {}", r.raw),
        }
    }
    assert!(failed > 0, "a POST was retried after a reset");
    assert_eq!(reset.hits(), failed);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_try_timeout_moves_on_to_another_endpoint() {
    let (slow, fast) = (Controlled::start("slow").await, Controlled::start("fast").await);
    slow.set_delay(Duration::from_secs(2));
    let listener = free_addr();
    let cluster = json!({"endpoints": endpoints(&[slow.addr, fast.addr])});
    let route = json!({"timeout_ms": 5000,
                       "retries": {"attempts": 1, "on": ["reset"], "per_try_timeout_ms": 200, "budget": ample()}});
    let s = Setup::start(listener, single(listener, cluster, route)).await;

    for i in 0..20 {
        let started = Instant::now();
        let r = get_ok(s.listener).await;
        assert_eq!(r.status, 200, "GET {i}: {}", r.raw);
        assert_eq!(backend_of(&r), "fast");
        assert!(started.elapsed() < Duration::from_secs(1), "GET {i} took {:?}", started.elapsed());
    }
    assert!(slow.hits() >= 4, "only {} tries went to the slow endpoint", slow.hits());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_stops_a_retry_storm() {
    let (a, b) = (Controlled::start("a").await, Controlled::start("b").await);
    a.set_status(503);
    b.set_status(503);
    let listener = free_addr();
    let cluster = json!({"endpoints": endpoints(&[a.addr, b.addr])});
    let route = json!({"retries": {"attempts": 3, "on": ["5xx"], "budget": {"percent": 20, "min_per_s": 1}}});
    let s = Setup::start(listener, single(listener, cluster, route)).await;

    const REQUESTS: usize = 300;
    let next = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let next = next.clone();
        let addr = s.listener;
        clients.push(tokio::spawn(async move {
            let mut client = Client::new(addr);
            let mut statuses = Vec::new();
            while next.fetch_add(1, Ordering::SeqCst) < REQUESTS {
                statuses.push(client.get("/").await.map(|r| r.status));
            }
            statuses
        }));
    }
    let mut answered = 0;
    for c in clients {
        for st in c.await.unwrap() {
            assert_eq!(st, Ok(503));
            answered += 1;
        }
    }
    assert_eq!(answered, REQUESTS);
    // Without a budget: 4 tries each, 1200. With it: 20 % more than the requests, plus the
    // floor of 1 retry a second and the small balance a route may bank.
    let hits = a.hits() + b.hits();
    assert!((REQUESTS..=REQUESTS * 6 / 5 + 15).contains(&hits), "{hits} tries for {REQUESTS} requests");
    let retries = metric(&s.node, "sluice_route_retries_total", &[("route", "r")]).await;
    assert_eq!(retries, Some((hits - REQUESTS) as f64), "retries made = tries beyond the first");
    let exhausted = metric(&s.node, "sluice_route_retry_budget_exhausted_total", &[("route", "r")]).await;
    assert!(exhausted.is_some_and(|n| n > 0.0), "budget exhaustion not counted: {exhausted:?}");
    s.stop().await;
}

// ------------------------------------------------------------------------------------ sticky

/// The `Set-Cookie` for `name` in `r`: its value and its attributes.
fn set_cookie(r: &RawResponse, name: &str) -> Option<(String, Vec<String>)> {
    let head = r.raw.split("\r\n\r\n").next().unwrap_or("");
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        if !k.trim().eq_ignore_ascii_case("set-cookie") {
            return None;
        }
        let mut parts = v.split(';').map(str::trim);
        let value = parts.next()?.strip_prefix(name)?.strip_prefix('=')?.to_string();
        Some((value, parts.map(str::to_string).collect()))
    })
}

/// The value with one character of its signature changed (not the last, whose low bits may be
/// padding a lenient decoder ignores).
fn tamper(v: &str) -> String {
    let mut c: Vec<char> = v.chars().collect();
    let i = c.len() - 3;
    c[i] = if c[i] == 'A' { 'B' } else { 'A' };
    c.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_cookies_pin_resist_tampering_redispatch_and_survive_revisions() {
    let backends =
        [Controlled::start("api-1").await, Controlled::start("api-2").await, Controlled::start("api-3").await];
    let fourth = Controlled::start("api-4").await;
    let listener = free_addr();
    let route = json!({"sticky": {"cookie": "sid", "ttl_s": 3600},
                       "retries": {"attempts": 2, "on": ["connect_failure", "reset"], "budget": ample()}});
    let three: Vec<&Controlled> = backends.iter().collect();
    let s = Setup::start(listener, single(listener, json!({"endpoints": named(&three)}), route.clone())).await;
    let with = |cookie: String| async move { send_once(listener, "GET", "/", &[("cookie", &cookie)], b"").await };

    let first = get_ok(listener).await;
    assert_eq!(first.status, 200, "{}", first.raw);
    let pinned = backend_of(&first);
    let (value, attrs) = set_cookie(&first, "sid").unwrap_or_else(|| panic!("no sticky cookie: {}", first.raw));
    for want in ["Path=/", "HttpOnly", "Max-Age=3600"] {
        assert!(attrs.iter().any(|a| a.eq_ignore_ascii_case(want)), "{want} missing: {attrs:?}");
    }
    for b in &backends {
        let port = b.addr.port().to_string();
        assert!(!value.contains(&b.addr.to_string()) && !value.contains("127.0.0.1"), "address in {value}");
        assert!(value.split(|c: char| !c.is_ascii_alphanumeric()).all(|t| t != port), "port in {value}");
    }
    assert!(value.contains(&pinned), "the cookie {value} does not name endpoint {pinned}");

    for i in 0..30 {
        let r = with(format!("sid={value}")).await;
        assert_eq!(r.status, 200, "{}", r.raw);
        assert_eq!(backend_of(&r), pinned, "request {i} left its pinned endpoint");
        assert!(set_cookie(&r, "sid").is_none(), "a valid cookie was replaced: {}", r.raw);
    }

    let forged = tamper(&value);
    let r = with(format!("sid={forged}")).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    let reissued = set_cookie(&r, "sid").unwrap_or_else(|| panic!("a forged cookie was honoured: {}", r.raw));
    assert_ne!(reissued.0, forged);

    // The pinned endpoint dies: the request goes elsewhere and the client is re-pinned there.
    let dead = backends.iter().find(|b| b.name == pinned).unwrap();
    dead.kill().await;
    let r = with(format!("sid={value}")).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    let moved = backend_of(&r);
    assert_ne!(moved, pinned);
    let (value2, _) = set_cookie(&r, "sid").unwrap_or_else(|| panic!("no new cookie after redispatch: {}", r.raw));
    assert!(value2.contains(&moved), "the new cookie {value2} does not name endpoint {moved}");
    for i in 0..10 {
        let r = with(format!("sid={value2}")).await;
        assert_eq!((r.status, backend_of(&r)), (200, moved.clone()), "request {i}: {}", r.raw);
        assert!(set_cookie(&r, "sid").is_none(), "{}", r.raw);
    }

    // A revision that adds an endpoint keeps the pin (the cookie among others).
    let four: Vec<&Controlled> = backends.iter().chain([&fourth]).collect();
    s.revise(single(listener, json!({"endpoints": named(&four)}), route), 2).await;
    for i in 0..10 {
        let r = with(format!("theme=dark; sid={value2}; lang=en")).await;
        assert_eq!((r.status, backend_of(&r)), (200, moved.clone()), "request {i} after the revision: {}", r.raw);
        assert!(set_cookie(&r, "sid").is_none(), "{}", r.raw);
    }
    s.stop().await;
}

// ------------------------------------------------------------------------------------ hash_on

fn hash_config(listener: SocketAddr, policy: &str, backends: &[&Controlled]) -> Value {
    let eps = Value::Array(backends.iter().map(|b| json!({"address": b.addr.to_string()})).collect());
    json!({
        "clusters": {"api": {"lb_policy": policy, "endpoints": eps}},
        "listeners": {"main": {"address": listener.to_string(), "protocol": "http"}},
        "routes": {
            "by-header": {"listener": "main", "match": {"hosts": ["h.test"]}, "backends": [{"cluster": "api"}],
                          "hash_on": {"header": "x-user"}},
            "by-cookie": {"listener": "main", "match": {"hosts": ["c.test"]}, "backends": [{"cluster": "api"}],
                          "hash_on": {"cookie": "uid"}}
        }
    })
}

async fn user_get(listener: SocketAddr, user: &str) -> String {
    let r = send_once(listener, "GET", "/", &[("host", "h.test"), ("x-user", user)], b"").await;
    assert_eq!(r.status, 200, "{}", r.raw);
    backend_of(&r)
}

async fn hash_on_keeps_users_on_their_endpoint(policy: &str) {
    let backends = [
        Controlled::start("h1").await,
        Controlled::start("h2").await,
        Controlled::start("h3").await,
        Controlled::start("h4").await,
    ];
    let all: Vec<&Controlled> = backends.iter().collect();
    let listener = free_addr();
    let s = Setup::start(listener, hash_config(listener, policy, &all)).await;

    let users: Vec<String> = (0..60).map(|i| format!("user-{i}")).collect();
    let mut home = BTreeMap::new();
    for u in &users {
        let first = user_get(listener, u).await;
        for _ in 0..2 {
            assert_eq!(user_get(listener, u).await, first, "{policy}: {u} moved between requests");
        }
        home.insert(u.clone(), first);
    }
    let mut per_endpoint: BTreeMap<String, usize> = BTreeMap::new();
    for b in home.values() {
        *per_endpoint.entry(b.clone()).or_default() += 1;
    }
    assert!(per_endpoint.len() >= 3, "{policy}: 60 users on {per_endpoint:?}");

    // Without the header: an ordinary pick, spread over the endpoints.
    let mut seen = BTreeSet::new();
    for _ in 0..20 {
        let r = send_once(listener, "GET", "/", &[("host", "h.test")], b"").await;
        assert_eq!(r.status, 200, "{}", r.raw);
        seen.insert(backend_of(&r));
    }
    assert!(seen.len() >= 2, "{policy}: requests without the key all went to {seen:?}");

    // A cookie as the key.
    let mut cookie_homes = BTreeSet::new();
    for i in 0..8 {
        let cookie = format!("theme=dark; uid=u{i}");
        let mut got = BTreeSet::new();
        for _ in 0..3 {
            let r = send_once(listener, "GET", "/", &[("host", "c.test"), ("cookie", &cookie)], b"").await;
            assert_eq!(r.status, 200, "{}", r.raw);
            got.insert(backend_of(&r));
        }
        assert_eq!(got.len(), 1, "{policy}: cookie user u{i} on {got:?}");
        cookie_homes.extend(got);
    }
    assert!(cookie_homes.len() >= 2, "{policy}: 8 cookie users all on {cookie_homes:?}");

    // The endpoint with the fewest (but some) users leaves: they move, the others mostly stay.
    let (gone, _) = per_endpoint.iter().min_by_key(|(_, n)| **n).map(|(b, n)| (b.clone(), *n)).unwrap();
    let rest: Vec<&Controlled> = backends.iter().filter(|b| b.name != gone).collect();
    s.revise(hash_config(listener, policy, &rest), 2).await;
    let (mut moved, mut stayed_moved, mut stayed) = (0, 0, 0);
    for u in &users {
        let now = user_get(listener, u).await;
        assert_ne!(now, gone, "{policy}: {u} still sent to the removed endpoint");
        let before = &home[u];
        if before != &gone {
            stayed += 1;
            if &now != before {
                stayed_moved += 1;
            }
        }
        if &now != before {
            moved += 1;
        }
    }
    assert!(moved <= users.len() * 2 / 5, "{policy}: {moved} of {} users moved", users.len());
    assert!(stayed_moved * 4 <= stayed, "{policy}: {stayed_moved} of {stayed} users whose endpoint stayed moved");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_on_with_ring_hash() {
    hash_on_keeps_users_on_their_endpoint("ring_hash").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_on_with_maglev() {
    hash_on_keeps_users_on_their_endpoint("maglev").await;
}

// ------------------------------------------------------------------------------------ least_request

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_favours_the_fast_endpoint() {
    let (fast, slow) = (Controlled::start("fast").await, Controlled::start("slow").await);
    slow.set_delay(Duration::from_millis(50));
    let listener = free_addr();
    let cluster = json!({"lb_policy": "least_request", "endpoints": endpoints(&[fast.addr, slow.addr])});
    let s = Setup::start(listener, single(listener, cluster, json!({}))).await;

    let mut clients = Vec::new();
    for _ in 0..16 {
        let addr = s.listener;
        clients.push(tokio::spawn(async move {
            let mut client = Client::new(addr);
            for _ in 0..20 {
                let r = client.get("/").await.unwrap();
                assert_eq!(r.status, 200, "{}", r.raw);
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    let (f, sl) = (fast.hits(), slow.hits());
    assert_eq!(f + sl, 320);
    assert!(f * 10 > (f + sl) * 7, "fast {f}, slow {sl}");
    s.stop().await;
}

// ------------------------------------------------------------------------------------ circuit breaking

/// `n` GETs at once, each on its own connection.
async fn concurrent_gets(addr: SocketAddr, n: usize) -> Vec<RawResponse> {
    let tasks: Vec<_> = (0..n).map(|_| tokio::spawn(async move { get_ok(addr).await })).collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

async fn breaker_setup(limits: Value) -> (Setup, Controlled) {
    let backend = Controlled::start("slow").await;
    backend.set_delay(Duration::from_millis(300));
    let listener = free_addr();
    let cluster = json!({"endpoints": endpoints(&[backend.addr]), "circuit_breaker": limits});
    let s = Setup::start(listener, single(listener, cluster, json!({"timeout_ms": 5000}))).await;
    (s, backend)
}

/// (answered 200, refused by the breaker on `limit`); panics on anything else.
fn tally(responses: &[RawResponse], limit: &str) -> (usize, usize) {
    let (mut ok, mut overflow) = (0, 0);
    for r in responses {
        if r.status == 200 {
            ok += 1;
        } else {
            assert_eq!(r.status, 503, "{}", r.raw);
            assert_eq!(r.headers.get("x-sluice-overflow").map(String::as_str), Some(limit), "{}", r.raw);
            assert_eq!(r.body.trim(), format!("circuit breaker open: {limit}"));
            overflow += 1;
        }
    }
    (ok, overflow)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_breaker_bounds_requests_in_flight() {
    let (s, backend) = breaker_setup(json!({"max_requests": 2})).await;
    let responses = concurrent_gets(s.listener, 10).await;
    let (ok, overflow) = tally(&responses, "requests");
    assert!(ok >= 2 && overflow >= 1, "{ok} answered, {overflow} refused");
    assert_eq!(backend.hits(), ok, "a refused request reached the backend");
    assert!(backend.max_in_flight() <= 2, "{} requests at once behind max_requests 2", backend.max_in_flight());
    let counted = metric(&s.node, "sluice_cluster_overflow_total", &[("cluster", "api"), ("limit", "requests")]).await;
    assert_eq!(counted, Some(overflow as f64));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_breaker_without_room_to_wait_refuses_at_once() {
    let (s, backend) = breaker_setup(json!({"max_connections": 1, "max_pending": 0})).await;
    let started = Instant::now();
    let responses = concurrent_gets(s.listener, 3).await;
    // The first request opens the only connection; the others find none idle and may not wait.
    let (ok, overflow) = tally(&responses, "pending");
    assert!(ok >= 1 && overflow >= 1, "{ok} answered, {overflow} refused");
    assert!(backend.max_open() <= 1, "{} connections behind max_connections 1", backend.max_open());
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    let counted = metric(&s.node, "sluice_cluster_overflow_total", &[("cluster", "api"), ("limit", "pending")]).await;
    assert!(counted.is_some_and(|n| n > 0.0), "{counted:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_breaker_queues_pending_requests_on_one_connection() {
    let (s, backend) = breaker_setup(json!({"max_connections": 1, "max_pending": 10})).await;
    let started = Instant::now();
    let responses = concurrent_gets(s.listener, 5).await;
    for r in &responses {
        assert_eq!(r.status, 200, "{}", r.raw);
    }
    assert_eq!(backend.hits(), 5);
    assert!(backend.max_open() <= 1, "{} connections behind max_connections 1", backend.max_open());
    assert_eq!(backend.max_in_flight(), 1);
    // One connection, one request at a time: 5 x 300 ms.
    assert!(started.elapsed() >= Duration::from_millis(1400), "5 requests served in {:?}", started.elapsed());
    s.stop().await;
}
