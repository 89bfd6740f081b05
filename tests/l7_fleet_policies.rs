//! Route policies across a fleet, with the real binary: a sticky cookie issued by one node is
//! honoured by another (the control plane hands every node the same signing key), and a route's
//! `https_redirect` answers plain HTTP with a redirect that never reaches a backend.

use std::net::SocketAddr;

use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::redirect::Policy;
use serde_json::json;
use sluice_e2e::free_addr;
use sluice_e2e::l7::{control_plane_at, proxy_in_group, tempdir, wait_acked, Backend};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(Policy::none()).build().unwrap()
}

/// `(status, body, Set-Cookie value for `sid` if any)`.
async fn get(http: &reqwest::Client, addr: SocketAddr, cookie: Option<&str>) -> (u16, String, Option<String>) {
    let mut req = http.get(format!("http://{addr}/")).header("host", "shop.test");
    if let Some(c) = cookie {
        req = req.header(COOKIE, format!("sid={c}"));
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let set = resp
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix("sid="))
        .map(|v| v.split(';').next().unwrap_or_default().to_string());
    (status, resp.text().await.unwrap().trim().to_string(), set)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sticky_cookie_from_one_node_pins_on_another() {
    let root = tempdir();
    let (api_addr, grpc) = (free_addr(), free_addr());
    let cp = control_plane_at(BIN, &root.path().join("cp.db"), api_addr, grpc).await;
    let api = cp.api();
    let _a = proxy_in_group(BIN, &[grpc], "node-a", "group-a", &root.path().join("cache-a")).await;
    let _b = proxy_in_group(BIN, &[grpc], "node-b", "group-b", &root.path().join("cache-b")).await;

    let backends = [Backend::start("app-1").await, Backend::start("app-2").await, Backend::start("app-3").await];
    let endpoints: Vec<_> =
        backends.iter().map(|b| json!({"address": b.address.to_string(), "name": b.name.clone()})).collect();
    api.put("clusters", "app", json!({"endpoints": endpoints})).await;
    let (web_a, web_b) = (free_addr(), free_addr());
    for (listener, addr, group) in [("web-a", web_a, "group-a"), ("web-b", web_b, "group-b")] {
        api.put("listeners", listener, json!({"address": addr.to_string(), "protocol": "http", "group": group})).await;
        let route = json!({"listener": listener, "backends": [{"cluster": "app"}],
                           "sticky": {"cookie": "sid", "ttl_s": 600}});
        api.put("routes", &format!("r-{listener}"), route).await;
    }
    wait_acked(&api, &["node-a", "node-b"], api.revision().await.unwrap()).await;

    let http = client();
    let (status, pinned_to, cookie) = get(&http, web_a, None).await;
    assert_eq!(status, 200);
    let cookie = cookie.expect("node-a set no sticky cookie");
    assert!(cookie.starts_with(&format!("app.{pinned_to}.")), "the cookie names the endpoint: {cookie}");
    for b in &backends {
        assert!(!cookie.contains(&b.address.port().to_string()), "the cookie shows an address: {cookie}");
    }
    // node-b never saw this client, yet honours node-a's cookie: same key, same endpoint names.
    for _ in 0..20 {
        let (status, body, set) = get(&http, web_b, Some(&cookie)).await;
        assert_eq!((status, body.as_str(), set), (200, pinned_to.as_str(), None));
    }
    // Without the cookie node-b balances (and pins) anew.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..9 {
        let (_, body, set) = get(&http, web_b, None).await;
        assert!(set.is_some(), "a new client gets a cookie");
        seen.insert(body);
    }
    assert_eq!(seen.len(), 3, "fresh clients are spread over the endpoints: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_redirect_answers_plain_http_without_a_backend() {
    let root = tempdir();
    let (api_addr, grpc) = (free_addr(), free_addr());
    let cp = control_plane_at(BIN, &root.path().join("cp.db"), api_addr, grpc).await;
    let api = cp.api();
    let _node = proxy_in_group(BIN, &[grpc], "node-a", "default", &root.path().join("cache")).await;

    let app = Backend::start("app").await;
    api.put("clusters", "app", json!({"endpoints": [{"address": app.address.to_string()}]})).await;
    let web = free_addr();
    api.put("listeners", "web", json!({"address": web.to_string(), "protocol": "http"})).await;
    // Everything on shop.test goes to https on 8443, /health stays plain (higher priority).
    api.put(
        "routes",
        "to-https",
        json!({"listener": "web", "match": {"hosts": ["shop.test"]}, "backends": [],
               "https_redirect": {"port": 8443, "status": 308}}),
    )
    .await;
    api.put(
        "routes",
        "health",
        json!({"listener": "web", "priority": 1, "match": {"path": {"exact": "/health"}},
               "backends": [{"cluster": "app"}]}),
    )
    .await;
    api.put(
        "routes",
        "legacy",
        json!({"listener": "web", "match": {"hosts": ["old.test"]}, "backends": [{"cluster": "app"}],
               "https_redirect": {}}),
    )
    .await;
    wait_acked(&api, &["node-a"], api.revision().await.unwrap()).await;

    let http = client();
    let resp = http.post(format!("http://{web}/cart/add?item=7")).header("host", "shop.test").body("x").send().await;
    let resp = resp.unwrap();
    assert_eq!(resp.status().as_u16(), 308);
    assert_eq!(resp.headers()[LOCATION], "https://shop.test:8443/cart/add?item=7");
    let resp = http.get(format!("http://{web}/")).header("host", "old.test").send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 301, "the defaults: 301 to port 443");
    assert_eq!(resp.headers()[LOCATION], "https://old.test/");
    assert_eq!(app.hits(), 0, "a redirected request reached the backend");
    let resp = http.get(format!("http://{web}/health")).header("host", "shop.test").send().await.unwrap();
    assert_eq!((resp.status().as_u16(), resp.text().await.unwrap().trim()), (200, "app"));

    // Bad redirects are refused with the field at fault, and change nothing.
    let before = api.revision().await.unwrap();
    for (spec, field) in [
        (json!({"status": 303}), "https_redirect.status"),
        (json!({"port": 0}), "https_redirect.port"),
        (json!({"port": 443, "scheme": "ftp"}), ""),
    ] {
        let route = json!({"listener": "web", "backends": [], "https_redirect": spec});
        let (status, body) = api.call(reqwest::Method::PUT, "/v1/routes/bad", Some(&route)).await;
        assert_eq!(status.as_u16(), 422, "{body}");
        if !field.is_empty() {
            assert_eq!(body["error"]["field"], field, "{body}");
        }
    }
    let (status, body) =
        api.call(reqwest::Method::PUT, "/v1/routes/bad", Some(&json!({"listener": "web", "backends": []}))).await;
    assert_eq!((status.as_u16(), body["error"]["field"].as_str()), (422, Some("backends")), "{body}");
    assert_eq!(api.revision().await, Some(before));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_has_a_line_per_request_only_when_asked() {
    let app = Backend::start("app").await;
    for access_log in [true, false] {
        let extra: Vec<String> = if access_log { vec!["--access-log".into()] } else { vec![] };
        let dev = sluice_e2e::Sluice::dev(BIN, &extra).await;
        let api = dev.api();
        api.put("clusters", "app", json!({"endpoints": [{"address": app.address.to_string()}]})).await;
        let web = free_addr();
        api.put("listeners", "web", json!({"address": web.to_string(), "protocol": "http"})).await;
        api.put(
            "routes",
            "shop",
            json!({"listener": "web", "match": {"hosts": ["shop.test"]},
                                          "backends": [{"cluster": "app"}]}),
        )
        .await;
        wait_acked(&api, &["dev"], api.revision().await.unwrap()).await;
        let http = client();
        let resp = http.get(format!("http://{web}/cart?item=7")).header("host", "shop.test").send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let resp = http.get(format!("http://{web}/")).header("host", "nowhere.test").send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 404);
        let log = dev.log();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains("sluice::access")).collect();
        if !access_log {
            assert!(lines.is_empty(), "access lines without --access-log: {lines:?}");
            continue;
        }
        let served = lines.iter().find(|l| l.contains("/cart?item=7")).unwrap_or_else(|| panic!("{log}"));
        for field in ["status=200", "route=\"shop\"", "cluster=\"app\"", "tries=1", "method=GET"] {
            assert!(served.contains(field), "{field} missing: {served}");
        }
        assert!(served.contains(&app.address.to_string()), "{served}");
        let unrouted = lines.iter().find(|l| l.contains("status=404")).unwrap_or_else(|| panic!("{log}"));
        assert!(unrouted.contains("route=\"-\""), "{unrouted}");
    }
}
