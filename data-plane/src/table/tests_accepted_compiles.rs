//! Whatever validation accepts, the table compiles: a config the control plane took must never be
//! NACKed by the fleet. Property: a rich valid config with a few fields changed at random either
//! fails validation (the control plane answers 4xx) or compiles.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{json, Value};
use sluice_shared::Config;

use super::compile;

/// Every kind of listener, policy, matcher and cluster setting, valid as it stands.
fn base() -> Value {
    json!({
        "clusters": {
            "api": {"lb_policy": "least_request",
                    "endpoints": [{"address": "127.0.0.1:9001", "weight": 3, "name": "api-1", "max_connections": 10},
                                  {"address": "[::1]:9002"}, {"address": "127.0.0.1:9003", "backup": true}],
                    "health_check": {"http": {"path": "/healthz", "expected_status": 204}, "interval_ms": 1000, "timeout_ms": 500},
                    "outlier_detection": {"consecutive_failures": 3, "ejection_ms": 1000}, "panic_mode": true,
                    "circuit_breaker": {"max_connections": 100, "max_pending": 0, "max_requests": 500}},
            "db": {"lb_policy": "maglev", "endpoints": [{"address": "127.0.0.1:5432"}, {"address": "127.0.0.1:5433", "backup": true}],
                   "health_check": {"tcp": {}}, "close_connections_on_health_change": true, "connect_timeout_ms": 250},
            "web": {"lb_policy": "ring_hash", "endpoints": [{"address": "127.0.0.1:8081"}]},
            "empty": {"lb_policy": "random", "endpoints": []}
        },
        "listeners": {
            "web": {"address": "127.0.0.1:8080", "protocol": "http", "accept_proxy_protocol": true, "proxy_protocol_from": ["10.0.0.0/8"]},
            "pg": {"address": "127.0.0.1:15432", "protocol": "tcp", "cluster": "db", "idle_timeout_ms": 60000,
                   "hash_on": {"source_ip": true}, "proxy_protocol": "v2", "tcp_keepalive": {"idle_ms": 30000}, "max_connections": 100},
            "dns": {"address": "127.0.0.1:5353", "protocol": "udp", "cluster": "db", "max_connections": 1000, "drain_ms": 5000},
            "pass": {"address": "127.0.0.1:9443", "protocol": "tls", "sni": {"a.example.com": "api", "*.example.com": "web"}}
        },
        "routes": {
            "api": {"listener": "web", "priority": 5,
                    "match": {"hosts": ["myshop.com", "*.myshop.com"], "path": {"prefix": "/api/"}, "methods": ["GET", "POST"],
                              "headers": [{"name": "x-canary", "exact": "1"}, {"name": "x-re", "regex": "^a"}, {"name": "x-p", "present": false}],
                              "query": [{"name": "debug", "present": true}, {"name": "r", "regex": "[0-9]+"}]},
                    "backends": [{"cluster": "api", "weight": 90}, {"cluster": "web", "weight": 10}], "timeout_ms": 15000,
                    "sticky": {"cookie": "s", "ttl_s": 60},
                    "retries": {"attempts": 2, "on": ["connect_failure", "reset", "5xx"], "per_try_timeout_ms": 250,
                                "budget": {"percent": 10, "min_per_s": 0}},
                    "max_request_body_bytes": 1048576,
                    "rewrite": {"prefix": "/v2/", "host": "api.internal"},
                    "request_headers": {"remove": ["x-a"], "set": {"x-client": "%CLIENT_IP%"}, "add": {"x-r": "%ROUTE%"}},
                    "response_headers": {"set": {"server": "sluice"}}},
            "moved": {"listener": "web", "match": {"path": {"prefix": "/old/"}}, "backends": [],
                      "redirect": {"prefix": "/new/", "status": 308}},
            "regex": {"listener": "web", "match": {"path": {"prefix": "/u/"}}, "backends": [{"cluster": "api"}],
                      "rewrite": {"regex": {"pattern": "^/u/([0-9]+)$", "substitution": "/users/$1"}}},
            "exact": {"listener": "web", "match": {"path": {"exact": "/x"}}, "backends": [{"cluster": "web"}],
                      "hash_on": {"header": "x-user"}},
            "re": {"listener": "web", "match": {"path": {"regex": "^/r/[a-z]+$"}, "hosts": ["*.b.test"]}, "backends": [{"cluster": "api"}]}
        }
    })
}

/// The paths (object keys and array indices) of every value in `v`, containers included.
fn paths(v: &Value, at: &mut Vec<Value>, out: &mut Vec<Vec<Value>>) {
    out.push(at.clone());
    match v {
        Value::Object(m) => m.iter().for_each(|(k, c)| {
            at.push(json!(k));
            paths(c, at, out);
            at.pop();
        }),
        Value::Array(a) => a.iter().enumerate().for_each(|(i, c)| {
            at.push(json!(i));
            paths(c, at, out);
            at.pop();
        }),
        _ => {}
    }
}

/// Replaces (or, with `None`, removes) the value at `path`.
fn set(root: &mut Value, path: &[Value], new: Option<Value>) {
    let Some((last, parents)) = path.split_last() else { return };
    let mut v = root;
    for p in parents {
        v = match (v, p) {
            (Value::Object(m), Value::String(k)) => m.get_mut(k).unwrap(),
            (Value::Array(a), Value::Number(i)) => &mut a[i.as_u64().unwrap() as usize],
            _ => unreachable!("paths come from this value"),
        };
    }
    match (v, last, new) {
        (Value::Object(m), Value::String(k), Some(n)) => drop(m.insert(k.clone(), n)),
        (Value::Object(m), Value::String(k), None) => drop(m.remove(k)),
        (Value::Array(a), Value::Number(i), Some(n)) => a[i.as_u64().unwrap() as usize] = n,
        (Value::Array(a), Value::Number(i), None) => drop(a.remove(i.as_u64().unwrap() as usize)),
        _ => unreachable!("paths come from this value"),
    }
}

/// The value at `path`.
fn get<'v>(root: &'v Value, path: &[Value]) -> &'v Value {
    path.iter().fold(root, |v, p| match p {
        Value::String(k) => &v[k.as_str()],
        _ => &v[p.as_u64().unwrap() as usize],
    })
}

/// A change to `old` that mostly keeps its JSON type (so the config still deserializes and
/// reaches validation): another number or string from the edges of what fields take, a flipped
/// flag, an element or key dropped or repeated; now and then any value, or none.
fn mutate(old: &Value, pick: Index, kind: u8) -> Option<Value> {
    let numbers = [
        json!(0),
        json!(1),
        json!(2),
        json!(3),
        json!(100),
        json!(65535),
        json!(65536),
        json!(u32::MAX),
        json!(u64::MAX),
    ];
    let strings = [
        "",
        "x",
        "api",
        "db",
        "web",
        "empty",
        "pass",
        "127.0.0.1:0",
        "127.0.0.1:9001",
        "127.0.0.1:8080",
        "[::1]:1",
        "0.0.0.0:8080",
        "localhost:80",
        "/",
        "/api/",
        "/x",
        "*",
        "*.x.test",
        "a..b",
        "(",
        "^$",
        "[a-",
        ".*",
        "tcp",
        "udp",
        "tls",
        "http",
        "https",
        "GET",
        "v1",
        "v2",
        "10.0.0.0/33",
        "10.0.0.0/8",
        "::/0",
        "maglev",
        "ring_hash",
        "random",
        "5xx",
        "reset",
        "x-user",
        "a.example.com",
        "*.example.com",
        "A.EXAMPLE.COM",
    ];
    match (kind % 10, old) {
        (0, _) => None,
        (1, _) => Some(json!(pick.get(&strings))),
        (_, Value::Number(_)) => Some(pick.get(&numbers).clone()),
        (_, Value::String(_)) => Some(json!(pick.get(&strings))),
        (_, Value::Bool(b)) => Some(json!(!b)),
        (_, Value::Array(a)) if !a.is_empty() && kind.is_multiple_of(2) => {
            let mut a = a.clone();
            a.push(pick.get(&a).clone());
            Some(Value::Array(a))
        }
        (_, Value::Array(a)) if !a.is_empty() => {
            let mut a = a.clone();
            a.remove(pick.index(a.len()));
            Some(Value::Array(a))
        }
        (_, Value::Object(m)) if !m.is_empty() => {
            let mut m = m.clone();
            let key = pick.get(&m.keys().cloned().collect::<Vec<_>>()).clone();
            m.remove(&key);
            Some(Value::Object(m))
        }
        (_, other) => Some(other.clone()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn what_validation_accepts_compiles(changes in vec((any::<Index>(), any::<Index>(), any::<u8>()), 1..4)) {
        let mut v = base();
        for (at, pick, kind) in changes {
            let mut all = Vec::new();
            paths(&v, &mut Vec::new(), &mut all);
            let path = at.get(&all).clone();
            let new = mutate(get(&v, &path), pick, kind);
            set(&mut v, &path, new);
        }
        let Ok(cfg) = serde_json::from_value::<Config>(v.clone()) else { return Ok(()) };
        if cfg.validate().is_ok() {
            if let Err(e) = compile(&cfg, None) {
                prop_assert!(false, "accepted but not compiled: {e}\n{v:#}");
            }
        }
    }
}

#[test]
fn the_base_config_is_valid_and_compiles() {
    let cfg: Config = serde_json::from_value(base()).unwrap();
    cfg.validate().unwrap();
    compile(&cfg, None).unwrap();
}
