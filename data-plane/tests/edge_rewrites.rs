//! A route's rewrites end to end: the path and Host the endpoint receives (prefix and regex), the
//! request headers it sees (set with the client IP, route and request id; added; removed), the
//! response headers the client gets (on forwarded and direct answers), and redirects of each
//! kind. The backend records what reached it.

mod support;

use serde_json::json;
use support::*;

/// An endpoint that answers every request with headers of its own: `Server`, `X-Powered-By`.
async fn chatty_endpoint() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let answer =
                    "HTTP/1.1 200 OK\r\nServer: backend/1.0\r\nX-Powered-By: php\r\nContent-Length: 2\r\n\r\nok";
                let _ = s.write_all(answer.as_bytes()).await;
            });
        }
    });
    addr
}

fn line<'a>(body: &'a str, name: &str) -> Vec<&'a str> {
    let prefix = format!("{name}: ");
    body.lines().filter_map(|l| l.strip_prefix(prefix.as_str())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_rewrite_paths_hosts_and_headers_and_redirect() {
    let app = Backend::start("app").await;
    let chatty = chatty_endpoint().await;
    let listener = free_addr();
    let cfg = config(json!({
        "clusters": {"app": {"endpoints": [{"address": app.addr.to_string()}]},
                     "chatty": {"endpoints": [{"address": chatty.to_string()}]}},
        "listeners": {"web": {"address": listener.to_string(), "protocol": "http"}},
        "routes": {
            "api": {"listener": "web", "match": {"path": {"prefix": "/api/"}}, "backends": [{"cluster": "app"}],
                    "rewrite": {"prefix": "/v2/", "host": "internal.svc"},
                    "request_headers": {"remove": ["x-secret"], "set": {"x-client": "%CLIENT_IP%", "x-tag": "one"},
                                        "add": {"x-tag": "%ROUTE% two", "x-id": "%REQUEST_ID%"}},
                    "response_headers": {"set": {"server": "sluice"}, "add": {"x-request": "%REQUEST_ID%"}}},
            "users": {"listener": "web", "match": {"path": {"prefix": "/u/"}}, "backends": [{"cluster": "app"}],
                      "rewrite": {"regex": {"pattern": "^/u/([0-9]+)$", "substitution": "/users/$1"}}},
            "broken": {"listener": "web", "match": {"path": {"prefix": "/broken"}}, "backends": [{"cluster": "app"}],
                       "rewrite": {"regex": {"pattern": "^/broken", "substitution": "nope"}}},
            "moved": {"listener": "web", "match": {"path": {"prefix": "/old/"}}, "backends": [],
                      "redirect": {"prefix": "/new/", "status": 308}},
            "secure": {"listener": "web", "match": {"path": {"prefix": "/login"}}, "backends": [],
                       "redirect": {"scheme": "https", "host": "login.example.com", "strip_query": true}},
            "chatty": {"listener": "web", "match": {"hosts": ["chatty.test"]}, "backends": [{"cluster": "chatty"}],
                       "response_headers": {"remove": ["x-powered-by"], "set": {"server": "sluice"}}},
            "down": {"listener": "web", "match": {"path": {"exact": "/down"}}, "backends": [],
                     "direct_response": {"status": 503, "body": "maintenance"},
                     "response_headers": {"set": {"retry-after": "120"}, "remove": ["content-type"]}}
        }
    }));
    let (_cp, _node) = node_with(&cfg).await;

    // Prefix rewrite, Host rewrite, request headers; the query stays.
    let r = raw(
        listener,
        b"GET /api/items?x=1 HTTP/1.1\r\nHost: shop.test\r\nX-Secret: s3cr3t\r\nX-Client: spoofed\r\nX-Request-Id: req-42\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert!(r.body.contains("path=/v2/items\n"), "{}", r.body);
    assert_eq!(line(&r.body, "host"), ["internal.svc"]);
    assert_eq!(line(&r.body, "x-forwarded-host"), ["shop.test"], "what the client asked for");
    assert!(line(&r.body, "x-secret").is_empty());
    assert_eq!(line(&r.body, "x-client"), ["127.0.0.1"]);
    assert_eq!(line(&r.body, "x-tag"), ["one", "api two"]);
    assert_eq!(line(&r.body, "x-id"), ["req-42"]);
    // The response: server set, the request id added.
    assert_eq!(r.headers.get("server").map(String::as_str), Some("sluice"));
    assert_eq!(r.headers.get("x-request").map(String::as_str), Some("req-42"));
    // The endpoint's own headers are changed too: one Server, no X-Powered-By.
    let r = get(listener, "chatty.test", "/").await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok"), "{}", r.raw);
    assert!(!r.raw.to_ascii_lowercase().contains("x-powered-by"), "{}", r.raw);
    assert_eq!(r.raw.to_ascii_lowercase().matches("\r\nserver:").count(), 1, "{}", r.raw);
    assert_eq!(r.headers.get("server").map(String::as_str), Some("sluice"));
    // Without a client id, the response names the one the endpoint got.
    let r = get(listener, "shop.test", "/api/x").await;
    let sent = line(&r.body, "x-request-id").first().map(|s| s.to_string()).expect("a generated id");
    assert_eq!(r.headers.get("x-request"), Some(&sent));
    assert_eq!(line(&r.body, "x-id"), [sent.as_str()]);

    // Regex rewrite; one that makes no path is the route's fault: 500, nothing forwarded.
    assert!(get(listener, "shop.test", "/u/42").await.body.contains("path=/users/42\n"));
    let hits = app.hits();
    assert_eq!(get(listener, "shop.test", "/broken").await.status, 500);
    assert_eq!(app.hits(), hits);

    // Redirects.
    let r = get(listener, "shop.test:8080", "/old/a/b?q=1").await;
    assert_eq!(
        (r.status, r.headers.get("location").map(String::as_str)),
        (308, Some("http://shop.test:8080/new/a/b?q=1"))
    );
    let r = get(listener, "shop.test:8080", "/login?next=/x").await;
    assert_eq!(
        (r.status, r.headers.get("location").map(String::as_str)),
        (301, Some("https://login.example.com/login"))
    );
    // A direct answer gets the route's response headers too.
    let r = get(listener, "shop.test", "/down").await;
    assert_eq!((r.status, r.headers.get("retry-after").map(String::as_str)), (503, Some("120")));
    assert!(!r.headers.contains_key("content-type"), "removed: {}", r.raw);
    assert_eq!(app.hits(), hits, "redirects and direct answers never reach the endpoint");
}
