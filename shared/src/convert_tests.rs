use prost::Message;

use super::*;
use crate::validate::parse_json;

/// A real certificate (validation parses it), made once so every `full()` is the same config.
fn test_certificate() -> Certificate {
    static CERT: std::sync::OnceLock<Certificate> = std::sync::OnceLock::new();
    CERT.get_or_init(|| crate::certs::testing::valid(&["shop.example"])).clone()
}

/// A config that sets every optional field at least once.
fn full() -> Config {
    let mut c = Config::default();
    c.certificates.insert("shop".into(), test_certificate());
    for (name, json) in [
        (
            "api",
            r#"{"lb_policy":"least_request","endpoints":[{"address":"127.0.0.1:9001","weight":3,"name":"api-1"},{"address":"[::1]:9002"}],
            "health_check":{"http":{"path":"/healthz","expected_status":204},"interval_ms":1000,"timeout_ms":500},
            "outlier_detection":{"consecutive_failures":3,"ejection_ms":1000},"panic_mode":true,
            "circuit_breaker":{"max_connections":100,"max_pending":0,"max_requests":500}}"#,
        ),
        (
            "db",
            r#"{"lb_policy":"maglev","endpoints":[{"address":"127.0.0.1:5432"},{"address":"127.0.0.1:5433","backup":true,"max_connections":50}],"health_check":{"tcp":{}},"close_connections_on_health_change":true,
            "connect_timeout_ms":250}"#,
        ),
        ("web", r#"{"lb_policy":"ring_hash","protocol":"http2","health_check":{"grpc":{"service":"web.v1"}}}"#),
        ("empty", r#"{"lb_policy":"random","endpoints":[],"protocol":"auto"}"#),
    ] {
        c.clusters.insert(name.into(), parse_json(json.as_bytes()).unwrap());
    }
    for (name, json) in [
        ("web", r#"{"address":"127.0.0.1:8080","protocol":"http"}"#),
        (
            "secure",
            r#"{"address":"127.0.0.1:8443","protocol":"https","certificates":["shop"],"group":"edge","http_versions":["http2"],
            "http2":{"max_concurrent_streams":50,"max_header_list_bytes":32768,"initial_stream_window_bytes":131072,
            "initial_connection_window_bytes":1048576,"idle_timeout_ms":60000,"max_connection_age_ms":3600000},
            "paths":{"merge_slashes":false,"escaped_slashes":"keep"},"header_timeout_ms":12000,"body_timeout_ms":9000}"#,
        ),
        (
            "pg",
            r#"{"address":"127.0.0.1:15432","protocol":"tcp","cluster":"db","idle_timeout_ms":60000,"hash_on":{"source_ip":true},"proxy_protocol":"v2","accept_proxy_protocol":true,"tcp_keepalive":{"idle_ms":30000},"proxy_protocol_from":["10.0.0.0/8"]}"#,
        ),
        (
            "dns",
            r#"{"address":"127.0.0.1:5353","protocol":"udp","cluster":"db","max_connections":1000,"drain_ms":5000}"#,
        ),
        (
            "pass",
            r#"{"address":"127.0.0.1:9443","protocol":"tls","sni":{"a.example.com":"api","*.example.com":"web"},"proxy_protocol":"v1"}"#,
        ),
    ] {
        c.listeners.insert(name.into(), parse_json(json.as_bytes()).unwrap());
    }
    for (name, json) in [
        (
            "api",
            r#"{"listener":"web","priority":5,"match":{"hosts":["myshop.com","*.myshop.com"],"path":{"prefix":"/api/"},
            "methods":["GET","POST"],"headers":[{"name":"x-canary","exact":"1"},{"name":"x-re","regex":"^a"},{"name":"x-p","present":false}],
            "query":[{"name":"debug","present":true},{"name":"q","exact":"v"},{"name":"r","regex":"[0-9]+"}]},
            "backends":[{"cluster":"api","weight":90},{"cluster":"web","weight":10}],"timeout_ms":15000,
            "sticky":{"cookie":"s","ttl_s":60},"hash_on":{"header":"x-user"},"retries":{"attempts":2,"on":["connect_failure","reset","5xx"],
            "per_try_timeout_ms":250,"budget":{"percent":10,"min_per_s":0}},"max_request_body_bytes":1048576,
            "rewrite":{"prefix":"/v2/","host":"api.internal"},
            "request_headers":{"remove":["x-a"],"set":{"x-client":"%CLIENT_IP%"},"add":{"x-route":"%ROUTE%"}},
            "response_headers":{"set":{"server":"sluice"}},
            "rate_limit":{"requests_per_s":50,"burst":100,"key":"header","header":"x-api-key","fleet":true},
            "mirror":{"cluster":"web","percent":10}}"#,
        ),
        (
            "login",
            r#"{"listener":"web","match":{"path":{"exact":"/login"}},"backends":[{"cluster":"api"}],"hash_on":{"cookie":"sid"}}"#,
        ),
        (
            "versioned",
            r#"{"listener":"secure","priority":-1,"match":{"path":{"regex":"^/v[0-9]+/"}},"backends":[{"cluster":"web","weight":0},{"cluster":"api"}]}"#,
        ),
        (
            "any",
            r#"{"listener":"web","backends":[{"cluster":"empty"}],"retries":{"attempts":1},"allow_from":["10.0.0.0/8"],"deny_from":["10.9.0.0/16"]}"#,
        ),
        ("to-https", r#"{"listener":"web","priority":9,"backends":[],"https_redirect":{"port":8443,"status":308}}"#),
        (
            "moved",
            r#"{"listener":"web","priority":8,"match":{"path":{"prefix":"/old/"}},"backends":[],
            "redirect":{"scheme":"https","host":"b.com","port":8443,"prefix":"/new/","strip_query":true,"status":307}}"#,
        ),
        (
            "regex",
            r#"{"listener":"web","match":{"path":{"prefix":"/u/"}},"backends":[{"cluster":"api"}],
            "rewrite":{"regex":{"pattern":"^/u/([0-9]+)$","substitution":"/users/$1"}}}"#,
        ),
    ] {
        c.routes.insert(name.into(), parse_json(json.as_bytes()).unwrap());
    }
    c
}

fn round_trip(c: &Config) -> Config {
    let snapshot = pb::Snapshot::from(c);
    // Through the wire as well, so the proto field choices are exercised, not just the structs.
    let decoded = pb::Snapshot::decode(snapshot.encode_to_vec().as_slice()).unwrap();
    assert_eq!(decoded, snapshot);
    Config::try_from(decoded).unwrap()
}

#[test]
fn full_config_round_trips() {
    let c = full();
    c.validate().unwrap();
    assert_eq!(round_trip(&c), c);
}

#[test]
fn empty_and_group_views_round_trip() {
    assert_eq!(round_trip(&Config::default()), Config::default());
    let c = full();
    for group in ["default", "edge", "nobody"] {
        let g = c.for_group(group);
        assert_eq!(round_trip(&g), g);
    }
}

#[test]
fn snapshot_is_sorted_by_name() {
    let s = pb::Snapshot::from(&full());
    let names: Vec<_> = s.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["any", "api", "login", "moved", "regex", "to-https", "versioned"]);
    assert_eq!(s.revision, 0);
    assert!(s.nonce.is_empty());
}

fn err_field(s: pb::Snapshot) -> String {
    Config::try_from(s).unwrap_err().field.unwrap_or_default()
}

#[test]
fn unknown_enum_values_fail_with_a_path() {
    let mut s = pb::Snapshot::from(&full());
    s.clusters[0].lb_policy = 99;
    assert_eq!(err_field(s), format!("clusters.api.lb_policy"));
    let mut s = pb::Snapshot::from(&full());
    let i = s.listeners.iter().position(|l| l.name == "pg").unwrap();
    s.listeners[i].protocol = -3;
    assert_eq!(err_field(s), "listeners.pg.protocol");
}

#[test]
fn structural_errors_name_the_field() {
    let base = pb::Snapshot::from(&full());
    let route = |s: &mut pb::Snapshot, name: &str| s.routes.iter().position(|r| r.name == name).unwrap();

    let mut s = base.clone();
    let i = route(&mut s, "api");
    s.routes[i].retries.as_mut().unwrap().on.push("teapot".into());
    assert_eq!(err_field(s), "routes.api.retries.on[3]");

    let mut s = base.clone();
    let i = route(&mut s, "api");
    s.routes[i].r#match.as_mut().unwrap().path = Some(pb::PathMatch { kind: None });
    assert_eq!(err_field(s), "routes.api.match.path");

    let mut s = base.clone();
    let i = route(&mut s, "api");
    s.routes[i].r#match.as_mut().unwrap().headers[1].kind = None;
    assert_eq!(err_field(s), "routes.api.match.headers[1]");

    let mut s = base.clone();
    let i = route(&mut s, "login");
    s.routes[i].hash_on = Some(pb::HashOn { key: None });
    assert_eq!(err_field(s), "routes.login.hash_on");

    let mut s = base.clone();
    let i = s.listeners.iter().position(|l| l.name == "pg").unwrap();
    s.listeners[i].proxy_protocol = 3;
    assert_eq!(err_field(s), "listeners.pg.proxy_protocol");

    let mut s = base.clone();
    s.clusters[0].health_check.as_mut().unwrap().kind =
        Some(pb::health_check::Kind::Http(pb::HttpHealthCheck { path: "/".into(), expected_status: 70_000 }));
    assert_eq!(err_field(s), "clusters.api.health_check.http.expected_status");

    let mut s = base.clone();
    let dup = s.certificates[0].clone();
    s.certificates.push(dup);
    assert_eq!(err_field(s), "certificates.shop");
}

#[test]
fn conversion_leaves_semantic_checks_to_validate() {
    // A bad regex converts fine; Config::validate is what refuses it, with the full path.
    let mut s = pb::Snapshot::from(&full());
    let i = s.routes.iter().position(|r| r.name == "versioned").unwrap();
    s.routes[i].r#match.as_mut().unwrap().path =
        Some(pb::PathMatch { kind: Some(pb::path_match::Kind::Regex("(".into())) });
    let c = Config::try_from(s).unwrap();
    assert_eq!(c.validate().unwrap_err().field.as_deref(), Some("routes.versioned.match.path.regex"));
}

#[test]
fn missing_match_means_match_anything() {
    let mut s = pb::Snapshot::from(&full());
    for r in &mut s.routes {
        r.r#match = None;
    }
    let c = Config::try_from(s).unwrap();
    assert!(c.routes.values().all(|r| r.matcher == RouteMatch::default()));
}

#[test]
fn upstream_tls_round_trips_validates_and_refers_to_its_certificate() {
    let mut c = Config::default();
    c.certificates.insert("client".into(), test_certificate());
    let spec = serde_json::json!({
        "endpoints": [{"address": "127.0.0.1:9443"}],
        "tls": {"ca_pem": test_certificate().cert_pem, "server_name": "backend.internal", "client_certificate": "client"}
    });
    c.clusters.insert("secure".into(), parse_json(spec.to_string().as_bytes()).unwrap());
    let plain = serde_json::json!({"endpoints": [{"address": "127.0.0.1:9444"}], "tls": {"ca_pem": test_certificate().cert_pem}});
    c.clusters.insert("verify-only".into(), parse_json(plain.to_string().as_bytes()).unwrap());
    c.validate().unwrap();
    assert_eq!(Config::try_from(pb::Snapshot::from(&c)).unwrap(), c);
    assert_eq!(c.referrers(crate::config::Kind::Certificate, "client"), vec!["cluster secure".to_string()]);

    let mut missing = c.clone();
    missing.certificates.clear();
    let e = missing.validate().unwrap_err();
    assert_eq!(e.field.as_deref(), Some("clusters.secure.tls.client_certificate"), "{e}");

    let mut bad = c.clusters["secure"].clone();
    bad.tls.as_mut().unwrap().ca_pem = "not pem".into();
    assert_eq!(bad.validate().unwrap_err().field.as_deref(), Some("tls.ca_pem"));
    let mut wild = c.clusters["secure"].clone();
    wild.tls.as_mut().unwrap().server_name = Some("*.internal".into());
    assert_eq!(wild.validate().unwrap_err().field.as_deref(), Some("tls.server_name"));
    let unknown = serde_json::json!({"tls": {"ca_pem": "x", "verify": false}});
    assert!(parse_json::<Cluster>(unknown.to_string().as_bytes()).is_err());
}
