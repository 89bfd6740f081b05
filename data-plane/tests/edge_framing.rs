//! Framing at the edge, raw bytes on the wire: bare LF line ends, transfer codings other than
//! chunked, and malformed trailers are refused and close the connection; what follows them on the
//! connection is never served.

mod support;

use std::net::SocketAddr;

use serde_json::json;
use sluice_data_plane::Node;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_lf_and_unknown_codings_never_reach_the_endpoint() {
    let (_cp, _node, addr, app) = one_route_node().await;
    let before = app.hits();
    let next = "GET /next HTTP/1.1\r\nHost: a.test\r\n\r\n";
    for (head, status) in [
        ("GET / HTTP/1.1\nHost: a.test\r\n\r\n".to_string(), 400),
        ("GET / HTTP/1.1\r\nHost: a.test\nX-Smuggle: 1\r\n\r\n".to_string(), 400),
        ("GET / HTTP/1.1\r\nHost: a.test\r\n\n".to_string(), 400),
        ("POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n".to_string(), 501),
    ] {
        let r = raw(addr, format!("{head}{next}").as_bytes()).await;
        assert_eq!(r.status, status, "{head:?}: {}", r.raw);
        assert_eq!(r.headers.get("connection").map(String::as_str), Some("close"), "{head:?}");
        assert_eq!(r.raw.matches("HTTP/1.1 ").count(), 1, "the pipelined request is not served: {}", r.raw);
    }
    assert_eq!(app.hits(), before, "nothing refused reaches the endpoint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_trailer_is_a_400_and_ends_the_connection() {
    let (_cp, _node, addr, _app) = one_route_node().await;
    let next = "GET /next HTTP/1.1\r\nHost: a.test\r\n\r\n";
    for trailer in ["bad trailer\r\n", "x-a: 1\n", ": v\r\n", "x-a:\x01\r\n"] {
        let req = format!(
            "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n{trailer}\r\n{next}"
        );
        let r = raw(addr, req.as_bytes()).await;
        assert_eq!(r.status, 400, "{trailer:?}: {}", r.raw);
        assert_eq!(
            r.raw.matches("HTTP/1.1 ").count(),
            1,
            "{trailer:?}: the pipelined request is not served: {}",
            r.raw
        );
    }
    // A valid trailer is taken (and dropped), and the next request served.
    let req = format!(
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nx-a: b\r\n\r\n{next}"
    );
    let r = raw(addr, req.as_bytes()).await;
    assert_eq!(r.raw.matches("HTTP/1.1 200").count(), 2, "{}", r.raw);
}

/// Two endpoints that outlier detection ejects after one failure, a route timeout shorter than
/// a slow upload, and a body timeout.
async fn slow_upload_edge() -> (ControlPlane, Node, SocketAddr, Backend, Backend) {
    let (one, two) = (Backend::start("one").await, Backend::start("two").await);
    let listener = free_addr();
    let cfg = config(json!({
        "clusters": {"app": {"endpoints": [{"address": one.addr.to_string()}, {"address": two.addr.to_string()}],
                             "outlier_detection": {"consecutive_failures": 1}}},
        "listeners": {"web": {"address": listener.to_string(), "protocol": "http", "body_timeout_ms": 700}},
        "routes": {"app": {"listener": "web", "backends": [{"cluster": "app"}], "timeout_ms": 500}}
    }));
    let (cp, node) = node_with(&cfg).await;
    eventually("listener up", || async { try_get(listener, "a.test", "/").await }).await;
    (cp, node, listener, one, two)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_uploader_is_timed_by_its_own_pace_and_never_blamed_on_an_endpoint() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_cp, _node, addr, one, two) = slow_upload_edge().await;

    // 8 body bytes over ~1.2 s, well past the 500 ms route timeout: the timeout counts from the
    // end of the body, so the endpoint answers in time.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /up HTTP/1.1\r\nHost: a.test\r\nContent-Length: 8\r\nConnection: close\r\n\r\n").await.unwrap();
    for b in b"abcdefgh" {
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        s.write_all(&[*b]).await.unwrap();
    }
    let mut answer = String::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_string(&mut answer)).await.unwrap().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("body=abcdefgh"), "{answer}");

    // A client that stops sending its body gets 408 once it was silent for the body timeout.
    for _ in 0..2 {
        let started = std::time::Instant::now();
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /up HTTP/1.1\r\nHost: a.test\r\nContent-Length: 8\r\n\r\nab").await.unwrap();
        let mut answer = String::new();
        tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_string(&mut answer)).await.unwrap().unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("request body timeout"), "{answer}");
        assert!(started.elapsed() >= std::time::Duration::from_millis(700), "{:?}", started.elapsed());
    }

    // Neither endpoint was ejected: both still take requests.
    let (a, b) = (one.hits(), two.hits());
    for _ in 0..6 {
        assert_eq!(get(addr, "a.test", "/").await.status, 200);
    }
    assert!(one.hits() > a && two.hits() > b, "both endpoints serve: {} {}", one.hits() - a, two.hits() - b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_listener_caps_its_client_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = Backend::start("app").await;
    let listener = free_addr();
    let cfg = config(json!({
        "clusters": {"app": {"endpoints": [{"address": app.addr.to_string()}]}},
        "listeners": {"web": {"address": listener.to_string(), "protocol": "http", "max_connections": 2}},
        "routes": {"app": {"listener": "web", "backends": [{"cluster": "app"}]}}
    }));
    let (_cp, node) = node_with(&cfg).await;
    eventually("listener up", || async { try_get(listener, "a.test", "/").await }).await;

    // Two keep-alive clients hold the listener's two connections.
    let request = b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n";
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(listener).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        held.push(s);
    }
    // A third is closed at once, unanswered, and counted.
    let mut third = tokio::net::TcpStream::connect(listener).await.unwrap();
    let _ = third.write_all(request).await;
    let mut rest = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), third.read_to_end(&mut rest)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "closed at once: {read:?} {rest:?}");
    let refused = metric(&node, "sluice_connections_refused_total", &[("listener", "web")]).await;
    assert_eq!(refused, Some(1.0));
    // The held ones still serve; once one closes, a new client gets in.
    held[0].write_all(request).await.unwrap();
    let mut buf = [0u8; 512];
    let n = held[0].read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    drop(held.pop());
    eventually("a free slot", || async { (get(listener, "a.test", "/").await.status == 200).then_some(()) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_admit_clients_by_network() {
    let app = Backend::start("app").await;
    let listener = free_addr();
    let cfg = config(json!({
        "clusters": {"app": {"endpoints": [{"address": app.addr.to_string()}]}},
        "listeners": {"web": {"address": listener.to_string(), "protocol": "http"}},
        "routes": {
            "open": {"listener": "web", "match": {"path": {"prefix": "/open"}}, "backends": [{"cluster": "app"}],
                     "allow_from": ["127.0.0.0/8"]},
            "closed": {"listener": "web", "match": {"path": {"prefix": "/closed"}}, "backends": [{"cluster": "app"}],
                       "allow_from": ["10.0.0.0/8"]},
            "denied": {"listener": "web", "match": {"path": {"prefix": "/denied"}}, "backends": [{"cluster": "app"}],
                       "deny_from": ["127.0.0.1"]}
        }
    }));
    let (_cp, _node) = node_with(&cfg).await;
    eventually("listener up", || async { try_get(listener, "a.test", "/open").await }).await;
    let before = app.hits();
    assert_eq!(get(listener, "a.test", "/open").await.status, 200);
    for path in ["/closed", "/denied"] {
        let r = get(listener, "a.test", path).await;
        assert_eq!(r.status, 403, "{path}: {}", r.raw);
        assert_eq!(r.body, "forbidden\n");
    }
    assert_eq!(app.hits(), before + 1, "refused clients never reach the endpoint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_can_answer_by_itself() {
    let listener = free_addr();
    let cfg = config(json!({
        "clusters": {},
        "listeners": {"web": {"address": listener.to_string(), "protocol": "http"}},
        "routes": {"maintenance": {"listener": "web", "backends": [],
            "direct_response": {"status": 503, "body": "<h1>back soon</h1>", "content_type": "text/html"}}}
    }));
    let (_cp, _node) = node_with(&cfg).await;
    let r = eventually("listener up", || async { try_get(listener, "a.test", "/any").await }).await;
    assert_eq!(r.status, 503, "{}", r.raw);
    assert_eq!(r.body, "<h1>back soon</h1>");
    assert_eq!(r.headers.get("content-type").map(String::as_str), Some("text/html"));
    let head = raw(listener, b"HEAD /x HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n").await;
    assert_eq!((head.status, head.body.as_str()), (503, ""), "HEAD: no body");
}
