//! Serde's shape errors in the API's own words: `expected an object such as {"prefix": "/"}, not
//! the string "/"` where serde says `invalid type: string "/", expected struct PathMatch`. Users
//! write JSON and YAML; they should never read a Rust type name.

/// Rewrites one serde message; messages it does not know pass through unchanged.
pub fn humanize(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("invalid type: ").or_else(|| message.strip_prefix("invalid value: ")) {
        if let Some((got, expected)) = rest.rsplit_once(", expected ") {
            return format!("expected {}, not {}", expectation(expected), got_value(got));
        }
    }
    if let Some(field) = message.strip_prefix("missing field ") {
        return format!("{} is required", field.trim_matches('`'));
    }
    if let Some(rest) = message.strip_prefix("unknown field ") {
        if let Some((field, expected)) = rest.split_once(", expected ") {
            return format!("unknown field {}; the fields here are {}", field.trim_matches('`'), unquote(expected));
        }
        if let Some((field, _)) = rest.split_once(", there are no fields") {
            return format!("unknown field {}; this object takes no fields", field.trim_matches('`'));
        }
    }
    if let Some(rest) = message.strip_prefix("unknown variant ") {
        if let Some((value, expected)) = rest.split_once(", expected ") {
            return format!("{} is not one of {}", value.replace('`', "\""), unquote(expected));
        }
    }
    if let Some(rest) = message.strip_prefix("invalid length ") {
        if let Some((n, expected)) = rest.split_once(", expected ") {
            return format!("expected {}, not {n} items", expectation(expected));
        }
    }
    message.to_string()
}

/// `` one of `a`, `b`, `c` `` → `a, b, c`.
fn unquote(list: &str) -> String {
    list.strip_prefix("one of ").unwrap_or(list).replace('`', "")
}

/// What serde expected, as a user writes it.
fn expectation(expected: &str) -> String {
    let plain = match expected {
        "u8" => "a whole number from 0 to 255",
        "u16" => "a whole number from 0 to 65535",
        "u32" => "a whole number from 0 to 4294967295",
        "u64" | "usize" => "a whole number of 0 or more",
        "i32" | "i64" | "isize" => "a whole number",
        "f32" | "f64" => "a number",
        "a boolean" | "bool" => "true or false",
        "a sequence" => "a list",
        "a map" => "an object",
        "a string" | "a borrowed string" => "a string",
        "option" => "a value or null",
        _ => "",
    };
    if !plain.is_empty() {
        return plain.to_string();
    }
    if let Some(name) = expected.strip_prefix("struct ") {
        return match example(name) {
            Some(ex) => format!("an object such as {ex}"),
            None => "an object".to_string(),
        };
    }
    if let Some(name) = expected.strip_prefix("enum ") {
        return match example(name) {
            Some(ex) => format!("one of {ex}"),
            None => "a string".to_string(),
        };
    }
    unquote(expected)
}

/// An example of each model type a user may get the shape of wrong.
fn example(type_name: &str) -> Option<&'static str> {
    Some(match type_name {
        "PathMatch" => r#"{"prefix": "/"}"#,
        "RouteMatch" => r#"{"hosts": ["example.com"], "path": {"prefix": "/"}}"#,
        "ValueMatch" => r#"{"name": "x-canary", "exact": "1"}"#,
        "WeightedCluster" => r#"{"cluster": "api", "weight": 1}"#,
        "Endpoint" => r#"{"address": "127.0.0.1:9001", "weight": 1}"#,
        "HealthCheck" => r#"{"http": {"path": "/healthz"}, "interval_ms": 5000}"#,
        "HttpHealthCheck" => r#"{"path": "/healthz"}"#,
        "GrpcHealthCheck" => r#"{"service": ""}"#,
        "TcpHealthCheck" => "{}",
        "OutlierDetection" => r#"{"consecutive_failures": 5, "ejection_ms": 30000}"#,
        "CircuitBreaker" => r#"{"max_connections": 1024}"#,
        "UpstreamTls" => r#"{"server_name": "api.internal"}"#,
        "Sticky" => r#"{"cookie": "sluice_sticky", "ttl_s": 3600}"#,
        "HashOn" => r#"{"header": "x-user"}"#,
        "Retries" => r#"{"attempts": 2, "on": ["connect_failure", "5xx"]}"#,
        "RetryBudget" => r#"{"percent": 20}"#,
        "HttpsRedirect" => r#"{"port": 443, "status": 301}"#,
        "Http2Settings" => r#"{"max_concurrent_streams": 100}"#,
        "TcpKeepalive" => r#"{"idle_s": 60}"#,
        "Cluster" => r#"{"endpoints": [{"address": "127.0.0.1:9001"}]}"#,
        "Listener" => r#"{"address": "127.0.0.1:8080", "protocol": "http"}"#,
        "Route" => r#"{"listener": "web", "backends": [{"cluster": "api"}]}"#,
        "Certificate" => r#"{"cert_pem": "…", "key_pem": "…"}"#,
        _ => return None,
    })
}

/// What the user wrote, as serde describes it (`string "/"`, `` integer `5` ``, `map`).
fn got_value(got: &str) -> String {
    let value = |s: &str| s.trim_matches('`').to_string();
    if let Some(s) = got.strip_prefix("string ") {
        return format!("the string {s}");
    }
    for prefix in ["integer ", "floating point "] {
        if let Some(n) = got.strip_prefix(prefix) {
            return format!("the number {}", value(n));
        }
    }
    if let Some(b) = got.strip_prefix("boolean ") {
        return value(b);
    }
    match got {
        "map" => "an object".into(),
        "sequence" => "a list".into(),
        "null" | "unit value" => "null".into(),
        other => other.replace('`', ""),
    }
}

#[cfg(test)]
mod tests {
    use crate::model::{Cluster, Route};
    use crate::validate::{parse_json, ParseError};

    fn message<T: serde::de::DeserializeOwned + std::fmt::Debug>(json: &str) -> String {
        match parse_json::<T>(json.as_bytes()) {
            Err(ParseError::Invalid(e)) => e.to_string(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn shapes_are_explained_without_rust_types() {
        let m = message::<Route>(r#"{"listener":"web","match":{"path":"/"},"backends":[]}"#);
        assert_eq!(m, r#"match.path: expected an object such as {"prefix": "/"}, not the string "/""#);
        let m = message::<Cluster>(r#"{"endpoints":[{"address":"127.0.0.1:1","weight":-1}]}"#);
        assert_eq!(m, "endpoints[0].weight: expected a whole number from 0 to 4294967295, not the number -1");
        let m = message::<Cluster>(r#"{"endpoints":{"address":"x"}}"#);
        assert_eq!(m, "endpoints: expected a list, not an object");
        let m = message::<Route>(r#"{"listener":"web"}"#);
        assert_eq!(m, "backends is required");
        let m = message::<Cluster>(r#"{"endpoints":[{"adress":"127.0.0.1:1"}]}"#);
        assert!(m.starts_with("endpoints[0].adress: unknown field adress; the fields here are address"), "{m}");
        let m = message::<Cluster>(r#"{"lb_policy":"fastest"}"#);
        assert!(m.starts_with(r#"lb_policy: "fastest" is not one of round_robin"#), "{m}");
        let others = [
            message::<Cluster>(r#"{"health_check":"/healthz"}"#),
            message::<Route>(r#"{"listener":"web","backends":["api"]}"#),
            message::<Route>(r#"{"listener":5,"backends":[]}"#),
            message::<Route>(r#"{"listener":"web","priority":1.5,"backends":[]}"#),
        ];
        for m in &others {
            assert!(!m.contains("struct") && !m.contains("i32") && !m.contains('`'), "{m}");
        }
        assert!(others[1].contains(r#"expected an object such as {"cluster": "api", "weight": 1}"#), "{}", others[1]);
    }
}
