//! Validation of single resources. Every error names the field at fault in the JSON path syntax the
//! REST API reports (`endpoints[0].address`, `match.path.regex`).
//!
//! Checks that span resources (references, address conflicts) live in [`crate::config`].

use std::collections::HashSet;
use std::fmt;

use serde::de::DeserializeOwned;

use crate::endpoint_address::EndpointAddress;
use crate::model::*;

/// Why a resource or a whole config was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The input is well-formed JSON but not a valid resource (REST: 422).
    Invalid,
    /// Valid on its own but clashes with what is stored (REST: 409).
    Conflict,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationError {
    pub kind: ErrorKind,
    /// JSON path of the field at fault, when one is.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{field}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl ValidationError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { kind: ErrorKind::Invalid, field: Some(field.into()).filter(|f| !f.is_empty()), message: message.into() }
    }

    pub fn conflict(field: Option<String>, message: impl Into<String>) -> Self {
        Self { kind: ErrorKind::Conflict, field, message: message.into() }
    }

    /// Puts `prefix` in front of the field path (`endpoints[0]` + `address`).
    pub fn within(mut self, prefix: &str) -> Self {
        self.field = Some(match self.field.take() {
            Some(f) if f.starts_with('[') => format!("{prefix}{f}"),
            Some(f) => format!("{prefix}.{f}"),
            None => prefix.to_string(),
        });
        self
    }
}

pub type Result<T, E = ValidationError> = std::result::Result<T, E>;

/// Problems listed per resource at most (a resource with more is mostly one mistake repeated).
pub const MAX_PROBLEMS_PER_RESOURCE: usize = 20;

/// Runs independent checks and keeps every error, so that one answer lists them all.
fn each(checks: &[&dyn Fn() -> Result<()>]) -> Vec<ValidationError> {
    checks.iter().filter_map(|check| check().err()).take(MAX_PROBLEMS_PER_RESOURCE).collect()
}

fn first(problems: Vec<ValidationError>) -> Result<()> {
    match problems.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Why a JSON body could not become a resource spec.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// Not JSON at all, or nested beyond the parser's limit (REST: 400).
    #[error("malformed JSON: {0}")]
    Malformed(String),
    /// JSON of the wrong shape: unknown field, wrong type, missing field (REST: 422).
    #[error(transparent)]
    Invalid(ValidationError),
}

/// Parses a JSON body into `T`, telling malformed JSON (400) from a wrong shape (422, with the path).
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ParseError> {
    // A syntax pass first, so "not JSON" is never reported as a shape problem.
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| ParseError::Malformed(e.to_string()))?;
    parse_value(value).map_err(ParseError::Invalid)
}

/// Turns parsed JSON into `T`; a wrong shape names its path and says what was expected in the
/// API's words.
pub fn parse_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { String::new() } else { path };
        ValidationError::invalid(field, crate::wording::humanize(&e.into_inner().to_string()))
    })
}

// ------------------------------------------------------------------------------------ primitives

pub const MAX_WEIGHT: u32 = 1_000_000;
pub const MAX_TIMEOUT_MS: u64 = 24 * 3_600 * 1_000;
pub const MAX_RETRIES: u32 = 10;
/// Compiled-size bound for one regex, so a hostile pattern cannot eat the proxy's memory.
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;
pub const MAX_LIST: usize = 10_000;

/// Resource and group names: `^[a-z0-9][a-z0-9-]{0,62}$`.
pub fn is_valid_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

pub fn name(field: &str, s: &str) -> Result<()> {
    if is_valid_name(s) {
        Ok(())
    } else {
        Err(ValidationError::invalid(field, format!("{s:?} is not a valid name (^[a-z0-9][a-z0-9-]{{0,62}}$)")))
    }
}

pub fn socket_addr(field: &str, s: &str) -> Result<()> {
    match s.parse::<std::net::SocketAddr>() {
        Ok(a) if a.port() == 0 => Err(ValidationError::invalid(field, format!("{s:?}: port 0 is not allowed"))),
        Ok(_) => Ok(()),
        Err(_) => Err(ValidationError::invalid(field, format!("{s:?} is not an IP:port address"))),
    }
}

pub fn regex(field: &str, pattern: &str) -> Result<()> {
    regex::RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map(|_| ())
        .map_err(|e| ValidationError::invalid(field, format!("bad regex: {e}")))
}

fn timeout(field: &str, ms: u64) -> Result<()> {
    if ms == 0 || ms > MAX_TIMEOUT_MS {
        return Err(ValidationError::invalid(field, format!("must be between 1 and {MAX_TIMEOUT_MS} ms")));
    }
    Ok(())
}

fn weights(field: &str, ws: impl Iterator<Item = u32> + Clone) -> Result<()> {
    for (i, w) in ws.clone().enumerate() {
        if w > MAX_WEIGHT {
            return Err(ValidationError::invalid(
                format!("{field}[{i}].weight"),
                format!("must be at most {MAX_WEIGHT}"),
            ));
        }
    }
    let mut ws = ws.peekable();
    if ws.peek().is_some() && ws.all(|w| w == 0) {
        return Err(ValidationError::invalid(field, "weights must not all be zero"));
    }
    Ok(())
}

fn list_len(field: &str, len: usize) -> Result<()> {
    if len > MAX_LIST {
        return Err(ValidationError::invalid(field, format!("at most {MAX_LIST} entries")));
    }
    Ok(())
}

/// An HTTP token (RFC 9110 `tchar`), as header, cookie and method names must be.
pub fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c))
}

/// A host name of a route or SNI map: lower-case DNS labels, optionally `*.` in front.
pub fn host_pattern(field: &str, host: &str) -> Result<()> {
    let bare = host.strip_prefix("*.").unwrap_or(host);
    let ok = !bare.is_empty()
        && bare.len() <= 253
        && bare.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(ValidationError::invalid(field, format!("{host:?} is not a lower-case host name (or *.name)")))
    }
}

// ------------------------------------------------------------------------------------ resources

impl Cluster {
    pub fn validate(&self) -> Result<()> {
        first(self.problems())
    }

    /// Every problem of the cluster: one per independent part (each endpoint, the health check, …).
    pub fn problems(&self) -> Vec<ValidationError> {
        let mut out = each(&[&|| list_len("endpoints", self.endpoints.len())]);
        let mut seen = HashSet::new();
        let mut names = HashSet::new();
        for (i, e) in self.endpoints.iter().enumerate() {
            let mut endpoint = || {
                let f = format!("endpoints[{i}].address");
                let address = EndpointAddress::parse(&e.address).map_err(|why| ValidationError::invalid(&f, why))?;
                if !seen.insert(address) {
                    return Err(ValidationError::invalid(f, format!("{} is listed twice", e.address)));
                }
                if let Some(n) = &e.name {
                    let f = format!("endpoints[{i}].name");
                    name(&f, n)?;
                    if !names.insert(n.as_str()) {
                        return Err(ValidationError::invalid(f, format!("{n} is listed twice")));
                    }
                }
                if e.max_connections == Some(0) {
                    let f = format!("endpoints[{i}].max_connections");
                    return Err(ValidationError::invalid(f, "must be at least 1 (leave it out for no limit)"));
                }
                Ok(())
            };
            out.extend(endpoint().err());
            if out.len() >= MAX_PROBLEMS_PER_RESOURCE {
                return out;
            }
        }
        out.extend(each(&[
            &|| weights("endpoints", self.endpoints.iter().map(|e| e.weight)),
            &|| self.health_check.as_ref().map_or(Ok(()), |hc| hc.validate().map_err(|e| e.within("health_check"))),
            &|| {
                if let Some(od) = &self.outlier_detection {
                    if od.consecutive_failures == 0 {
                        return Err(ValidationError::invalid(
                            "outlier_detection.consecutive_failures",
                            "must be at least 1",
                        ));
                    }
                    timeout("outlier_detection.ejection_ms", od.ejection_ms)?;
                }
                Ok(())
            },
            &|| self.tls.as_ref().map_or(Ok(()), |tls| tls.validate().map_err(|e| e.within("tls"))),
            &|| {
                if let Some(cb) = &self.circuit_breaker {
                    if cb.max_connections == Some(0) {
                        return Err(ValidationError::invalid("circuit_breaker.max_connections", "must be at least 1"));
                    }
                    if cb.max_requests == Some(0) {
                        return Err(ValidationError::invalid("circuit_breaker.max_requests", "must be at least 1"));
                    }
                }
                Ok(())
            },
            &|| self.connect_timeout_ms.map_or(Ok(()), |ms| timeout("connect_timeout_ms", ms)),
            &|| {
                if self.close_connections_on_health_change
                    && self.health_check.is_none()
                    && self.outlier_detection.is_none()
                {
                    return Err(ValidationError::invalid(
                        "close_connections_on_health_change",
                        "needs a health_check or outlier_detection: only they change an endpoint's health",
                    ));
                }
                Ok(())
            },
        ]));
        out
    }
}

impl crate::model::UpstreamTls {
    pub fn validate(&self) -> Result<()> {
        crate::certs::inspect(&self.ca_pem)
            .map_err(|e| ValidationError::invalid("ca_pem", e.message.replace("cert_pem", "ca_pem")))?;
        if let Some(n) = &self.server_name {
            if n.parse::<std::net::IpAddr>().is_err() {
                host_pattern("server_name", n)?;
                if n.starts_with("*.") {
                    return Err(ValidationError::invalid("server_name", "must be a host name, not a wildcard"));
                }
            }
        }
        if let Some(c) = &self.client_certificate {
            name("client_certificate", c)?;
        }
        Ok(())
    }
}

impl HealthCheck {
    pub fn validate(&self) -> Result<()> {
        match (&self.http, &self.tcp, &self.grpc) {
            (Some(h), None, None) => {
                if !h.path.starts_with('/') || h.path.bytes().any(|c| c.is_ascii_control() || c == b' ') {
                    return Err(ValidationError::invalid(
                        "http.path",
                        "must start with / and hold no spaces or control bytes",
                    ));
                }
                if let Some(s) = h.expected_status {
                    if !(100..=599).contains(&s) {
                        return Err(ValidationError::invalid(
                            "http.expected_status",
                            "must be an HTTP status (100-599)",
                        ));
                    }
                }
            }
            (None, Some(_), None) => {}
            (None, None, Some(g)) => {
                if g.service.len() > 1024 || g.service.bytes().any(|c| c.is_ascii_control()) {
                    return Err(ValidationError::invalid("grpc.service", "at most 1024 bytes, no control bytes"));
                }
            }
            _ => return Err(ValidationError::invalid("", "set exactly one of http, tcp, grpc")),
        }
        timeout("interval_ms", self.interval_ms)?;
        timeout("timeout_ms", self.timeout_ms)?;
        if self.healthy_threshold == 0 {
            return Err(ValidationError::invalid("healthy_threshold", "must be at least 1"));
        }
        if self.unhealthy_threshold == 0 {
            return Err(ValidationError::invalid("unhealthy_threshold", "must be at least 1"));
        }
        Ok(())
    }
}

impl TcpKeepalive {
    /// The kernel's bounds (Linux: 1-32,767 s, 1-127 probes), in the API's milliseconds.
    pub fn validate(&self) -> Result<()> {
        const MAX_MS: u64 = 32_767_000;
        for (field, ms) in [("idle_ms", self.idle_ms), ("interval_ms", self.interval_ms)] {
            if !(1..=MAX_MS).contains(&ms) {
                return Err(ValidationError::invalid(field, format!("must be between 1 and {MAX_MS} ms")));
            }
        }
        if !(1..=127).contains(&self.probes) {
            return Err(ValidationError::invalid("probes", "must be between 1 and 127"));
        }
        Ok(())
    }
}

impl HashOn {
    pub fn validate(&self) -> Result<()> {
        let set = usize::from(self.header.is_some()) + usize::from(self.cookie.is_some()) + usize::from(self.source_ip);
        if set != 1 {
            return Err(ValidationError::invalid("", "set exactly one of header, cookie, source_ip"));
        }
        if let Some(h) = &self.header {
            if !is_token(h) {
                return Err(ValidationError::invalid("header", format!("{h:?} is not a header name")));
            }
        }
        if let Some(c) = &self.cookie {
            if !is_token(c) {
                return Err(ValidationError::invalid("cookie", format!("{c:?} is not a cookie name")));
            }
        }
        Ok(())
    }
}

impl Listener {
    pub fn validate(&self) -> Result<()> {
        first(self.problems())
    }

    /// Every problem of the listener: one per independent part.
    pub fn problems(&self) -> Vec<ValidationError> {
        each(&[
            &|| socket_addr("address", &self.address),
            &|| name("group", &self.group),
            &|| self.cluster.as_ref().map_or(Ok(()), |c| name("cluster", c)),
            &|| {
                for (i, c) in self.certificates.iter().enumerate() {
                    name(&format!("certificates[{i}]"), c)?;
                }
                Ok(())
            },
            &|| {
                for (host, cluster) in &self.sni {
                    host_pattern(&format!("sni.{host}"), host)?;
                    name(&format!("sni.{host}"), cluster)?;
                }
                Ok(())
            },
            &|| self.idle_timeout_ms.map_or(Ok(()), |ms| timeout("idle_timeout_ms", ms)),
            &|| self.hash_on.as_ref().map_or(Ok(()), |h| h.validate().map_err(|e| e.within("hash_on"))),
            &|| match self.max_connections {
                Some(0) => Err(ValidationError::invalid("max_connections", "must be at least 1")),
                _ => Ok(()),
            },
            &|| self.drain_ms.map_or(Ok(()), |ms| timeout("drain_ms", ms)),
            &|| self.tcp_keepalive.as_ref().map_or(Ok(()), |k| k.validate().map_err(|e| e.within("tcp_keepalive"))),
            &|| {
                for (i, net) in self.proxy_protocol_from.iter().enumerate() {
                    if let Err(e) = net.parse::<crate::cidr::Cidr>() {
                        return Err(ValidationError::invalid(format!("proxy_protocol_from[{i}]"), e.to_string()));
                    }
                }
                if !self.proxy_protocol_from.is_empty() && !self.accept_proxy_protocol {
                    return Err(ValidationError::invalid(
                        "proxy_protocol_from",
                        "only a listener with accept_proxy_protocol takes this field",
                    ));
                }
                Ok(())
            },
            &|| self.http2.as_ref().map_or(Ok(()), |h| h.validate().map_err(|e| e.within("http2"))),
            &|| {
                let mut versions = HashSet::new();
                for (i, v) in self.http_versions.iter().enumerate() {
                    if !versions.insert(v) {
                        return Err(ValidationError::invalid(format!("http_versions[{i}]"), "is listed twice"));
                    }
                }
                Ok(())
            },
            &|| self.header_timeout_ms.map_or(Ok(()), |ms| timeout("header_timeout_ms", ms)),
            &|| self.body_timeout_ms.map_or(Ok(()), |ms| timeout("body_timeout_ms", ms)),
            &|| cidrs("allow_from", &self.allow_from),
            &|| cidrs("deny_from", &self.deny_from),
            &|| self.protocol_fields(),
        ])
    }

    /// The fields each protocol takes and needs.
    fn protocol_fields(&self) -> Result<()> {
        let only = |field: &str, set: bool, protocols: &str| {
            if set {
                Err(ValidationError::invalid(field, format!("only {protocols} listeners take this field")))
            } else {
                Ok(())
            }
        };
        match self.protocol {
            Protocol::Http => {
                only("cluster", self.cluster.is_some(), "tcp, udp and tls")?;
                only("proxy_protocol", self.proxy_protocol.is_some(), "tcp and tls")?;
                only("tcp_keepalive", self.tcp_keepalive.is_some(), "tcp and tls")?;
                only("certificates", !self.certificates.is_empty(), "https")?;
                only("sni", !self.sni.is_empty(), "tls")?;
            }
            Protocol::Https => {
                only("cluster", self.cluster.is_some(), "tcp, udp and tls")?;
                only("proxy_protocol", self.proxy_protocol.is_some(), "tcp and tls")?;
                only("tcp_keepalive", self.tcp_keepalive.is_some(), "tcp and tls")?;
                only("sni", !self.sni.is_empty(), "tls")?;
                if self.certificates.is_empty() {
                    return Err(ValidationError::invalid(
                        "certificates",
                        "an https listener needs at least one certificate",
                    ));
                }
            }
            Protocol::Tcp | Protocol::Udp | Protocol::Tls => {
                only("http_versions", !self.http_versions.is_empty(), "http and https")?;
                only("http2", self.http2.is_some(), "http and https")?;
                only("paths", self.paths.is_some(), "http and https")?;
                only("header_timeout_ms", self.header_timeout_ms.is_some(), "http and https")?;
                only("body_timeout_ms", self.body_timeout_ms.is_some(), "http and https")?;
            }
        }
        match self.protocol {
            Protocol::Http | Protocol::Https => {}
            Protocol::Tcp | Protocol::Udp => {
                only("certificates", !self.certificates.is_empty(), "https")?;
                // Raw traffic has no headers or cookies: the client IP is the only key.
                if self.hash_on.as_ref().is_some_and(|h| !h.source_ip) {
                    return Err(ValidationError::invalid("hash_on", "tcp and udp listeners hash on source_ip only"));
                }
                only("sni", !self.sni.is_empty(), "tls")?;
                if self.cluster.is_none() {
                    return Err(ValidationError::invalid("cluster", "a tcp or udp listener needs a cluster"));
                }
                // A datagram has no connection to start with a header.
                if self.protocol == Protocol::Udp {
                    only("proxy_protocol", self.proxy_protocol.is_some(), "tcp and tls")?;
                    only("accept_proxy_protocol", self.accept_proxy_protocol, "http, https, tcp and tls")?;
                    only("tcp_keepalive", self.tcp_keepalive.is_some(), "tcp and tls")?;
                }
            }
            Protocol::Tls => {
                only("certificates", !self.certificates.is_empty(), "https")?;
                if self.cluster.is_none() && self.sni.is_empty() {
                    return Err(ValidationError::invalid(
                        "sni",
                        "a tls listener needs an sni map or a default cluster",
                    ));
                }
            }
        }
        Ok(())
    }
}

impl crate::model::Http2Settings {
    pub fn validate(&self) -> Result<()> {
        let range = |field: &str, v: Option<u32>, min: u32, max: u32| match v {
            Some(v) if v < min || v > max => {
                Err(ValidationError::invalid(field, format!("must be between {min} and {max}")))
            }
            _ => Ok(()),
        };
        range("max_concurrent_streams", self.max_concurrent_streams, 1, 10_000)?;
        range("max_header_list_bytes", self.max_header_list_bytes, 1024, 1 << 20)?;
        // RFC 9113 §6.9.1: a window is at most 2^31-1; below 64 KiB-1 it only slows clients.
        range("initial_stream_window_bytes", self.initial_stream_window_bytes, 65_535, (1 << 31) - 1)?;
        range("initial_connection_window_bytes", self.initial_connection_window_bytes, 65_535, (1 << 31) - 1)?;
        if let Some(ms) = self.idle_timeout_ms {
            timeout("idle_timeout_ms", ms)?;
        }
        if let Some(ms) = self.max_connection_age_ms {
            timeout("max_connection_age_ms", ms)?;
        }
        Ok(())
    }
}

impl Route {
    pub fn validate(&self) -> Result<()> {
        first(self.problems())
    }

    /// Every problem of the route: one per independent part.
    pub fn problems(&self) -> Vec<ValidationError> {
        each(&[
            &|| name("listener", &self.listener),
            &|| self.matcher.validate().map_err(|e| e.within("match")),
            &|| {
                // A redirecting or directly answering route never reaches a backend: it may name none.
                if self.backends.is_empty() && !self.answers_itself() {
                    return Err(ValidationError::invalid("backends", "a route needs at least one backend"));
                }
                list_len("backends", self.backends.len())?;
                let mut seen = HashSet::new();
                for (i, b) in self.backends.iter().enumerate() {
                    let f = format!("backends[{i}].cluster");
                    name(&f, &b.cluster)?;
                    if !seen.insert(b.cluster.as_str()) {
                        return Err(ValidationError::invalid(f, format!("{} is listed twice", b.cluster)));
                    }
                }
                weights("backends", self.backends.iter().map(|b| b.weight))
            },
            &|| self.timeout_ms.map_or(Ok(()), |ms| timeout("timeout_ms", ms)),
            &|| {
                if let Some(s) = &self.sticky {
                    if !is_token(&s.cookie) {
                        let message = format!("{:?} is not a cookie name", s.cookie);
                        return Err(ValidationError::invalid("sticky.cookie", message));
                    }
                    if s.ttl_s == 0 {
                        return Err(ValidationError::invalid("sticky.ttl_s", "must be at least 1"));
                    }
                }
                Ok(())
            },
            &|| self.hash_on.as_ref().map_or(Ok(()), |h| h.validate().map_err(|e| e.within("hash_on"))),
            &|| self.retries.as_ref().map_or(Ok(()), retries),
            &|| match self.max_request_body_bytes {
                Some(0) => Err(ValidationError::invalid("max_request_body_bytes", "must be at least 1")),
                _ => Ok(()),
            },
            &|| self.direct_response.as_ref().map_or(Ok(()), direct_response),
            &|| cidrs("allow_from", &self.allow_from),
            &|| cidrs("deny_from", &self.deny_from),
            &|| {
                let answers = [self.https_redirect.is_some(), self.direct_response.is_some(), self.redirect.is_some()];
                if answers.iter().filter(|a| **a).count() > 1 {
                    let why = "https_redirect, direct_response and redirect exclude each other";
                    return Err(ValidationError::invalid("redirect", why));
                }
                let prefix = self.matcher.path.as_ref().is_some_and(|p| p.prefix.is_some());
                if let Some(r) = &self.redirect {
                    r.validate(prefix).map_err(|e| e.within("redirect"))?;
                }
                if let Some(r) = &self.rewrite {
                    r.validate(prefix).map_err(|e| e.within("rewrite"))?;
                }
                Ok(())
            },
            &|| {
                self.request_headers
                    .as_ref()
                    .map_or(Ok(()), |h| h.validate(true).map_err(|e| e.within("request_headers")))
            },
            &|| self.rate_limit.as_ref().map_or(Ok(()), |r| r.validate().map_err(|e| e.within("rate_limit"))),
            &|| self.mirror.as_ref().map_or(Ok(()), |m| m.validate().map_err(|e| e.within("mirror"))),
            &|| {
                self.response_headers
                    .as_ref()
                    .map_or(Ok(()), |h| h.validate(false).map_err(|e| e.within("response_headers")))
            },
            &|| {
                if let Some(h) = &self.https_redirect {
                    if h.port == 0 {
                        return Err(ValidationError::invalid("https_redirect.port", "must be a port (1-65535)"));
                    }
                    if ![301, 302, 307, 308].contains(&h.status) {
                        return Err(ValidationError::invalid("https_redirect.status", "must be 301, 302, 307 or 308"));
                    }
                }
                Ok(())
            },
        ])
    }
}

/// Longest body of a `direct_response`.
pub const MAX_DIRECT_BODY: usize = 64 * 1024;

fn direct_response(d: &DirectResponse) -> Result<()> {
    if !(200..=599).contains(&d.status) {
        return Err(ValidationError::invalid("direct_response.status", "must be 200-599"));
    }
    if d.body.len() > MAX_DIRECT_BODY {
        return Err(ValidationError::invalid("direct_response.body", format!("at most {MAX_DIRECT_BODY} bytes")));
    }
    if let Some(t) = &d.content_type {
        if t.is_empty() || t.bytes().any(|c| c.is_ascii_control()) {
            return Err(ValidationError::invalid("direct_response.content_type", "a media type without control bytes"));
        }
    }
    Ok(())
}

/// A list of networks (`10.0.0.0/8`, `::1/128`, or a bare address).
fn cidrs(field: &str, list: &[String]) -> Result<()> {
    list_len(field, list.len())?;
    for (i, net) in list.iter().enumerate() {
        if let Err(e) = net.parse::<crate::cidr::Cidr>() {
            return Err(ValidationError::invalid(format!("{field}[{i}]"), e.to_string()));
        }
    }
    Ok(())
}

fn retries(r: &Retries) -> Result<()> {
    if r.attempts > MAX_RETRIES {
        return Err(ValidationError::invalid("retries.attempts", format!("must be at most {MAX_RETRIES}")));
    }
    if let Some(ms) = r.per_try_timeout_ms {
        timeout("retries.per_try_timeout_ms", ms)?;
    }
    if let Some(b) = &r.budget {
        if b.percent > 1_000 {
            return Err(ValidationError::invalid("retries.budget.percent", "must be at most 1000"));
        }
        if b.percent == 0 && b.min_per_s == 0 {
            return Err(ValidationError::invalid(
                "retries.budget",
                "percent and min_per_s are both 0: no retry could ever be made",
            ));
        }
    }
    Ok(())
}

impl RouteMatch {
    pub fn validate(&self) -> Result<()> {
        list_len("hosts", self.hosts.len())?;
        for (i, h) in self.hosts.iter().enumerate() {
            host_pattern(&format!("hosts[{i}]"), h)?;
        }
        if let Some(p) = &self.path {
            match p.kind() {
                Some(PathKind::Prefix(s)) | Some(PathKind::Exact(s)) => {
                    let f = if p.prefix.is_some() { "path.prefix" } else { "path.exact" };
                    if !s.starts_with('/') {
                        return Err(ValidationError::invalid(f, "must start with /"));
                    }
                    if s.bytes().any(|c| c.is_ascii_control() || c == b' ' || c == b'?' || c == b'#') {
                        return Err(ValidationError::invalid(f, "must not hold spaces, control bytes, ? or #"));
                    }
                }
                Some(PathKind::Regex(r)) => regex("path.regex", r)?,
                None => return Err(ValidationError::invalid("path", "set exactly one of prefix, exact, regex")),
            }
        }
        for (i, m) in self.methods.iter().enumerate() {
            if !is_token(m) || m.bytes().any(|c| c.is_ascii_lowercase()) {
                return Err(ValidationError::invalid(
                    format!("methods[{i}]"),
                    format!("{m:?} is not an upper-case method"),
                ));
            }
        }
        for (list, field) in [(&self.headers, "headers"), (&self.query, "query")] {
            list_len(field, list.len())?;
            for (i, m) in list.iter().enumerate() {
                m.validate(field == "headers").map_err(|e| e.within(&format!("{field}[{i}]")))?;
            }
        }
        Ok(())
    }
}

impl ValueMatch {
    fn validate(&self, is_header: bool) -> Result<()> {
        if self.name.is_empty() || (is_header && !is_token(&self.name)) {
            return Err(ValidationError::invalid("name", format!("{:?} is not a valid name", self.name)));
        }
        match self.kind() {
            Some(ValueKind::Regex(r)) => regex("regex", r),
            Some(ValueKind::Exact(v)) if is_header && v.bytes().any(|c| c.is_ascii_control() && c != b'\t') => {
                Err(ValidationError::invalid("exact", "must not hold control bytes"))
            }
            Some(_) => Ok(()),
            None => Err(ValidationError::invalid("", "set exactly one of exact, regex, present")),
        }
    }
}

impl Certificate {
    /// The one check a certificate passes before it is stored: a parseable PEM chain, one parseable
    /// private key (PKCS#8, PKCS#1 RSA or SEC1 EC) matching the first certificate, and every
    /// certificate of the chain valid now (neither expired nor not yet valid).
    pub fn validate(&self) -> Result<()> {
        self.validate_at(crate::clock::unix_now_ms() / 1000).map(drop)
    }

    /// [`Certificate::validate`] at `now` (Unix seconds), returning what the leaf says.
    pub fn validate_at(&self, now: i64) -> Result<crate::certs::CertificateInfo> {
        crate::certs::check(self, now)
    }

    /// Parsing and key matching without the clock: what a node checks on each snapshot, so that a
    /// certificate expiring while stored never makes nodes refuse later revisions.
    pub fn validate_material(&self) -> Result<()> {
        crate::certs::check_material(self).map(drop)
    }

    /// Names and validity of the leaf, for views. Does not check the key.
    pub fn info(&self) -> Result<crate::certs::CertificateInfo> {
        crate::certs::inspect(&self.cert_pem)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_valid_name("api-blue"));
        assert!(is_valid_name("0"));
        assert!(!is_valid_name("-api"));
        assert!(!is_valid_name("Api"));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name(&"a".repeat(64)));
        assert!(is_valid_name(&"a".repeat(63)));
    }

    #[test]
    fn parse_tells_malformed_from_invalid() {
        assert!(matches!(parse_json::<Cluster>(b"{"), Err(ParseError::Malformed(_))));
        let err = match parse_json::<Cluster>(br#"{"endpoints":[{"address":"127.0.0.1:1","wieght":1}]}"#) {
            Err(ParseError::Invalid(e)) => e,
            other => panic!("{other:?}"),
        };
        assert_eq!(err.field.as_deref(), Some("endpoints[0].wieght"));
        let err = match parse_json::<Cluster>(br#"{"endpoints":[{"address":"127.0.0.1:1","weight":-1}]}"#) {
            Err(ParseError::Invalid(e)) => e,
            other => panic!("{other:?}"),
        };
        assert_eq!(err.field.as_deref(), Some("endpoints[0].weight"));
    }

    #[test]
    fn deep_nesting_is_malformed_not_a_crash() {
        let deep = "[".repeat(100_000);
        assert!(matches!(parse_json::<Cluster>(deep.as_bytes()), Err(ParseError::Malformed(_))));
    }

    #[test]
    fn http2_listener_and_cluster_fields() {
        let field =
            |json: &str| parse_json::<Listener>(json.as_bytes()).unwrap().validate().err().and_then(|e| e.field);
        let http = r#""address":"127.0.0.1:8080","protocol":"http""#;
        assert_eq!(field(&format!(r#"{{{http},"http_versions":["http1","http2"]}}"#)), None);
        assert_eq!(
            field(&format!(r#"{{{http},"http2":{{"max_concurrent_streams":1,"max_header_list_bytes":1024}}}}"#)),
            None
        );
        assert_eq!(
            field(&format!(r#"{{{http},"http_versions":["http2","http2"]}}"#)).as_deref(),
            Some("http_versions[1]")
        );
        for (json, want) in [
            (r#"{"max_concurrent_streams":0}"#, "http2.max_concurrent_streams"),
            (r#"{"max_concurrent_streams":10001}"#, "http2.max_concurrent_streams"),
            (r#"{"max_header_list_bytes":100}"#, "http2.max_header_list_bytes"),
            (r#"{"initial_stream_window_bytes":1000}"#, "http2.initial_stream_window_bytes"),
            (r#"{"initial_connection_window_bytes":2147483648}"#, "http2.initial_connection_window_bytes"),
            (r#"{"idle_timeout_ms":0}"#, "http2.idle_timeout_ms"),
            (r#"{"max_connection_age_ms":0}"#, "http2.max_connection_age_ms"),
        ] {
            assert_eq!(field(&format!(r#"{{{http},"http2":{json}}}"#)).as_deref(), Some(want), "{json}");
        }
        let tcp = r#""address":"127.0.0.1:5432","protocol":"tcp","cluster":"db""#;
        assert_eq!(field(&format!(r#"{{{tcp},"http_versions":["http1"]}}"#)).as_deref(), Some("http_versions"));
        assert_eq!(field(&format!(r#"{{{tcp},"http2":{{}}}}"#)).as_deref(), Some("http2"));
        assert!(parse_json::<Listener>(format!(r#"{{{http},"http_versions":["h3"]}}"#).as_bytes()).is_err());
        // Path normalization and the head timeout: http and https only.
        let paths =
            r#""paths":{"merge_slashes":false,"escaped_slashes":"decode_and_redirect"},"header_timeout_ms":10000"#;
        assert_eq!(field(&format!("{{{http},{paths}}}")), None);
        assert_eq!(field(&format!(r#"{{{http},"header_timeout_ms":0}}"#)).as_deref(), Some("header_timeout_ms"));
        assert_eq!(field(&format!(r#"{{{tcp},"paths":{{}}}}"#)).as_deref(), Some("paths"));
        assert_eq!(field(&format!(r#"{{{tcp},"header_timeout_ms":1000}}"#)).as_deref(), Some("header_timeout_ms"));
        assert_eq!(field(&format!(r#"{{{tcp},"body_timeout_ms":1000}}"#)).as_deref(), Some("body_timeout_ms"));
        assert_eq!(field(&format!(r#"{{{http},"body_timeout_ms":0}}"#)).as_deref(), Some("body_timeout_ms"));
        assert!(
            parse_json::<Listener>(format!(r#"{{{http},"paths":{{"escaped_slashes":"ignore"}}}}"#).as_bytes()).is_err()
        );

        let cluster =
            |json: &str| parse_json::<Cluster>(json.as_bytes()).unwrap().validate().err().and_then(|e| e.field);
        for p in ["http1", "http2", "auto"] {
            assert_eq!(cluster(&format!(r#"{{"protocol":"{p}"}}"#)), None);
        }
        assert!(parse_json::<Cluster>(br#"{"protocol":"h2"}"#).is_err());
        assert_eq!(cluster(r#"{"health_check":{"grpc":{}}}"#), None);
        assert_eq!(cluster(r#"{"health_check":{"grpc":{"service":"a.b.Svc"}}}"#), None);
        assert_eq!(cluster(r#"{"health_check":{"grpc":{},"tcp":{}}}"#).as_deref(), Some("health_check"));
        assert_eq!(
            cluster("{\"health_check\":{\"grpc\":{\"service\":\"a\\u0001\"}}}").as_deref(),
            Some("health_check.grpc.service")
        );
    }

    #[test]
    fn l4_listener_fields() {
        let field =
            |json: &str| parse_json::<Listener>(json.as_bytes()).unwrap().validate().err().and_then(|e| e.field);
        let tcp = r#""address":"127.0.0.1:5432","protocol":"tcp","cluster":"db""#;
        assert_eq!(
            field(&format!(r#"{{{tcp},"max_connections":10,"drain_ms":500,"hash_on":{{"source_ip":true}}}}"#)),
            None
        );
        assert_eq!(field(&format!(r#"{{{tcp},"max_connections":0}}"#)).as_deref(), Some("max_connections"));
        assert_eq!(field(&format!(r#"{{{tcp},"drain_ms":0}}"#)).as_deref(), Some("drain_ms"));
        assert_eq!(field(&format!(r#"{{{tcp},"hash_on":{{"header":"x-user"}}}}"#)).as_deref(), Some("hash_on"));
        let http = r#"{"address":"127.0.0.1:80","protocol":"http","max_connections":5}"#;
        assert_eq!(field(http), None, "http listeners cap their client connections too");
        let http = r#"{"address":"127.0.0.1:80","protocol":"http","max_connections":0}"#;
        assert_eq!(field(http).as_deref(), Some("max_connections"));
    }

    #[test]
    fn proxy_protocol_is_for_connections_to_endpoints() {
        let field =
            |json: &str| parse_json::<Listener>(json.as_bytes()).unwrap().validate().err().and_then(|e| e.field);
        let tcp = r#"{"address":"127.0.0.1:5432","protocol":"tcp","cluster":"db","proxy_protocol":"v2"}"#;
        let tls = r#"{"address":"127.0.0.1:443","protocol":"tls","cluster":"web","proxy_protocol":"v1"}"#;
        assert_eq!(field(tcp), None);
        assert_eq!(field(tls), None);
        for other in [
            r#"{"address":"127.0.0.1:53","protocol":"udp","cluster":"dns","proxy_protocol":"v1"}"#,
            r#"{"address":"127.0.0.1:80","protocol":"http","proxy_protocol":"v1"}"#,
            r#"{"address":"127.0.0.1:443","protocol":"https","certificates":["c"],"proxy_protocol":"v2"}"#,
        ] {
            assert_eq!(field(other).as_deref(), Some("proxy_protocol"), "{other}");
        }
        for behind_a_balancer in ["http", "tcp"] {
            let json = format!(
                r#"{{"address":"127.0.0.1:80","protocol":"{behind_a_balancer}","cluster":"c","accept_proxy_protocol":true}}"#
            );
            let json = if behind_a_balancer == "http" { json.replace(r#""cluster":"c","#, "") } else { json };
            assert_eq!(field(&json), None, "{json}");
        }
        let udp = r#"{"address":"127.0.0.1:53","protocol":"udp","cluster":"dns","accept_proxy_protocol":true}"#;
        assert_eq!(field(udp).as_deref(), Some("accept_proxy_protocol"));
        let from = |accept: bool, nets: &str| {
            format!(
                r#"{{"address":"127.0.0.1:80","protocol":"http","accept_proxy_protocol":{accept},"proxy_protocol_from":{nets}}}"#
            )
        };
        assert_eq!(field(&from(true, r#"["10.0.0.0/8","2001:db8::/32","192.0.2.7"]"#)), None);
        assert_eq!(field(&from(true, r#"["10.0.0.0/8","10.0.0.1/8"]"#)).as_deref(), Some("proxy_protocol_from[1]"));
        assert_eq!(field(&from(false, r#"["10.0.0.0/8"]"#)).as_deref(), Some("proxy_protocol_from"));
    }

    #[test]
    fn tcp_keepalive_is_for_l4_connections_within_the_kernels_bounds() {
        let field =
            |json: &str| parse_json::<Listener>(json.as_bytes()).unwrap().validate().err().and_then(|e| e.field);
        let tcp = |ka: &str| {
            format!(r#"{{"address":"127.0.0.1:5432","protocol":"tcp","cluster":"db","tcp_keepalive":{ka}}}"#)
        };
        assert_eq!(field(&tcp("{}")), None);
        assert_eq!(field(&tcp(r#"{"idle_ms":1,"interval_ms":32767000,"probes":127}"#)), None);
        for (ka, at) in [
            (r#"{"idle_ms":0}"#, "tcp_keepalive.idle_ms"),
            (r#"{"interval_ms":32767001}"#, "tcp_keepalive.interval_ms"),
            (r#"{"probes":0}"#, "tcp_keepalive.probes"),
            (r#"{"probes":128}"#, "tcp_keepalive.probes"),
        ] {
            assert_eq!(field(&tcp(ka)).as_deref(), Some(at), "{ka}");
        }
        let http = r#"{"address":"127.0.0.1:80","protocol":"http","tcp_keepalive":{}}"#;
        assert_eq!(field(http).as_deref(), Some("tcp_keepalive"));
        let udp = r#"{"address":"127.0.0.1:53","protocol":"udp","cluster":"dns","tcp_keepalive":{}}"#;
        assert_eq!(field(udp).as_deref(), Some("tcp_keepalive"));
        let defaults: Listener = parse_json(tcp("{}").as_bytes()).unwrap();
        let k = defaults.tcp_keepalive.unwrap();
        assert_eq!((k.idle_ms, k.interval_ms, k.probes), (60_000, 10_000, 3));
        let v3 = r#"{"address":"127.0.0.1:5432","protocol":"tcp","cluster":"db","proxy_protocol":"v3"}"#;
        match parse_json::<Listener>(v3.as_bytes()) {
            Err(ParseError::Invalid(e)) => assert_eq!(e.field.as_deref(), Some("proxy_protocol")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cluster_errors_name_the_field() {
        let c: Cluster = parse_json(br#"{"endpoints":[{"address":"127.0.0.1:1"},{"address":"nope"}]}"#).unwrap();
        assert_eq!(c.validate().unwrap_err().field.as_deref(), Some("endpoints[1].address"));
        let c: Cluster = parse_json(br#"{"endpoints":[{"address":"127.0.0.1:1","weight":0}]}"#).unwrap();
        assert_eq!(c.validate().unwrap_err().field.as_deref(), Some("endpoints"));
        let c: Cluster = parse_json(br#"{"endpoints":[]}"#).unwrap();
        assert!(c.validate().is_ok(), "a cluster may have no endpoints");
    }

    #[test]
    fn route_errors_name_the_field() {
        let r: Route =
            parse_json(br#"{"listener":"web","match":{"path":{"regex":"("}},"backends":[{"cluster":"a"}]}"#).unwrap();
        assert_eq!(r.validate().unwrap_err().field.as_deref(), Some("match.path.regex"));
        let r: Route = parse_json(
            br#"{"listener":"web","match":{"headers":[{"name":"x","exact":"1","present":true}]},"backends":[{"cluster":"a"}]}"#,
        )
        .unwrap();
        assert_eq!(r.validate().unwrap_err().field.as_deref(), Some("match.headers[0]"));
        let r: Route =
            parse_json(br#"{"listener":"web","backends":[{"cluster":"a","weight":0},{"cluster":"b","weight":0}]}"#)
                .unwrap();
        assert_eq!(r.validate().unwrap_err().field.as_deref(), Some("backends"));
        let r: Route =
            parse_json(br#"{"listener":"web","match":{"hosts":["*.Shop.com"]},"backends":[{"cluster":"a"}]}"#).unwrap();
        assert_eq!(r.validate().unwrap_err().field.as_deref(), Some("match.hosts[0]"));
        let route = |extra: &str| {
            let json = format!(r#"{{"listener":"web","backends":[{{"cluster":"a"}}]{extra}}}"#);
            parse_json::<Route>(json.as_bytes()).unwrap().validate().err().and_then(|e| e.field)
        };
        assert_eq!(route(r#","allow_from":["10.0.0.0/8","::1"],"deny_from":["10.9.0.0/16"]"#), None);
        assert_eq!(route(r#","allow_from":["10.0.0.0/8","nope"]"#).as_deref(), Some("allow_from[1]"));
        assert_eq!(route(r#","deny_from":["10.0.0.0/33"]"#).as_deref(), Some("deny_from[0]"));
        let listener = |extra: &str| {
            let json = format!(r#"{{"address":"127.0.0.1:5432","protocol":"tcp","cluster":"db"{extra}}}"#);
            parse_json::<Listener>(json.as_bytes()).unwrap().validate().err().and_then(|e| e.field)
        };
        assert_eq!(listener(r#","allow_from":["10.0.0.0/8"],"deny_from":["10.9.0.0/16","::1"]"#), None);
        assert_eq!(listener(r#","allow_from":["10.0.0.1/8"]"#).as_deref(), Some("allow_from[0]"));
        assert_eq!(listener(r#","deny_from":["x"]"#).as_deref(), Some("deny_from[0]"));
        assert_eq!(route(r#","direct_response":{"status":503,"body":"down"}"#), None);
        assert_eq!(route(r#","direct_response":{"status":99}"#).as_deref(), Some("direct_response.status"));
        let direct: Route =
            parse_json(br#"{"listener":"web","backends":[],"direct_response":{"status":200}}"#).unwrap();
        assert_eq!(direct.validate(), Ok(()), "a direct response needs no backend");
    }

    #[test]
    fn listener_protocol_rules() {
        let l: Listener = parse_json(br#"{"address":"127.0.0.1:9","protocol":"tcp"}"#).unwrap();
        assert_eq!(l.validate().unwrap_err().field.as_deref(), Some("cluster"));
        let l: Listener = parse_json(br#"{"address":"127.0.0.1:9","protocol":"http"}"#).unwrap();
        assert_eq!(l.group, "default");
        assert!(l.validate().is_ok());
        let l: Listener = parse_json(br#"{"address":"localhost:9","protocol":"http"}"#).unwrap();
        assert_eq!(l.validate().unwrap_err().field.as_deref(), Some("address"));
    }

    #[test]
    fn failover_fields_name_the_field() {
        let cluster =
            |json: &str| parse_json::<Cluster>(json.as_bytes()).unwrap().validate().err().and_then(|e| e.field);
        let eps = r#""endpoints":[{"address":"127.0.0.1:1","name":"a-1"},{"address":"127.0.0.1:2","name":"a-2"}]"#;
        assert_eq!(cluster(&format!(r#"{{{eps},"circuit_breaker":{{"max_connections":1,"max_pending":0}}}}"#)), None);
        assert_eq!(
            cluster(r#"{"endpoints":[{"address":"127.0.0.1:1","name":"a"},{"address":"127.0.0.1:2","name":"a"}]}"#)
                .as_deref(),
            Some("endpoints[1].name")
        );
        assert_eq!(
            cluster(r#"{"endpoints":[{"address":"127.0.0.1:1","name":"_a"}]}"#).as_deref(),
            Some("endpoints[0].name")
        );
        assert_eq!(cluster(r#"{"endpoints":[{"address":"127.0.0.1:1","max_connections":1}]}"#), None);
        assert_eq!(
            cluster(r#"{"endpoints":[{"address":"127.0.0.1:1"},{"address":"127.0.0.1:2","max_connections":0}]}"#)
                .as_deref(),
            Some("endpoints[1].max_connections")
        );
        for (cb, f) in
            [("max_connections", "circuit_breaker.max_connections"), ("max_requests", "circuit_breaker.max_requests")]
        {
            assert_eq!(cluster(&format!(r#"{{"circuit_breaker":{{"{cb}":0}}}}"#)).as_deref(), Some(f));
        }
        assert_eq!(cluster(&format!(r#"{{{eps},"connect_timeout_ms":250}}"#)), None);
        for ms in ["0", "86400001"] {
            assert_eq!(cluster(&format!(r#"{{"connect_timeout_ms":{ms}}}"#)).as_deref(), Some("connect_timeout_ms"));
        }
        assert_eq!(
            cluster(r#"{"close_connections_on_health_change":true}"#).as_deref(),
            Some("close_connections_on_health_change")
        );
        assert_eq!(cluster(r#"{"close_connections_on_health_change":true,"health_check":{"tcp":{}}}"#), None);
        assert_eq!(
            cluster(r#"{"close_connections_on_health_change":true,"outlier_detection":{"consecutive_failures":3}}"#),
            None
        );

        let route = |extra: &str| {
            let json = format!(r#"{{"listener":"web","backends":[{{"cluster":"a"}}]{extra}}}"#);
            parse_json::<Route>(json.as_bytes()).unwrap().validate().err().and_then(|e| e.field)
        };
        let ok = r#","retries":{"attempts":2,"on":["reset"],"per_try_timeout_ms":100,"budget":{"percent":0,"min_per_s":1}},"max_request_body_bytes":10"#;
        assert_eq!(route(ok), None);
        assert_eq!(
            route(r#","retries":{"attempts":1,"per_try_timeout_ms":0}"#).as_deref(),
            Some("retries.per_try_timeout_ms")
        );
        assert_eq!(
            route(r#","retries":{"attempts":1,"budget":{"percent":0,"min_per_s":0}}"#).as_deref(),
            Some("retries.budget")
        );
        assert_eq!(
            route(r#","retries":{"attempts":1,"budget":{"percent":1001}}"#).as_deref(),
            Some("retries.budget.percent")
        );
        assert_eq!(route(r#","max_request_body_bytes":0"#).as_deref(), Some("max_request_body_bytes"));
        assert_eq!(route(r#","https_redirect":{"status":303}"#).as_deref(), Some("https_redirect.status"));
        // Only a redirecting route may name no backend.
        let r: Route = parse_json(br#"{"listener":"web","backends":[],"https_redirect":{}}"#).unwrap();
        assert!(r.validate().is_ok());
        let r: Route = parse_json(br#"{"listener":"web","backends":[]}"#).unwrap();
        assert_eq!(r.validate().unwrap_err().field.as_deref(), Some("backends"));
    }
}
