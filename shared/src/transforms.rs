//! What a route changes on the way through: request and response headers, the path and Host sent
//! upstream, or a redirect instead of a forward. The types are the REST JSON; each validates
//! itself, naming the field at fault.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::validate::{Result, ValidationError};

/// At most this many header operations of each kind per route.
const MAX_HEADER_OPS: usize = 64;
const MAX_VALUE: usize = 4096;
/// Variables a header value may use; `%%` is a literal `%`.
pub const VARIABLES: [&str; 3] = ["%CLIENT_IP%", "%REQUEST_ID%", "%ROUTE%"];

/// `remove`, then `set` (replacing every value), then `add` (one more value), applied in that
/// order. Values may use `%CLIENT_IP%`, `%REQUEST_ID%` and `%ROUTE%`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderRewrite {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
}

/// The path and Host the endpoint gets (the route matched the request as the client sent it).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rewrite {
    /// Replaces the part of the path the route's `match.path.prefix` matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Replaces what `pattern` matches in the path (every match) with `substitution`, where
    /// `$1`, `${name}` refer to groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<RegexRewrite>,
    /// The Host (HTTP/2: `:authority`) sent upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegexRewrite {
    pub pattern: String,
    pub substitution: String,
}

/// Answer with a redirect: the request's URL with the parts given here replaced.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    /// `http` or `https`; default: the request's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Default: none in the Location when the scheme changes, else the request's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Replaces the whole path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Replaces the part of the path the route's `match.path.prefix` matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strip_query: bool,
    /// 301 (default), 302, 303, 307 or 308.
    #[serde(default = "Redirect::default_status")]
    pub status: u16,
}

impl Redirect {
    pub fn default_status() -> u16 {
        301
    }
}

/// A share of a route's requests copied to another cluster (responses discarded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    pub cluster: String,
    /// 1-100 (default 100).
    #[serde(default = "Mirror::default_percent")]
    pub percent: u32,
}

impl Mirror {
    pub fn default_percent() -> u32 {
        100
    }

    pub fn validate(&self) -> Result<()> {
        crate::validate::name("cluster", &self.cluster)?;
        if !(1..=100).contains(&self.percent) {
            return Err(ValidationError::invalid("percent", "1-100"));
        }
        Ok(())
    }
}

/// Headers a rewrite may not touch: framing and connection management are the proxy's, and so
/// are the forwarding headers it adds (request side).
const NOT_REWRITABLE: [&str; 10] = [
    "connection",
    "content-length",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    ":authority",
];
const FORWARDING: [&str; 4] = ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-request-id"];

impl HeaderRewrite {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    /// `request`: the forwarding headers are off limits too (the proxy writes them last).
    pub fn validate(&self, request: bool) -> Result<()> {
        let name_ok = |field: String, name: &str| -> Result<()> {
            let lower = name.to_ascii_lowercase();
            if !crate::validate::is_token(name) {
                return Err(ValidationError::invalid(field, format!("{name:?} is not a header name")));
            }
            if NOT_REWRITABLE.contains(&lower.as_str()) || (request && FORWARDING.contains(&lower.as_str())) {
                let why = match lower.as_str() {
                    "host" => format!("{name} is set with rewrite.host"),
                    _ => format!("{name} is the proxy's to write"),
                };
                return Err(ValidationError::invalid(field, why));
            }
            Ok(())
        };
        for (what, len) in [("remove", self.remove.len()), ("set", self.set.len()), ("add", self.add.len())] {
            if len > MAX_HEADER_OPS {
                return Err(ValidationError::invalid(what, format!("at most {MAX_HEADER_OPS} headers")));
            }
        }
        for (i, name) in self.remove.iter().enumerate() {
            name_ok(format!("remove[{i}]"), name)?;
        }
        for (what, map) in [("set", &self.set), ("add", &self.add)] {
            for (name, value) in map {
                name_ok(format!("{what}.{name}"), name)?;
                header_value(&format!("{what}.{name}"), value)?;
            }
        }
        Ok(())
    }
}

/// A header value template: visible characters and spaces, and only the known variables.
fn header_value(field: &str, value: &str) -> Result<()> {
    if value.len() > MAX_VALUE {
        return Err(ValidationError::invalid(field, format!("at most {MAX_VALUE} bytes")));
    }
    if !value.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80) {
        return Err(ValidationError::invalid(field, "control characters are not allowed in a header value"));
    }
    let mut rest = value;
    while let Some(at) = rest.find('%') {
        let after = &rest[at..];
        if let Some(r) = after.strip_prefix("%%") {
            rest = r;
            continue;
        }
        match VARIABLES.iter().find(|v| after.starts_with(**v)) {
            Some(v) => rest = &after[v.len()..],
            None => {
                let known = VARIABLES.join(", ");
                return Err(ValidationError::invalid(
                    field,
                    format!("unknown variable in {value:?}: use {known}, or %% for %"),
                ));
            }
        }
    }
    Ok(())
}

/// A path a rewrite or redirect puts in place: absolute, and only characters a request target
/// may carry (no query, fragment, space or control character).
fn path(field: &str, p: &str) -> Result<()> {
    let ok = p.starts_with('/')
        && p.bytes().all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#')
        && p.split('/').all(|s| s != ".." && s != ".");
    if ok {
        Ok(())
    } else {
        Err(ValidationError::invalid(
            field,
            format!("{p:?} is not an absolute path (no query, dot segments or spaces)"),
        ))
    }
}

/// A host name or IP literal, with no port.
fn host(field: &str, h: &str) -> Result<()> {
    let literal = h.strip_prefix('[').and_then(|r| r.strip_suffix(']'));
    let ok = match literal {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !h.is_empty()
                && h.len() <= 253
                && h.split('.').all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        }
    };
    if ok {
        Ok(())
    } else {
        Err(ValidationError::invalid(field, format!("{h:?} is not a host name (no port, no path)")))
    }
}

impl Rewrite {
    /// `matched_prefix`: whether the route matches on a path prefix (what `prefix` replaces).
    pub fn validate(&self, matched_prefix: bool) -> Result<()> {
        match (&self.prefix, &self.regex) {
            (Some(_), Some(_)) => return Err(ValidationError::invalid("regex", "prefix and regex exclude each other")),
            (Some(p), None) => {
                if !matched_prefix {
                    return Err(ValidationError::invalid("prefix", "needs a route matching on match.path.prefix"));
                }
                path("prefix", p)?;
            }
            (None, Some(r)) => {
                crate::validate::regex("regex.pattern", &r.pattern)?;
                if r.substitution.len() > MAX_VALUE || r.substitution.bytes().any(|b| b.is_ascii_control()) {
                    return Err(ValidationError::invalid("regex.substitution", "at most 4096 visible characters"));
                }
            }
            (None, None) => {}
        }
        if let Some(h) = &self.host {
            host("host", h)?;
        }
        Ok(())
    }
}

impl Redirect {
    pub fn validate(&self, matched_prefix: bool) -> Result<()> {
        if let Some(s) = &self.scheme {
            if s != "http" && s != "https" {
                return Err(ValidationError::invalid("scheme", "http or https"));
            }
        }
        if let Some(h) = &self.host {
            host("host", h)?;
        }
        if self.port == Some(0) {
            return Err(ValidationError::invalid("port", "1-65535"));
        }
        match (&self.path, &self.prefix) {
            (Some(_), Some(_)) => return Err(ValidationError::invalid("prefix", "path and prefix exclude each other")),
            (Some(p), None) => path("path", p)?,
            (None, Some(p)) => {
                if !matched_prefix {
                    return Err(ValidationError::invalid("prefix", "needs a route matching on match.path.prefix"));
                }
                path("prefix", p)?;
            }
            (None, None) => {}
        }
        if ![301, 302, 303, 307, 308].contains(&self.status) {
            return Err(ValidationError::invalid("status", "301, 302, 303, 307 or 308"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::parse_json;

    fn headers(json: &str, request: bool) -> Option<String> {
        parse_json::<HeaderRewrite>(json.as_bytes()).unwrap().validate(request).err().and_then(|e| e.field)
    }

    #[test]
    fn header_rewrites_name_the_header_at_fault() {
        assert_eq!(
            headers(r#"{"set":{"x-a":"%CLIENT_IP% via %ROUTE% (%REQUEST_ID%) 100%%"},"remove":["server"]}"#, true),
            None
        );
        assert_eq!(headers(r#"{"set":{"x-a":"%CLIENTIP%"}}"#, true).as_deref(), Some("set.x-a"));
        assert_eq!(headers(r#"{"add":{"x-a":"a\nb"}}"#, true).as_deref(), Some("add.x-a"));
        assert_eq!(headers(r#"{"add":{"x a":"b"}}"#, true).as_deref(), Some("add.x a"));
        assert_eq!(headers(r#"{"remove":["ok","Transfer-Encoding"]}"#, true).as_deref(), Some("remove[1]"));
        assert_eq!(headers(r#"{"set":{"host":"x"}}"#, true).as_deref(), Some("set.host"));
        assert_eq!(headers(r#"{"set":{"x-forwarded-for":"x"}}"#, true).as_deref(), Some("set.x-forwarded-for"));
        assert_eq!(headers(r#"{"set":{"x-request-id":"%REQUEST_ID%"}}"#, false), None, "a response may carry it");
    }

    #[test]
    fn rewrites_and_redirects_are_checked() {
        let rewrite = |json: &str, prefix: bool| {
            parse_json::<Rewrite>(json.as_bytes()).unwrap().validate(prefix).err().and_then(|e| e.field)
        };
        assert_eq!(rewrite(r#"{"prefix":"/v2/","host":"api.internal"}"#, true), None);
        assert_eq!(rewrite(r#"{"prefix":"/v2/"}"#, false).as_deref(), Some("prefix"));
        assert_eq!(rewrite(r#"{"prefix":"v2"}"#, true).as_deref(), Some("prefix"));
        assert_eq!(rewrite(r#"{"prefix":"/a/../b"}"#, true).as_deref(), Some("prefix"));
        assert_eq!(rewrite(r#"{"regex":{"pattern":"^/(\\w+)$","substitution":"/x/$1"}}"#, false), None);
        assert_eq!(rewrite(r#"{"regex":{"pattern":"(","substitution":"/"}}"#, false).as_deref(), Some("regex.pattern"));
        assert_eq!(rewrite(r#"{"host":"a.com:80"}"#, false).as_deref(), Some("host"));
        assert_eq!(rewrite(r#"{"host":"[::1]"}"#, false), None);
        let redirect =
            |json: &str| parse_json::<Redirect>(json.as_bytes()).unwrap().validate(false).err().and_then(|e| e.field);
        assert_eq!(
            redirect(r#"{"scheme":"https","host":"new.example.com","port":8443,"path":"/x","status":308}"#),
            None
        );
        assert_eq!(redirect(r#"{"scheme":"ftp"}"#).as_deref(), Some("scheme"));
        assert_eq!(redirect(r#"{"status":200}"#).as_deref(), Some("status"));
        assert_eq!(redirect(r#"{"prefix":"/x/"}"#).as_deref(), Some("prefix"));
        assert_eq!(redirect(r#"{"path":"/x?y"}"#).as_deref(), Some("path"));
        assert_eq!(redirect(r#"{"host":"a/b"}"#).as_deref(), Some("host"));
    }
}
