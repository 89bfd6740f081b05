//! Route choice: each precedence rule of DESIGN §3, wildcard subtleties and compile errors.

use http::{HeaderMap, HeaderValue, Method};
use sluice_shared::validate::parse_json;
use sluice_shared::Config;

use super::*;

/// A config with listener `web` (http), a tcp listener `pg`, a tls passthrough listener `tls`, clusters `a` and `b`, and the given
/// routes: (name, extra JSON fields of the route body), each routed to cluster `a`.
pub(super) fn config(routes: &[(&str, &str)]) -> Config {
    let mut cfg = Config::default();
    for c in ["a", "b"] {
        cfg.clusters.insert(c.into(), parse_json(br#"{"endpoints":[{"address":"127.0.0.1:9001"}]}"#).unwrap());
    }
    cfg.listeners.insert("web".into(), parse_json(br#"{"address":"127.0.0.1:8080","protocol":"http"}"#).unwrap());
    cfg.listeners
        .insert("pg".into(), parse_json(br#"{"address":"127.0.0.1:15432","protocol":"tcp","cluster":"b"}"#).unwrap());
    cfg.listeners.insert(
        "tls".into(),
        parse_json(br#"{"address":"127.0.0.1:8443","protocol":"tls","cluster":"b","sni":{"*.example.com":"a"}}"#)
            .unwrap(),
    );
    for (name, extra) in routes {
        let sep = if extra.is_empty() { "" } else { "," };
        let json = format!(r#"{{"listener":"web","backends":[{{"cluster":"a"}}]{sep}{extra}}}"#);
        cfg.routes.insert(name.to_string(), parse_json(json.as_bytes()).unwrap());
    }
    cfg.validate().unwrap();
    cfg
}

fn table(routes: &[(&str, &str)]) -> Table {
    compile(&config(routes), None).unwrap()
}

struct Req<'a> {
    method: Method,
    host: Option<&'a str>,
    path: &'a str,
    query: Option<&'a str>,
    headers: HeaderMap,
}

fn get<'a>(host: &'a str, path: &'a str) -> Req<'a> {
    Req { method: Method::GET, host: Some(host), path, query: None, headers: HeaderMap::new() }
}

fn route<'t>(t: &'t Table, r: &Req<'_>) -> Option<&'t str> {
    let view = RequestView { method: &r.method, host: r.host, path: r.path, query: r.query, headers: &r.headers };
    t.listener("web").unwrap().find(&view).map(|e| e.name())
}

#[test]
fn demo_routes() {
    let t = table(&[
        ("api", r#""match":{"hosts":["myshop.com"],"path":{"prefix":"/api/"}}"#),
        ("auth", r#""match":{"hosts":["myshop.com"],"path":{"exact":"/login"}}"#),
        ("media", r#""match":{"hosts":["myshop.com"],"path":{"prefix":"/images/"}}"#),
    ]);
    assert_eq!(route(&t, &get("myshop.com", "/api/cart")), Some("api"));
    assert_eq!(route(&t, &get("myshop.com", "/login")), Some("auth"));
    assert_eq!(route(&t, &get("myshop.com", "/login/x")), None);
    assert_eq!(route(&t, &get("myshop.com", "/api")), None, "prefix /api/ does not match /api");
    assert_eq!(route(&t, &get("other.com", "/api/cart")), None);
    assert_eq!(route(&t, &Req { host: None, ..get("", "/api/x") }), None, "no host: only host-less routes");
}

#[test]
fn host_tiers() {
    let t = table(&[
        ("any", r#""match":{"path":{"exact":"/x"}}"#),
        ("wild", r#""match":{"hosts":["*.myshop.com"],"path":{"prefix":"/"}}"#),
        ("wild-deep", r#""match":{"hosts":["*.b.myshop.com"]}"#),
        ("exact", r#""match":{"hosts":["a.b.myshop.com"]}"#),
    ]);
    // Host beats path: the exact host with no path wins over a wildcard host with a prefix.
    assert_eq!(route(&t, &get("a.b.myshop.com", "/x")), Some("exact"));
    assert_eq!(route(&t, &get("c.b.myshop.com", "/x")), Some("wild-deep"), "longer suffix first");
    assert_eq!(route(&t, &get("c.myshop.com", "/x")), Some("wild"));
    assert_eq!(route(&t, &get("x.y.z.myshop.com", "/x")), Some("wild"), "any depth below the suffix");
    assert_eq!(route(&t, &get("myshop.com", "/x")), Some("any"), "*.myshop.com does not match myshop.com");
    assert_eq!(route(&t, &get("b.myshop.com", "/x")), Some("wild"), "*.b.myshop.com does not match b.myshop.com");
    assert_eq!(route(&t, &get(".myshop.com", "/x")), Some("any"), "empty label matches no wildcard");
    assert_eq!(route(&t, &get("notmyshop.com", "/x")), Some("any"));
}

#[test]
fn host_lookup_uses_normalized_host() {
    let t = table(&[("r", r#""match":{"hosts":["myshop.com"]}"#)]);
    let host = normalize_host("MyShop.COM:8080");
    assert_eq!(route(&t, &get(&host, "/")), Some("r"));
}

#[test]
fn path_tiers() {
    let t = table(&[
        ("none", ""),
        ("regex", r#""match":{"path":{"regex":"^/api/v[0-9]+"}}"#),
        ("short", r#""match":{"path":{"prefix":"/api/"}}"#),
        ("long", r#""match":{"path":{"prefix":"/api/v1/"}}"#),
        ("exact", r#""match":{"path":{"exact":"/api/v1/users"}}"#),
    ]);
    assert_eq!(route(&t, &get("h", "/api/v1/users")), Some("exact"));
    assert_eq!(route(&t, &get("h", "/api/v1/users/1")), Some("long"));
    assert_eq!(route(&t, &get("h", "/api/v2/x")), Some("short"));
    assert_eq!(route(&t, &get("h", "/api/v2")), Some("short"));
    assert_eq!(route(&t, &get("h", "/api")), Some("none"));
    let t = table(&[("none", ""), ("regex", r#""match":{"path":{"regex":"^/v[0-9]+/"}}"#)]);
    assert_eq!(route(&t, &get("h", "/v2/x")), Some("regex"));
    assert_eq!(route(&t, &get("h", "/v/x")), Some("none"));
}

#[test]
fn prefix_falls_back_when_conditions_fail() {
    let t = table(&[
        ("short", r#""match":{"path":{"prefix":"/api/"}}"#),
        ("long-post", r#""match":{"path":{"prefix":"/api/v1/"},"methods":["POST"]}"#),
    ]);
    assert_eq!(route(&t, &get("h", "/api/v1/x")), Some("short"));
    assert_eq!(route(&t, &Req { method: Method::POST, ..get("h", "/api/v1/x") }), Some("long-post"));
}

#[test]
fn more_conditions_win() {
    let t = table(&[
        ("plain", r#""match":{"path":{"prefix":"/"}}"#),
        ("method", r#""match":{"path":{"prefix":"/"},"methods":["GET","POST"]}"#),
        ("canary", r#""match":{"path":{"prefix":"/"},"methods":["GET"],"headers":[{"name":"x-canary","exact":"1"}]}"#),
        ("debug", r#""match":{"path":{"prefix":"/"},"query":[{"name":"debug","present":true}]}"#),
    ]);
    let mut r = get("h", "/x");
    assert_eq!(route(&t, &r), Some("method"));
    r.method = Method::PUT;
    assert_eq!(route(&t, &r), Some("plain"));
    r.method = Method::GET;
    r.headers.insert("x-canary", HeaderValue::from_static("1"));
    assert_eq!(route(&t, &r), Some("canary"));
    r.headers.clear();
    r.query = Some("debug");
    // One condition each: `debug` and `method` tie on specificity; the name decides.
    assert_eq!(route(&t, &r), Some("debug"));
}

#[test]
fn priority_beats_specificity() {
    let t = table(&[
        ("specific", r#""match":{"hosts":["myshop.com"],"path":{"exact":"/login"},"methods":["GET"]}"#),
        ("catch-all", r#""priority":10"#),
        ("low", r#""priority":-5,"match":{"hosts":["myshop.com"],"path":{"exact":"/login"}}"#),
    ]);
    assert_eq!(route(&t, &get("myshop.com", "/login")), Some("catch-all"));
    let t = table(&[
        ("specific", r#""match":{"hosts":["myshop.com"],"path":{"exact":"/login"}}"#),
        ("wild-high", r#""priority":1,"match":{"hosts":["*.com"]}"#),
    ]);
    assert_eq!(route(&t, &get("myshop.com", "/login")), Some("wild-high"));
    assert_eq!(route(&t, &get("myshop.org", "/login")), None);
}

#[test]
fn name_breaks_ties() {
    let t = table(&[
        ("b-route", r#""match":{"path":{"prefix":"/a"}}"#),
        ("a-route", r#""match":{"path":{"prefix":"/a"}}"#),
        ("c-route", r#""match":{"path":{"prefix":"/a"}}"#),
    ]);
    assert_eq!(route(&t, &get("h", "/abc")), Some("a-route"));
    let t = table(&[("z", r#""match":{"hosts":["h"]}"#), ("y", r#""match":{"hosts":["h","h"]}"#)]);
    assert_eq!(route(&t, &get("h", "/")), Some("y"));
}

#[test]
fn route_with_many_hosts_takes_its_best_tier() {
    let t = table(&[
        ("multi", r#""match":{"hosts":["*.myshop.com","shop.example"]}"#),
        ("exact", r#""match":{"hosts":["a.myshop.com"]}"#),
    ]);
    assert_eq!(route(&t, &get("a.myshop.com", "/")), Some("exact"));
    assert_eq!(route(&t, &get("b.myshop.com", "/")), Some("multi"));
    assert_eq!(route(&t, &get("shop.example", "/")), Some("multi"));
}

#[test]
fn tcp_listener_cluster_and_route_data() {
    let t = table(&[(
        "r",
        r#""timeout_ms":1500,"retries":{"attempts":2,"on":["5xx"]},"sticky":{},"hash_on":{"header":"x-user"}"#,
    )]);
    assert_eq!(t.listener("pg").unwrap().cluster().unwrap().name(), "b");
    assert_eq!(t.listener("pg").unwrap().address(), "127.0.0.1:15432".parse().unwrap());
    assert!(t.listener("web").unwrap().cluster().is_none());
    let tls = t.listener("tls").unwrap();
    assert_eq!(tls.sni_cluster(Some("a.example.com")).unwrap().name(), "a");
    assert_eq!(tls.sni_cluster(Some("example.com")).unwrap().name(), "b", "default cluster");
    assert_eq!(tls.sni_cluster(None).unwrap().name(), "b");
    let r = &t.listener("web").unwrap().routes()[0];
    assert_eq!(r.timeout(), Some(std::time::Duration::from_millis(1500)));
    assert_eq!(r.retries().unwrap().attempts, 2);
    assert!(r.retries().unwrap().retries_on(sluice_shared::model::RetryOn::Status5xx));
    assert_eq!(r.sticky().unwrap().cookie, "sluice_sticky");
    assert_eq!(r.hash_on().unwrap().header.as_deref(), Some("x-user"));
    assert_eq!(r.pick_cluster().unwrap().name(), "a");
}

#[test]
fn compile_errors_name_the_field() {
    let mut cfg = config(&[("r", "")]);
    cfg.routes.get_mut("r").unwrap().backends[0].cluster = "missing".into();
    let e = compile(&cfg, None).unwrap_err();
    assert_eq!(e.field, "routes.r.backends[0].cluster");
    let mut cfg = config(&[("r", "")]);
    cfg.routes.get_mut("r").unwrap().backends[0].weight = 0;
    assert_eq!(compile(&cfg, None).unwrap_err().field, "routes.r.backends");
    let mut cfg = config(&[("r", "")]);
    cfg.routes.get_mut("r").unwrap().matcher.path =
        Some(sluice_shared::model::PathMatch { regex: Some("(".into()), ..Default::default() });
    assert_eq!(compile(&cfg, None).unwrap_err().field, "routes.r.match.path.regex");
}
