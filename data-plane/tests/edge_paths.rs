//! The edge's request targets, raw bytes on the wire: paths normalized before routing and
//! forwarded exactly so (dot segments, escapes, slashes, parameters), the listener's policy for
//! encoded slashes, CONNECT and non-path targets refused, Host values validated.

mod support;

use std::net::SocketAddr;

use serde_json::json;
use sluice_data_plane::Node;
use support::*;

struct Edge {
    _cp: ControlPlane,
    _node: Node,
    /// Default path policy.
    strict: SocketAddr,
    /// `escaped_slashes: keep`, slashes not merged.
    keep: SocketAddr,
    /// `escaped_slashes: decode_and_redirect`.
    redirect: SocketAddr,
    api: Backend,
    admin: Backend,
    web: Backend,
}

async fn edge() -> Edge {
    let (api, admin, web) = (Backend::start("api").await, Backend::start("admin").await, Backend::start("web").await);
    let (strict, keep, redirect) = (free_addr(), free_addr(), free_addr());
    let mut routes = serde_json::Map::new();
    for (l, suffix) in [("strict", ""), ("keep", "-k"), ("redirect", "-r")] {
        routes.insert(
            format!("api{suffix}"),
            json!({"listener": l, "match": {"path": {"prefix": "/api/"}}, "backends": [{"cluster": "api"}]}),
        );
        routes.insert(
            format!("admin{suffix}"),
            json!({"listener": l, "match": {"path": {"prefix": "/admin"}}, "backends": [{"cluster": "admin"}]}),
        );
        routes.insert(format!("web{suffix}"), json!({"listener": l, "backends": [{"cluster": "web"}]}));
    }
    let cfg = config(json!({
        "clusters": {
            "api": {"endpoints": [{"address": api.addr.to_string()}]},
            "admin": {"endpoints": [{"address": admin.addr.to_string()}]},
            "web": {"endpoints": [{"address": web.addr.to_string()}]}
        },
        "listeners": {
            "strict": {"address": strict.to_string(), "protocol": "http"},
            "keep": {"address": keep.to_string(), "protocol": "http",
                     "paths": {"escaped_slashes": "keep", "merge_slashes": false}},
            "redirect": {"address": redirect.to_string(), "protocol": "http",
                         "paths": {"escaped_slashes": "decode_and_redirect"}}
        },
        "routes": routes
    }));
    let (cp, node) = node_with(&cfg).await;
    for addr in [strict, keep, redirect] {
        eventually("listener up", || async move { try_get(addr, "a.test", "/").await }).await;
    }
    Edge { _cp: cp, _node: node, strict, keep, redirect, api, admin, web }
}

async fn target(addr: SocketAddr, target: &str) -> RawResponse {
    get(addr, "a.test", target).await
}

fn served(r: &RawResponse) -> (String, String) {
    let field = |k: &str| r.body.lines().find_map(|l| l.strip_prefix(k)).unwrap_or("-").to_string();
    (field("backend="), field("path="))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spelling_of_a_path_routes_where_the_endpoint_resolves_it() {
    let e = edge().await;
    let admin_hits = e.admin.hits();
    for (raw, backend, forwarded) in [
        ("/api/../admin", "admin", "/admin"),
        ("/api/%2e%2E/admin", "admin", "/admin"),
        ("/api/.%2e/admin/x", "admin", "/admin/x"),
        ("/api/..;/admin", "admin", "/admin"),
        ("/%61dmin", "admin", "/admin"),
        ("//admin", "admin", "/admin"),
        ("/./admin/./panel", "admin", "/admin/panel"),
        ("/admin;jsessionid=7", "admin", "/admin;jsessionid=7"),
        ("/api/v1/../../admin", "admin", "/admin"),
        ("/api/caf%c3%a9", "api", "/api/caf%C3%A9"),
        ("/api/a%7eb", "api", "/api/a~b"),
        ("/../../../etc/passwd", "web", "/etc/passwd"),
    ] {
        let r = target(e.strict, raw).await;
        assert_eq!(r.status, 200, "{raw}: {}", r.raw);
        assert_eq!(served(&r), (backend.to_string(), forwarded.to_string()), "{raw}");
    }
    assert_eq!(e.admin.hits(), admin_hits + 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_slashes_follow_the_listener_policy() {
    let e = edge().await;
    let before = e.api.hits() + e.admin.hits() + e.web.hits();
    for raw in ["/api%2F..%2Fadmin", "/api/..%2fadmin", "/api/..%5Cadmin", "/api/..\\admin", "/a%zz", "/a%2"] {
        let r = target(e.strict, raw).await;
        assert_eq!(r.status, 400, "{raw}: {}", r.raw);
        assert_eq!(r.headers.get("connection").map(String::as_str), Some("close"), "{raw}");
    }
    assert_eq!(e.api.hits() + e.admin.hits() + e.web.hits(), before, "nothing refused reaches an endpoint");

    // Kept opaque: never a separator, so `..%2F` is no dot segment; forwarded as normalized.
    let r = target(e.keep, "/api/..%2fadmin").await;
    assert_eq!(served(&r), ("api".into(), "/api/..%2Fadmin".into()), "{}", r.raw);
    let r = target(e.keep, "//admin").await;
    assert_eq!(served(&r).0, "web", "slashes kept: //admin is not /admin's");

    // Decoded and redirected: the client asks again for the path the endpoint would see.
    let r = target(e.redirect, "/api%2F..%2Fadmin?x=1").await;
    assert_eq!(r.status, 307, "{}", r.raw);
    assert_eq!(r.headers.get("location").map(String::as_str), Some("/admin?x=1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_unusual_targets_and_bad_hosts_are_refused() {
    let e = edge().await;
    let before = e.api.hits() + e.admin.hits() + e.web.hits();
    let r = raw(e.strict, b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n").await;
    assert_eq!(r.status, 405, "{}", r.raw);
    assert!(r.headers.contains_key("allow") && r.headers.get("connection").map(String::as_str) == Some("close"));
    let r = raw(e.strict, b"OPTIONS * HTTP/1.1\r\nHost: a.test\r\n\r\n").await;
    assert_eq!(r.status, 400, "{}", r.raw);
    for host in ["a.test/evil", "user@a.test", "a..test", "a.test:99999", "a test"] {
        let r = raw(e.strict, format!("GET /api/x HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes()).await;
        assert_eq!(r.status, 400, "Host {host:?}: {}", r.raw);
    }
    let r = raw(e.strict, b"GET http://user@a.test/api/x HTTP/1.1\r\nHost: a.test\r\n\r\n").await;
    assert_eq!(r.status, 400, "userinfo in an absolute-form target: {}", r.raw);
    assert_eq!(e.api.hits() + e.admin.hits() + e.web.hits(), before, "nothing refused reaches an endpoint");
    // The normalized host routes (upper case, a port, a trailing dot).
    let r = raw(e.strict, b"GET /api/x HTTP/1.1\r\nHost: A.TEST.:8080\r\nConnection: close\r\n\r\n").await;
    assert_eq!(served(&r).0, "api");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_paths_are_normalized_alike() {
    let e = edge().await;
    let curl = |path: &str| {
        let url = format!("http://{}{path}", e.strict);
        async move {
            tokio::task::spawn_blocking(move || {
                std::process::Command::new("curl")
                    .args([
                        "-s",
                        "--max-time",
                        "10",
                        "--http2-prior-knowledge",
                        "--path-as-is",
                        "-H",
                        "Host: a.test",
                        "-w",
                        "\n%{http_code} %{http_version}",
                    ])
                    .arg(url)
                    .output()
            })
            .await
            .expect("curl task")
            .expect("curl runs")
        }
    };
    let out = curl("/api/%2e%2e/admin").await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("backend=admin") && text.contains("path=/admin\n") && text.ends_with("200 2"), "{text}");
    let out = curl("/api%2F..%2Fadmin").await;
    assert!(String::from_utf8_lossy(&out.stdout).ends_with("400 2"), "{}", String::from_utf8_lossy(&out.stdout));
}
