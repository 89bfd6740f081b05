//! The L7 proxy end to end: a real node fed by a mock control plane, real HTTP backends.

mod support;

use std::net::SocketAddr;

use serde_json::json;
use sluice_data_plane::Node;
use sluice_shared::proto::v1 as pb;
use support::*;

struct Setup {
    cp: ControlPlane,
    node: Node,
    listener: SocketAddr,
    api: Backend,
    web: Backend,
    /// Keeps the "dead" cluster's port refusing (see `refusing_addr`).
    _dead: socket2::Socket,
}

async fn setup() -> Setup {
    let api = Backend::start("api").await;
    let web = Backend::start("web").await;
    let listener = free_addr();
    let (dead, dead_socket) = refusing_addr();
    let cfg = config(json!({
        "clusters": {
            "api": {"endpoints": [{"address": api.addr.to_string()}]},
            "web": {"endpoints": [{"address": web.addr.to_string()}]},
            "dead": {"endpoints": [{"address": dead.to_string()}]},
            "empty": {"endpoints": []}
        },
        "listeners": {"main": {"address": listener.to_string(), "protocol": "http"}},
        "routes": {
            "api": {"listener": "main", "match": {"hosts": ["myshop.com"], "path": {"prefix": "/api/"}},
                    "backends": [{"cluster": "api"}]},
            "web": {"listener": "main", "match": {"hosts": ["myshop.com"]}, "backends": [{"cluster": "web"}]},
            "dead": {"listener": "main", "match": {"hosts": ["dead.test"]}, "backends": [{"cluster": "dead"}]},
            "empty": {"listener": "main", "match": {"hosts": ["empty.test"]}, "backends": [{"cluster": "empty"}]},
            "slow": {"listener": "main", "match": {"hosts": ["slow.test"]}, "backends": [{"cluster": "api"}],
                     "timeout_ms": 300}
        }
    }));
    let cp = ControlPlane::start(Some(snapshot(&cfg, 1))).await;
    let node = start_node(vec![cp.url()], None).await;
    assert!(matches!(cp.reply_to(1).await, pb::node_message::Msg::Ack(_)));
    eventually("listener up", || async { try_get(listener, "myshop.com", "/").await }).await;
    Setup { cp, node, listener, api, web, _dead: dead_socket }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_and_path_and_answers_errors() {
    let s = setup().await;
    let r = get(s.listener, "MyShop.com:8080", "/api/orders?x=1").await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("backend=api") && r.body.contains("path=/api/orders"), "{}", r.body);
    let r = get(s.listener, "myshop.com", "/index.html").await;
    assert!(r.body.contains("backend=web"), "{}", r.body);

    let cases = [
        ("nothing.test", "/", 404, "no route"),
        ("empty.test", "/", 503, "no healthy endpoint"),
        ("dead.test", "/", 502, "upstream connect failure"),
        ("slow.test", "/slow", 504, "upstream timeout"),
    ];
    for (host, path, status, body) in cases {
        let r = get(s.listener, host, path).await;
        assert_eq!(r.status, status, "{host}: {}", r.raw);
        assert_eq!(r.body.trim(), body);
        assert!(r.headers["content-type"].starts_with("text/plain"));
    }
    // Upstream connections are pooled: fresh client connections reuse them.
    let conns = s.web.connections.load(std::sync::atomic::Ordering::SeqCst);
    for _ in 0..10 {
        assert_eq!(get(s.listener, "myshop.com", "/").await.status, 200);
    }
    assert!(s.web.connections.load(std::sync::atomic::Ordering::SeqCst) <= conns + 1, "no upstream keep-alive");
    // Upstream status codes pass through untouched.
    assert_eq!(get(s.listener, "myshop.com", "/status/503").await.status, 503);

    let metrics = admin(&s.node, "/metrics").await.body;
    assert!(metrics.contains("sluice_requests_total{route=\"api\",cluster=\"api\",class=\"2xx\"} 1"), "{metrics}");
    assert!(metrics.contains("sluice_requests_total{route=\"\",cluster=\"\",class=\"4xx\"} 1"), "{metrics}");
    assert!(metrics.contains("sluice_requests_total{route=\"slow\",cluster=\"api\",class=\"5xx\"} 1"), "{metrics}");
    assert!(metrics.contains("sluice_upstream_latency_seconds_count{cluster=\"api\"}"), "{metrics}");
    assert!(metrics.contains("sluice_config_revision 1"), "{metrics}");
    assert!(metrics.contains("sluice_active_connections{listener=\"main\"}"), "{metrics}");
    s.node.shutdown().await;
    s.cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers() {
    let s = setup().await;
    let r = raw(
        s.listener,
        b"GET /api/x HTTP/1.1\r\nHost: myshop.com\r\nX-Forwarded-For: 10.0.0.1\r\nConnection: close, x-drop\r\n\
          X-Drop: 1\r\nKeep-Alive: timeout=5\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    let b = &r.body;
    assert!(b.contains("x-forwarded-for: 10.0.0.1, 127.0.0.1\n"), "{b}");
    assert!(b.contains("x-forwarded-proto: http\n"), "{b}");
    assert!(b.contains("x-forwarded-host: myshop.com\n"), "{b}");
    assert!(b.contains("host: myshop.com\n"), "{b}");
    let id = b.lines().find_map(|l| l.strip_prefix("x-request-id: ")).expect("generated x-request-id");
    assert_eq!(id.len(), 36);
    assert!(!b.contains("x-drop") && !b.contains("keep-alive"), "hop-by-hop headers forwarded: {b}");

    let r = raw(s.listener, b"GET /api/x HTTP/1.1\r\nHost: myshop.com\r\nX-Request-Id: abc-123\r\n\r\n").await;
    assert!(r.body.contains("x-request-id: abc-123\n"), "{}", r.body);
    s.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_never_reach_a_backend() {
    let s = setup().await;
    let long_line = format!("GET /api/{} HTTP/1.1\r\nHost: myshop.com\r\n\r\n", "a".repeat(9000));
    let big_head = format!("GET /api/ HTTP/1.1\r\nHost: myshop.com\r\nX-Big: {}\r\n\r\n", "b".repeat(70_000));
    let many: String = (0..101).map(|i| format!("X-H{i}: 1\r\n")).collect();
    let many_headers = format!("GET /api/ HTTP/1.1\r\nHost: myshop.com\r\n{many}\r\n");
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("CL then TE", b"POST /api/ HTTP/1.1\r\nHost: myshop.com\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), 400),
        ("TE then CL", b"POST /api/ HTTP/1.1\r\nHost: myshop.com\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n".to_vec(), 400),
        ("differing CLs", b"POST /api/ HTTP/1.1\r\nHost: myshop.com\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab".to_vec(), 400),
        ("bad CL", b"POST /api/ HTTP/1.1\r\nHost: myshop.com\r\nContent-Length: 1x\r\n\r\na".to_vec(), 400),
        ("TE not chunked", b"POST /api/ HTTP/1.1\r\nHost: myshop.com\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(), 400),
        ("control byte", b"GET /api/ HTTP/1.1\r\nHost: myshop.com\r\nX-A: a\x01b\r\n\r\n".to_vec(), 400),
        ("NUL byte", b"GET /api/ HTTP/1.1\r\nHost: myshop.com\r\nX-A: a\x00b\r\n\r\n".to_vec(), 400),
        ("obs-fold", b"GET /api/ HTTP/1.1\r\nHost: myshop.com\r\nX-A: a\r\n b\r\n\r\n".to_vec(), 400),
        ("no Host", b"GET /api/ HTTP/1.1\r\n\r\n".to_vec(), 400),
        ("two Hosts", b"GET /api/ HTTP/1.1\r\nHost: myshop.com\r\nHost: evil.com\r\n\r\n".to_vec(), 400),
        ("bad version", b"GET /api/ HTTP/2.7\r\nHost: myshop.com\r\n\r\n".to_vec(), 400),
        ("long request line", long_line.into_bytes(), 414),
        ("head over 64 KiB", big_head.into_bytes(), 431),
        ("101 headers", many_headers.into_bytes(), 431),
    ];
    for (what, request, status) in cases {
        let before = s.api.hits() + s.web.hits();
        let r = raw(s.listener, &request).await;
        assert_eq!(r.status, status, "{what}: {}", r.raw);
        // The proxy's own answer (hyper's automatic ones have no body).
        assert!(!r.body.trim().is_empty(), "{what}: {}", r.raw);
        assert_eq!(r.headers.get("connection").map(String::as_str), Some("close"), "{what}");
        assert_eq!(s.api.hits() + s.web.hits(), before, "{what} reached a backend");
    }
    let metrics = admin(&s.node, "/metrics").await.body;
    assert!(metrics.contains("sluice_requests_total{route=\"\",cluster=\"\",class=\"4xx\"} 14"), "{metrics}");
    s.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_pipelining_and_a_bad_request_after_good_ones() {
    let s = setup().await;
    // A chunked POST, a GET, then a smuggling attempt: the first two are answered, the third
    // refused, and only two requests reach the backend.
    let r = raw(
        s.listener,
        b"POST /api/a HTTP/1.1\r\nHost: myshop.com\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n\
          GET /api/b HTTP/1.1\r\nHost: myshop.com\r\n\r\n\
          POST /api/c HTTP/1.1\r\nHost: myshop.com\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await;
    let statuses: Vec<&str> = r.raw.match_indices("HTTP/1.1 ").map(|(i, _)| &r.raw[i + 9..i + 12]).collect();
    assert_eq!(statuses, vec!["200", "200", "400"], "{}", r.raw);
    assert!(r.raw.contains("path=/api/a") && r.raw.contains("body=hello"), "{}", r.raw);
    assert!(r.raw.contains("path=/api/b"));
    assert_eq!(s.api.hits(), 2);

    // A body with Content-Length, then another request on the same connection.
    let r = raw(
        s.listener,
        b"POST /api/d HTTP/1.1\r\nHost: myshop.com\r\nContent-Length: 4\r\n\r\nabcdGET /x HTTP/1.1\r\nHost: myshop.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(r.raw.contains("body=abcd") && r.raw.contains("backend=web"), "{}", r.raw);
    s.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_go_to_another_endpoint() {
    let live = Backend::start("live").await;
    let listener = free_addr();
    let (dead, _dead) = refusing_addr();
    let cfg = config(json!({
        "clusters": {"mixed": {"endpoints": [
            {"address": dead.to_string()},
            {"address": live.addr.to_string()}
        ]}},
        "listeners": {"main": {"address": listener.to_string(), "protocol": "http"}},
        "routes": {"r": {"listener": "main", "backends": [{"cluster": "mixed"}],
                         "retries": {"attempts": 1, "on": ["connect_failure"]}}}
    }));
    let cp = ControlPlane::start(Some(snapshot(&cfg, 1))).await;
    let node = start_node(vec![cp.url()], None).await;
    assert!(matches!(cp.reply_to(1).await, pb::node_message::Msg::Ack(_)));
    eventually("listener up", || async { try_get(listener, "x", "/").await }).await;
    // Round robin alternates; every request still lands on the live endpoint.
    for _ in 0..6 {
        let r = get(listener, "x", "/").await;
        assert_eq!(r.status, 200, "{}", r.raw);
    }
    node.shutdown().await;
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_routes_limit_get_413_and_never_reach_the_backend() {
    let api = Backend::start("api").await;
    let listener = free_addr();
    let cfg = config(json!({
        "clusters": {"api": {"endpoints": [{"address": api.addr.to_string()}]}},
        "listeners": {"main": {"address": listener.to_string(), "protocol": "http"}},
        "routes": {"upload": {"listener": "main", "backends": [{"cluster": "api"}], "max_request_body_bytes": 10}}
    }));
    let cp = ControlPlane::start(Some(snapshot(&cfg, 1))).await;
    let node = start_node(vec![cp.url()], None).await;
    cp.expect_ack(1).await;
    eventually("listener up", || async { try_get(listener, "a.test", "/").await }).await;
    let hits = api.hits();

    // Within the limit, announced or chunked: forwarded.
    let ok = raw(listener, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n0123456789").await;
    assert_eq!(ok.status, 200, "{}", ok.raw);
    let ok =
        raw(listener, b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n01234\r\n0\r\n\r\n").await;
    assert_eq!(ok.status, 200, "{}", ok.raw);
    assert_eq!(api.hits(), hits + 2);

    // Announced over the limit: 413 before anything is sent upstream, and the connection closes.
    let r = raw(listener, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n0123456789A").await;
    assert_eq!(r.status, 413, "{}", r.raw);
    assert!(r.body.contains("request body too large") && r.raw.to_ascii_lowercase().contains("connection: close"));
    assert_eq!(api.hits(), hits + 2);

    // Chunked past the limit: the stream to the endpoint is cut and the client gets 413.
    let r = raw(
        listener,
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n01234567\r\n8\r\n89ABCDEF\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 413, "{}", r.raw);
    node.shutdown().await;
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways() {
    let s = setup().await;
    // 2 MiB announced by Content-Length, then 1 MiB sent chunked in 64 KiB chunks: the backend
    // echoes each, so both directions go through many reads and partial writes.
    let body: String = (0..2 << 20).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    let mut req = format!(
        "POST /api/big HTTP/1.1\r\nHost: myshop.com\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body.as_bytes());
    let r = raw(s.listener, &req).await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains(&format!("body={body}\n")), "got {} bytes", r.body.len());

    let half = &body[..1 << 20];
    let mut req =
        b"POST /api/chunked HTTP/1.1\r\nHost: myshop.com\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            .to_vec();
    for piece in half.as_bytes().chunks(64 * 1024) {
        req.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        req.extend_from_slice(piece);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let r = raw(s.listener, &req).await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains(&format!("body={half}\n")), "got {} bytes", r.body.len());
    assert!(r.body.contains("transfer-encoding: chunked"), "sent on chunked: {}", &r.body[..300]);
    s.node.shutdown().await;
}

/// Reads from `s` until `what` has come (bounded by 10 s); returns everything read.
async fn read_until(s: &mut tokio::net::TcpStream, what: &str) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !String::from_utf8_lossy(&got).contains(what) {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf)).await.expect("timed out").unwrap();
        assert!(n > 0, "closed before {what:?}: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(got).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_split_anywhere_are_read_whole_and_answered_in_order() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = setup().await;
    let pipelined: &[u8] =
        b"POST /api/a HTTP/1.1\r\nHost: myshop.com\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
GET /api/b HTTP/1.1\r\nHost: myshop.com\r\n\r\n\
POST /api/c HTTP/1.1\r\nHost: myshop.com\r\nContent-Length: 4\r\n\r\nGET \
GET /api/d HTTP/1.1\r\nHost: myshop.com\r\nConnection: close\r\n\r\n";
    for piece in [1, 7, 4096] {
        let mut c = tokio::net::TcpStream::connect(s.listener).await.unwrap();
        c.set_nodelay(true).unwrap();
        for part in pipelined.chunks(piece) {
            c.write_all(part).await.unwrap();
            if piece < 10 {
                tokio::task::yield_now().await;
            }
        }
        let mut all = String::new();
        tokio::time::timeout(std::time::Duration::from_secs(10), c.read_to_string(&mut all)).await.unwrap().unwrap();
        let statuses: Vec<&str> = all.match_indices("HTTP/1.1 ").map(|(i, _)| &all[i + 9..i + 12]).collect();
        assert_eq!(statuses, ["200"; 4], "pieces of {piece}: {all}");
        let order: Vec<&str> = all.match_indices("path=/api/").map(|(i, _)| &all[i + 10..i + 11]).collect();
        assert_eq!(order, ["a", "b", "c", "d"], "pieces of {piece}");
        assert!(all.contains("body=abc\n") && all.contains("body=GET \n"), "{all}");
    }
    s.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continue_head_http10_and_date() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = setup().await;
    // Expect: 100-continue: the interim answer comes before the body is sent, then the answer.
    let mut c = tokio::net::TcpStream::connect(s.listener).await.unwrap();
    c.write_all(b"POST /api/up HTTP/1.1\r\nHost: myshop.com\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    let interim = read_until(&mut c, "\r\n\r\n").await;
    assert!(interim.starts_with("HTTP/1.1 100 Continue\r\n\r\n"), "{interim}");
    c.write_all(b"hello").await.unwrap();
    let answer = read_until(&mut c, "body=hello\n").await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");

    // HEAD: the head only, and the connection carries on with the next request.
    c.write_all(b"HEAD /api/h HTTP/1.1\r\nHost: myshop.com\r\n\r\nGET /api/after HTTP/1.1\r\nHost: myshop.com\r\n\r\n")
        .await
        .unwrap();
    let both = read_until(&mut c, "path=/api/after").await;
    assert_eq!(both.matches("HTTP/1.1 200 OK").count(), 2, "{both}");
    assert!(!both.contains("path=/api/h"), "a HEAD answer has no body: {both}");
    let head = parse(&both);
    assert!(head.headers.contains_key("content-length"), "{both}");
    // The backend's date, or ours: always there, and once; the backend's length once too.
    assert!(head.headers.get("date").is_some_and(|d| d.ends_with("GMT")), "{both}");
    let lower = both.to_ascii_lowercase();
    assert_eq!(lower.matches("\r\ndate: ").count(), 2, "{both}");
    assert_eq!(lower.matches("\r\ncontent-length: ").count(), 2, "{both}");
    assert!(!lower.contains("\r\nconnection: "), "the backend's hop-by-hop headers stay behind: {both}");

    // HTTP/1.0: closed after the answer unless the client asked for keep-alive.
    let mut old = tokio::net::TcpStream::connect(s.listener).await.unwrap();
    old.write_all(b"GET /api/one HTTP/1.0\r\nHost: myshop.com\r\n\r\n").await.unwrap();
    let mut all = String::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), old.read_to_string(&mut all)).await.unwrap().unwrap();
    assert!(all.contains("path=/api/one"), "{all}");
    let mut kept = tokio::net::TcpStream::connect(s.listener).await.unwrap();
    kept.write_all(b"GET /api/k1 HTTP/1.0\r\nHost: myshop.com\r\nConnection: keep-alive\r\n\r\n").await.unwrap();
    let first = read_until(&mut kept, "path=/api/k1").await;
    assert!(first.to_ascii_lowercase().contains("connection: keep-alive"), "{first}");
    kept.write_all(b"GET /api/k2 HTTP/1.0\r\nHost: myshop.com\r\n\r\n").await.unwrap();
    read_until(&mut kept, "path=/api/k2").await;
    s.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_chunked_body_ends_the_connection() {
    let s = setup().await;
    let flood = format!("1;{}\r\n", "e".repeat(17 * 1024));
    let trailers = format!("0\r\nx-t: {}\r\n\r\n", "t".repeat(70_000));
    let bodies: [(&str, &[u8]); 3] = [
        ("a bad chunk end", b"3\r\nabcX\r\n"),
        ("17 KiB of chunk extensions", flood.as_bytes()),
        ("70 KB of trailers", trailers.as_bytes()),
    ];
    for (what, body) in bodies {
        let mut req =
            b"POST /api/x HTTP/1.1\r\nHost: myshop.com\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n".to_vec();
        req.extend_from_slice(body);
        req.extend_from_slice(b"GET /api/never HTTP/1.1\r\nHost: myshop.com\r\n\r\n");
        let r = raw(s.listener, &req).await;
        // The client's fault, answered as such: not the endpoint's 502.
        assert_eq!(r.status, 400, "{what}: {}", r.raw);
        assert!(r.body.contains("request body could not be read"), "{what}: {}", r.raw);
        assert_eq!(r.headers.get("connection").map(String::as_str), Some("close"), "{what}");
        assert!(!r.raw.contains("path=/api/never"), "bytes after a broken body are never a request: {}", r.raw);
    }
    let metrics = admin(&s.node, "/metrics").await.body;
    assert!(!metrics.contains("class=\"5xx\""), "{metrics}");
    s.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_endpoint_is_answered_503_endpoint_connections() {
    let api = Backend::start("api").await;
    // An endpoint that takes requests and never answers: each one stays in flight.
    let hold = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let held_at = hold.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut kept = Vec::new();
        while let Ok((s, _)) = hold.accept().await {
            kept.push(s);
        }
    });
    let listener = free_addr();
    let cfg = config(json!({
        "clusters": {
            "api": {"endpoints": [{"address": api.addr.to_string()}]},
            "held": {"endpoints": [{"address": held_at.to_string(), "max_connections": 1}]}
        },
        "listeners": {"main": {"address": listener.to_string(), "protocol": "http"}},
        "routes": {
            "api": {"listener": "main", "match": {"hosts": ["a.test"]}, "backends": [{"cluster": "api"}]},
            "held": {"listener": "main", "match": {"hosts": ["held.test"]}, "backends": [{"cluster": "held"}]}
        }
    }));
    let cp = ControlPlane::start(Some(snapshot(&cfg, 1))).await;
    let node = start_node(vec![cp.url()], None).await;
    cp.expect_ack(1).await;
    eventually("listener up", || async { try_get(listener, "a.test", "/").await }).await;
    let first = tokio::spawn(get(listener, "held.test", "/one"));
    let gauge = format!("sluice_endpoint_active_requests{{cluster=\"held\",endpoint=\"{held_at}\"}} 1");
    eventually("the first request in flight", || async {
        admin(&node, "/metrics").await.body.contains(&gauge).then_some(())
    })
    .await;
    let r = get(listener, "held.test", "/two").await;
    assert_eq!(r.status, 503, "{}", r.raw);
    assert_eq!(r.body, "every endpoint at max_connections\n");
    assert_eq!(r.headers.get("x-sluice-overflow").map(String::as_str), Some("endpoint_connections"));
    first.abort();
    holder.abort();
    node.shutdown().await;
    cp.stop().await;
}
