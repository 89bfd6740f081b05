//! Conversion between the domain model ([`Config`]) and the protobuf resources of the config stream.
//!
//! Model -> proto is total: a validated config always has a proto form. Proto -> model is checked
//! only for what the proto can express and the model cannot (unknown enum values, unset oneofs,
//! duplicate names, unknown retry conditions); everything else is left to [`Config::validate`], which
//! the data plane runs on the result. Errors carry the field path the REST API would report, prefixed
//! with the resource (`routes.api.retries.on[0]`).

use std::collections::BTreeMap;

use crate::config::Config;
use crate::model::*;
use crate::proto::v1 as pb;
use crate::rate_limit::{RateLimit, RateLimitKey};
use crate::transforms::{HeaderRewrite, Mirror, Redirect, RegexRewrite, Rewrite};
use crate::validate::{Result, ValidationError};

// ------------------------------------------------------------------------------------ model -> proto

impl From<&Config> for pb::Snapshot {
    /// The resources of `cfg`, sorted by name; `revision`, `nonce` and `control_plane_id` are left
    /// empty for the caller to fill in.
    fn from(cfg: &Config) -> Self {
        pb::Snapshot {
            revision: 0,
            nonce: String::new(),
            control_plane_id: String::new(),
            listeners: cfg.listeners.iter().map(|(n, l)| listener_to_pb(n, l)).collect(),
            routes: cfg.routes.iter().map(|(n, r)| route_to_pb(n, r)).collect(),
            clusters: cfg.clusters.iter().map(|(n, c)| cluster_to_pb(n, c)).collect(),
            certificates: cfg.certificates.iter().map(|(n, c)| certificate_to_pb(n, c)).collect(),
            sticky_key: Vec::new(),
        }
    }
}

pub fn cluster_to_pb(name: &str, c: &Cluster) -> pb::Cluster {
    pb::Cluster {
        name: name.to_string(),
        lb_policy: lb_policy_to_pb(c.lb_policy) as i32,
        endpoints: c
            .endpoints
            .iter()
            .map(|e| pb::Endpoint {
                address: e.address.clone(),
                weight: e.weight,
                name: e.name.clone().unwrap_or_default(),
                backup: e.backup,
                max_connections: e.max_connections,
            })
            .collect(),
        tls: c.tls.as_ref().map(|t| pb::UpstreamTls {
            ca_pem: t.ca_pem.clone(),
            server_name: t.server_name.clone().unwrap_or_default(),
            client_certificate: t.client_certificate.clone().unwrap_or_default(),
        }),
        health_check: c.health_check.as_ref().map(|h| pb::HealthCheck {
            // A validated check has exactly one kind; http wins should both be set.
            kind: match (&h.http, &h.tcp, &h.grpc) {
                (Some(http), _, _) => Some(pb::health_check::Kind::Http(pb::HttpHealthCheck {
                    path: http.path.clone(),
                    expected_status: http.expected_status.map_or(0, u32::from),
                })),
                (None, Some(_), _) => Some(pb::health_check::Kind::Tcp(pb::TcpHealthCheck {})),
                (None, None, Some(g)) => {
                    Some(pb::health_check::Kind::Grpc(pb::GrpcHealthCheck { service: g.service.clone() }))
                }
                (None, None, None) => None,
            },
            interval_ms: h.interval_ms,
            timeout_ms: h.timeout_ms,
            healthy_threshold: h.healthy_threshold,
            unhealthy_threshold: h.unhealthy_threshold,
        }),
        outlier_detection: c
            .outlier_detection
            .as_ref()
            .map(|o| pb::OutlierDetection { consecutive_failures: o.consecutive_failures, ejection_ms: o.ejection_ms }),
        panic_mode: c.panic_mode,
        circuit_breaker: c.circuit_breaker.map(|b| pb::CircuitBreaker {
            max_connections: b.max_connections,
            max_pending: b.max_pending,
            max_requests: b.max_requests,
        }),
        connect_timeout_ms: c.connect_timeout_ms,
        close_connections_on_health_change: c.close_connections_on_health_change,
        protocol: match c.protocol {
            UpstreamProtocol::Http1 => pb::UpstreamProtocol::Http1,
            UpstreamProtocol::Http2 => pb::UpstreamProtocol::Http2,
            UpstreamProtocol::Auto => pb::UpstreamProtocol::Auto,
        } as i32,
    }
}

pub fn listener_to_pb(name: &str, l: &Listener) -> pb::Listener {
    pb::Listener {
        name: name.to_string(),
        address: l.address.clone(),
        protocol: protocol_to_pb(l.protocol) as i32,
        group: l.group.clone(),
        cluster: l.cluster.clone().unwrap_or_default(),
        certificates: l.certificates.clone(),
        sni: l.sni.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        idle_timeout_ms: l.idle_timeout_ms,
        hash_on: l.hash_on.as_ref().map(hash_on_to_pb),
        max_connections: l.max_connections,
        drain_ms: l.drain_ms,
        proxy_protocol: match l.proxy_protocol {
            None => pb::ProxyProtocol::None,
            Some(ProxyProtocol::V1) => pb::ProxyProtocol::V1,
            Some(ProxyProtocol::V2) => pb::ProxyProtocol::V2,
        } as i32,
        accept_proxy_protocol: l.accept_proxy_protocol,
        proxy_protocol_from: l.proxy_protocol_from.clone(),
        tcp_keepalive: l.tcp_keepalive.map(|k| pb::TcpKeepalive {
            idle_ms: k.idle_ms,
            interval_ms: k.interval_ms,
            probes: k.probes,
        }),
        http_versions: l
            .http_versions
            .iter()
            .map(|v| match v {
                HttpVersion::Http1 => pb::HttpVersion::Http1,
                HttpVersion::Http2 => pb::HttpVersion::Http2,
            } as i32)
            .collect(),
        http2: l.http2.map(|h| pb::Http2Settings {
            max_concurrent_streams: h.max_concurrent_streams,
            max_header_list_bytes: h.max_header_list_bytes,
            initial_stream_window_bytes: h.initial_stream_window_bytes,
            initial_connection_window_bytes: h.initial_connection_window_bytes,
            idle_timeout_ms: h.idle_timeout_ms,
            max_connection_age_ms: h.max_connection_age_ms,
        }),
        paths: l.paths.map(|p| pb::PathSettings {
            merge_slashes: p.merge_slashes,
            escaped_slashes: match p.escaped_slashes {
                None => pb::EscapedSlashes::Default,
                Some(EscapedSlashes::Keep) => pb::EscapedSlashes::Keep,
                Some(EscapedSlashes::Reject) => pb::EscapedSlashes::Reject,
                Some(EscapedSlashes::DecodeAndRedirect) => pb::EscapedSlashes::DecodeAndRedirect,
            } as i32,
        }),
        header_timeout_ms: l.header_timeout_ms,
        body_timeout_ms: l.body_timeout_ms,
        allow_from: l.allow_from.clone(),
        deny_from: l.deny_from.clone(),
    }
}

pub fn route_to_pb(name: &str, r: &Route) -> pb::Route {
    let m = &r.matcher;
    pb::Route {
        name: name.to_string(),
        listener: r.listener.clone(),
        priority: r.priority,
        r#match: Some(pb::RouteMatch {
            hosts: m.hosts.clone(),
            path: m.path.as_ref().map(|p| pb::PathMatch {
                kind: match p.kind() {
                    Some(PathKind::Prefix(s)) => Some(pb::path_match::Kind::Prefix(s.to_string())),
                    Some(PathKind::Exact(s)) => Some(pb::path_match::Kind::Exact(s.to_string())),
                    Some(PathKind::Regex(s)) => Some(pb::path_match::Kind::Regex(s.to_string())),
                    None => None,
                },
            }),
            methods: m.methods.clone(),
            headers: m
                .headers
                .iter()
                .map(|v| pb::HeaderMatch {
                    name: v.name.clone(),
                    kind: v.kind().map(|k| match k {
                        ValueKind::Exact(s) => pb::header_match::Kind::Exact(s.to_string()),
                        ValueKind::Regex(s) => pb::header_match::Kind::Regex(s.to_string()),
                        ValueKind::Present(p) => pb::header_match::Kind::Present(p),
                    }),
                })
                .collect(),
            query: m
                .query
                .iter()
                .map(|v| pb::QueryMatch {
                    name: v.name.clone(),
                    kind: v.kind().map(|k| match k {
                        ValueKind::Exact(s) => pb::query_match::Kind::Exact(s.to_string()),
                        ValueKind::Regex(s) => pb::query_match::Kind::Regex(s.to_string()),
                        ValueKind::Present(p) => pb::query_match::Kind::Present(p),
                    }),
                })
                .collect(),
        }),
        backends: r
            .backends
            .iter()
            .map(|b| pb::WeightedCluster { cluster: b.cluster.clone(), weight: b.weight })
            .collect(),
        timeout_ms: r.timeout_ms,
        sticky: r.sticky.as_ref().map(|s| pb::Sticky { cookie: s.cookie.clone(), ttl_s: s.ttl_s }),
        hash_on: r.hash_on.as_ref().map(hash_on_to_pb),
        retries: r.retries.as_ref().map(|x| pb::Retries {
            attempts: x.attempts,
            on: x.on.iter().map(|o| o.as_str().to_string()).collect(),
            per_try_timeout_ms: x.per_try_timeout_ms,
            budget: x.budget.map(|b| pb::RetryBudget { percent: b.percent, min_per_s: b.min_per_s }),
        }),
        https_redirect: r
            .https_redirect
            .map(|h| pb::HttpsRedirect { port: u32::from(h.port), status: u32::from(h.status) }),
        max_request_body_bytes: r.max_request_body_bytes,
        allow_from: r.allow_from.clone(),
        deny_from: r.deny_from.clone(),
        direct_response: r.direct_response.as_ref().map(|d| pb::DirectResponse {
            status: u32::from(d.status),
            body: d.body.clone(),
            content_type: d.content_type.clone(),
        }),
        redirect: r.redirect.as_ref().map(|d| pb::Redirect {
            scheme: d.scheme.clone(),
            host: d.host.clone(),
            port: d.port.map(u32::from),
            path: d.path.clone(),
            prefix: d.prefix.clone(),
            strip_query: d.strip_query,
            status: u32::from(d.status),
        }),
        rewrite: r.rewrite.as_ref().map(|w| pb::Rewrite {
            prefix: w.prefix.clone(),
            regex: w
                .regex
                .as_ref()
                .map(|x| pb::RegexRewrite { pattern: x.pattern.clone(), substitution: x.substitution.clone() }),
            host: w.host.clone(),
        }),
        request_headers: r.request_headers.as_deref().map(header_rewrite_to_pb),
        response_headers: r.response_headers.as_deref().map(header_rewrite_to_pb),
        rate_limit: r.rate_limit.as_deref().map(|l| pb::RateLimit {
            requests_per_s: l.requests_per_s,
            burst: l.burst,
            key: match l.key {
                RateLimitKey::ClientIp => pb::RateLimitKey::ClientIp,
                RateLimitKey::Header => pb::RateLimitKey::Header,
                RateLimitKey::Route => pb::RateLimitKey::Route,
            } as i32,
            header: l.header.clone(),
            fleet: l.fleet,
        }),
        mirror: r.mirror.as_deref().map(|m| pb::Mirror { cluster: m.cluster.clone(), percent: m.percent }),
    }
}

fn header_rewrite_to_pb(h: &HeaderRewrite) -> pb::HeaderRewrite {
    pb::HeaderRewrite {
        remove: h.remove.clone(),
        set: h.set.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        add: h.add.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    }
}

fn header_rewrite_from_pb(h: pb::HeaderRewrite) -> Box<HeaderRewrite> {
    Box::new(HeaderRewrite { remove: h.remove, set: h.set.into_iter().collect(), add: h.add.into_iter().collect() })
}

pub fn certificate_to_pb(name: &str, c: &Certificate) -> pb::Certificate {
    pb::Certificate { name: name.to_string(), cert_pem: c.cert_pem.clone(), key_pem: c.key_pem.clone() }
}

fn hash_on_to_pb(h: &HashOn) -> pb::HashOn {
    let key = match (&h.header, &h.cookie) {
        (Some(x), _) => Some(pb::hash_on::Key::Header(x.clone())),
        (None, Some(x)) => Some(pb::hash_on::Key::Cookie(x.clone())),
        (None, None) if h.source_ip => Some(pb::hash_on::Key::SourceIp(true)),
        (None, None) => None,
    };
    pb::HashOn { key }
}

fn lb_policy_to_pb(p: LbPolicy) -> pb::LbPolicy {
    match p {
        LbPolicy::RoundRobin => pb::LbPolicy::RoundRobin,
        LbPolicy::LeastRequest => pb::LbPolicy::LeastRequest,
        LbPolicy::Random => pb::LbPolicy::Random,
        LbPolicy::RingHash => pb::LbPolicy::RingHash,
        LbPolicy::Maglev => pb::LbPolicy::Maglev,
    }
}

fn protocol_to_pb(p: Protocol) -> pb::Protocol {
    match p {
        Protocol::Http => pb::Protocol::Http,
        Protocol::Https => pb::Protocol::Https,
        Protocol::Tcp => pb::Protocol::Tcp,
        Protocol::Udp => pb::Protocol::Udp,
        Protocol::Tls => pb::Protocol::Tls,
    }
}

// ------------------------------------------------------------------------------------ proto -> model

impl TryFrom<pb::Snapshot> for Config {
    type Error = ValidationError;

    /// The resources of a snapshot as a [`Config`]. Does not run [`Config::validate`].
    fn try_from(s: pb::Snapshot) -> Result<Config> {
        Ok(Config {
            clusters: by_name("clusters", s.clusters, |c| c.name.clone(), cluster_from_pb)?,
            listeners: by_name("listeners", s.listeners, |l| l.name.clone(), listener_from_pb)?,
            routes: by_name("routes", s.routes, |r| r.name.clone(), route_from_pb)?,
            certificates: by_name(
                "certificates",
                s.certificates,
                |c| c.name.clone(),
                |c| Ok(Certificate { cert_pem: c.cert_pem, key_pem: c.key_pem }),
            )?,
        })
    }
}

/// Collects a repeated resource field into a map by name, refusing duplicates and prefixing errors
/// with `kind.name`.
fn by_name<P, M>(
    kind: &str,
    items: Vec<P>,
    name_of: impl Fn(&P) -> String,
    convert: impl Fn(P) -> Result<M>,
) -> Result<BTreeMap<String, M>> {
    let mut out = BTreeMap::new();
    for item in items {
        let name = name_of(&item);
        let path = format!("{kind}.{name}");
        if out.contains_key(&name) {
            return Err(ValidationError::invalid(path, format!("{name:?} is listed twice")));
        }
        let model = convert(item).map_err(|e| e.within(&path))?;
        out.insert(name, model);
    }
    Ok(out)
}

pub fn cluster_from_pb(c: pb::Cluster) -> Result<Cluster> {
    let lb_policy = match pb::LbPolicy::try_from(c.lb_policy) {
        Ok(pb::LbPolicy::RoundRobin) => LbPolicy::RoundRobin,
        Ok(pb::LbPolicy::LeastRequest) => LbPolicy::LeastRequest,
        Ok(pb::LbPolicy::Random) => LbPolicy::Random,
        Ok(pb::LbPolicy::RingHash) => LbPolicy::RingHash,
        Ok(pb::LbPolicy::Maglev) => LbPolicy::Maglev,
        Err(_) => return Err(ValidationError::invalid("lb_policy", format!("unknown lb_policy {}", c.lb_policy))),
    };
    let protocol = match pb::UpstreamProtocol::try_from(c.protocol) {
        Ok(pb::UpstreamProtocol::Http1) => UpstreamProtocol::Http1,
        Ok(pb::UpstreamProtocol::Http2) => UpstreamProtocol::Http2,
        Ok(pb::UpstreamProtocol::Auto) => UpstreamProtocol::Auto,
        Err(_) => return Err(ValidationError::invalid("protocol", format!("unknown protocol {}", c.protocol))),
    };
    let health_check = match c.health_check {
        None => None,
        Some(h) => {
            let (http, tcp, grpc) = match h.kind {
                Some(pb::health_check::Kind::Http(x)) => {
                    let expected_status = match x.expected_status {
                        0 => None,
                        s => Some(u16::try_from(s).map_err(|_| {
                            ValidationError::invalid(
                                "health_check.http.expected_status",
                                format!("{s} is not a status"),
                            )
                        })?),
                    };
                    (Some(HttpHealthCheck { path: x.path, expected_status }), None, None)
                }
                Some(pb::health_check::Kind::Tcp(_)) => (None, Some(TcpHealthCheck {}), None),
                Some(pb::health_check::Kind::Grpc(g)) => (None, None, Some(GrpcHealthCheck { service: g.service })),
                None => return Err(ValidationError::invalid("health_check", "set exactly one of http, tcp, grpc")),
            };
            Some(HealthCheck {
                http,
                tcp,
                grpc,
                interval_ms: h.interval_ms,
                timeout_ms: h.timeout_ms,
                healthy_threshold: h.healthy_threshold,
                unhealthy_threshold: h.unhealthy_threshold,
            })
        }
    };
    Ok(Cluster {
        lb_policy,
        endpoints: c
            .endpoints
            .into_iter()
            .map(|e| Endpoint {
                address: e.address,
                weight: e.weight,
                name: Some(e.name).filter(|n| !n.is_empty()),
                backup: e.backup,
                max_connections: e.max_connections,
            })
            .collect(),
        health_check,
        outlier_detection: c
            .outlier_detection
            .map(|o| OutlierDetection { consecutive_failures: o.consecutive_failures, ejection_ms: o.ejection_ms }),
        panic_mode: c.panic_mode,
        tls: c.tls.map(|t| UpstreamTls {
            ca_pem: t.ca_pem,
            server_name: Some(t.server_name).filter(|s| !s.is_empty()),
            client_certificate: Some(t.client_certificate).filter(|s| !s.is_empty()),
        }),
        circuit_breaker: c.circuit_breaker.map(|b| CircuitBreaker {
            max_connections: b.max_connections,
            max_pending: b.max_pending,
            max_requests: b.max_requests,
        }),
        connect_timeout_ms: c.connect_timeout_ms,
        close_connections_on_health_change: c.close_connections_on_health_change,
        protocol,
    })
}

pub fn listener_from_pb(l: pb::Listener) -> Result<Listener> {
    let protocol = match pb::Protocol::try_from(l.protocol) {
        Ok(pb::Protocol::Http) => Protocol::Http,
        Ok(pb::Protocol::Https) => Protocol::Https,
        Ok(pb::Protocol::Tcp) => Protocol::Tcp,
        Ok(pb::Protocol::Udp) => Protocol::Udp,
        Ok(pb::Protocol::Tls) => Protocol::Tls,
        Err(_) => return Err(ValidationError::invalid("protocol", format!("unknown protocol {}", l.protocol))),
    };
    let proxy_protocol = match pb::ProxyProtocol::try_from(l.proxy_protocol) {
        Ok(pb::ProxyProtocol::None) => None,
        Ok(pb::ProxyProtocol::V1) => Some(ProxyProtocol::V1),
        Ok(pb::ProxyProtocol::V2) => Some(ProxyProtocol::V2),
        Err(_) => {
            let why = format!("unknown PROXY protocol version {}", l.proxy_protocol);
            return Err(ValidationError::invalid("proxy_protocol", why));
        }
    };
    let http_versions = l
        .http_versions
        .iter()
        .enumerate()
        .map(|(i, v)| match pb::HttpVersion::try_from(*v) {
            Ok(pb::HttpVersion::Http1) => Ok(HttpVersion::Http1),
            Ok(pb::HttpVersion::Http2) => Ok(HttpVersion::Http2),
            Err(_) => Err(ValidationError::invalid(format!("http_versions[{i}]"), format!("unknown version {v}"))),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Listener {
        address: l.address,
        protocol,
        group: l.group,
        cluster: Some(l.cluster).filter(|c| !c.is_empty()),
        certificates: l.certificates,
        sni: l.sni.into_iter().collect(),
        idle_timeout_ms: l.idle_timeout_ms,
        hash_on: l.hash_on.map(hash_on_from_pb).transpose().map_err(|e| e.within("hash_on"))?,
        max_connections: l.max_connections,
        drain_ms: l.drain_ms,
        proxy_protocol,
        accept_proxy_protocol: l.accept_proxy_protocol,
        proxy_protocol_from: l.proxy_protocol_from,
        tcp_keepalive: l.tcp_keepalive.map(|k| TcpKeepalive {
            idle_ms: k.idle_ms,
            interval_ms: k.interval_ms,
            probes: k.probes,
        }),
        http_versions,
        http2: l.http2.map(|h| Http2Settings {
            max_concurrent_streams: h.max_concurrent_streams,
            max_header_list_bytes: h.max_header_list_bytes,
            initial_stream_window_bytes: h.initial_stream_window_bytes,
            initial_connection_window_bytes: h.initial_connection_window_bytes,
            idle_timeout_ms: h.idle_timeout_ms,
            max_connection_age_ms: h.max_connection_age_ms,
        }),
        paths: l
            .paths
            .map(|p| {
                let escaped_slashes = match pb::EscapedSlashes::try_from(p.escaped_slashes) {
                    Ok(pb::EscapedSlashes::Default) => None,
                    Ok(pb::EscapedSlashes::Keep) => Some(EscapedSlashes::Keep),
                    Ok(pb::EscapedSlashes::Reject) => Some(EscapedSlashes::Reject),
                    Ok(pb::EscapedSlashes::DecodeAndRedirect) => Some(EscapedSlashes::DecodeAndRedirect),
                    Err(_) => return Err(ValidationError::invalid("paths.escaped_slashes", "unknown value")),
                };
                Ok(PathSettings { merge_slashes: p.merge_slashes, escaped_slashes })
            })
            .transpose()?,
        header_timeout_ms: l.header_timeout_ms,
        body_timeout_ms: l.body_timeout_ms,
        allow_from: l.allow_from,
        deny_from: l.deny_from,
    })
}

pub fn route_from_pb(r: pb::Route) -> Result<Route> {
    let matcher = match r.r#match {
        None => RouteMatch::default(),
        Some(m) => route_match_from_pb(m).map_err(|e| e.within("match"))?,
    };
    let retries = match r.retries {
        None => None,
        Some(x) => {
            let mut on = Vec::with_capacity(x.on.len());
            for (i, s) in x.on.iter().enumerate() {
                on.push(RetryOn::parse(s).ok_or_else(|| {
                    ValidationError::invalid(format!("retries.on[{i}]"), format!("unknown retry condition {s:?}"))
                })?);
            }
            Some(Retries {
                attempts: x.attempts,
                on,
                per_try_timeout_ms: x.per_try_timeout_ms,
                budget: x.budget.map(|b| RetryBudget { percent: b.percent, min_per_s: b.min_per_s }),
            })
        }
    };
    Ok(Route {
        listener: r.listener,
        priority: r.priority,
        matcher,
        backends: r.backends.into_iter().map(|b| WeightedCluster { cluster: b.cluster, weight: b.weight }).collect(),
        timeout_ms: r.timeout_ms,
        sticky: r.sticky.map(|s| Sticky { cookie: s.cookie, ttl_s: s.ttl_s }),
        hash_on: r.hash_on.map(hash_on_from_pb).transpose().map_err(|e| e.within("hash_on"))?,
        retries,
        https_redirect: match r.https_redirect {
            None => None,
            Some(h) => Some(HttpsRedirect {
                port: u16::try_from(h.port)
                    .map_err(|_| ValidationError::invalid("https_redirect.port", "must be a port (1-65535)"))?,
                status: u16::try_from(h.status)
                    .map_err(|_| ValidationError::invalid("https_redirect.status", "must be 301, 302, 307 or 308"))?,
            }),
        },
        max_request_body_bytes: r.max_request_body_bytes,
        allow_from: r.allow_from,
        deny_from: r.deny_from,
        direct_response: match r.direct_response {
            None => None,
            Some(d) => Some(DirectResponse {
                status: u16::try_from(d.status)
                    .map_err(|_| ValidationError::invalid("direct_response.status", "must be 200-599"))?,
                body: d.body,
                content_type: d.content_type,
            }),
        },
        redirect: match r.redirect {
            None => None,
            Some(d) => Some(Box::new(Redirect {
                scheme: d.scheme,
                host: d.host,
                port: d
                    .port
                    .map(|p| u16::try_from(p).map_err(|_| ValidationError::invalid("redirect.port", "1-65535")))
                    .transpose()?,
                path: d.path,
                prefix: d.prefix,
                strip_query: d.strip_query,
                status: u16::try_from(d.status).map_err(|_| ValidationError::invalid("redirect.status", "301-308"))?,
            })),
        },
        rewrite: r.rewrite.map(|w| {
            Box::new(Rewrite {
                prefix: w.prefix,
                regex: w.regex.map(|x| RegexRewrite { pattern: x.pattern, substitution: x.substitution }),
                host: w.host,
            })
        }),
        request_headers: r.request_headers.map(header_rewrite_from_pb),
        response_headers: r.response_headers.map(header_rewrite_from_pb),
        rate_limit: match r.rate_limit {
            None => None,
            Some(l) => Some(Box::new(RateLimit {
                requests_per_s: l.requests_per_s,
                burst: l.burst,
                key: match pb::RateLimitKey::try_from(l.key) {
                    Ok(pb::RateLimitKey::ClientIp) => RateLimitKey::ClientIp,
                    Ok(pb::RateLimitKey::Header) => RateLimitKey::Header,
                    Ok(pb::RateLimitKey::Route) => RateLimitKey::Route,
                    Err(_) => return Err(ValidationError::invalid("rate_limit.key", "unknown value")),
                },
                header: l.header,
                fleet: l.fleet,
            })),
        },
        mirror: r.mirror.map(|m| Box::new(Mirror { cluster: m.cluster, percent: m.percent })),
    })
}

fn route_match_from_pb(m: pb::RouteMatch) -> Result<RouteMatch> {
    let path = match m.path {
        None => None,
        Some(p) => Some(match p.kind {
            Some(pb::path_match::Kind::Prefix(s)) => PathMatch { prefix: Some(s), ..Default::default() },
            Some(pb::path_match::Kind::Exact(s)) => PathMatch { exact: Some(s), ..Default::default() },
            Some(pb::path_match::Kind::Regex(s)) => PathMatch { regex: Some(s), ..Default::default() },
            None => return Err(ValidationError::invalid("path", "set exactly one of prefix, exact, regex")),
        }),
    };
    let mut headers = Vec::with_capacity(m.headers.len());
    for (i, h) in m.headers.into_iter().enumerate() {
        let kind = h.kind.map(|k| match k {
            pb::header_match::Kind::Exact(s) => ValueKindOwned::Exact(s),
            pb::header_match::Kind::Regex(s) => ValueKindOwned::Regex(s),
            pb::header_match::Kind::Present(p) => ValueKindOwned::Present(p),
        });
        headers.push(value_match(h.name, kind).map_err(|e| e.within(&format!("headers[{i}]")))?);
    }
    let mut query = Vec::with_capacity(m.query.len());
    for (i, q) in m.query.into_iter().enumerate() {
        let kind = q.kind.map(|k| match k {
            pb::query_match::Kind::Exact(s) => ValueKindOwned::Exact(s),
            pb::query_match::Kind::Regex(s) => ValueKindOwned::Regex(s),
            pb::query_match::Kind::Present(p) => ValueKindOwned::Present(p),
        });
        query.push(value_match(q.name, kind).map_err(|e| e.within(&format!("query[{i}]")))?);
    }
    Ok(RouteMatch { hosts: m.hosts, path, methods: m.methods, headers, query })
}

enum ValueKindOwned {
    Exact(String),
    Regex(String),
    Present(bool),
}

fn value_match(name: String, kind: Option<ValueKindOwned>) -> Result<ValueMatch> {
    let mut v = ValueMatch { name, ..Default::default() };
    match kind {
        Some(ValueKindOwned::Exact(s)) => v.exact = Some(s),
        Some(ValueKindOwned::Regex(s)) => v.regex = Some(s),
        Some(ValueKindOwned::Present(p)) => v.present = Some(p),
        None => return Err(ValidationError::invalid("", "set exactly one of exact, regex, present")),
    }
    Ok(v)
}

fn hash_on_from_pb(h: pb::HashOn) -> Result<HashOn> {
    match h.key {
        Some(pb::hash_on::Key::Header(x)) => Ok(HashOn { header: Some(x), ..Default::default() }),
        Some(pb::hash_on::Key::Cookie(x)) => Ok(HashOn { cookie: Some(x), ..Default::default() }),
        Some(pb::hash_on::Key::SourceIp(true)) => Ok(HashOn { source_ip: true, ..Default::default() }),
        Some(pb::hash_on::Key::SourceIp(false)) | None => {
            Err(ValidationError::invalid("", "set exactly one of header, cookie, source_ip"))
        }
    }
}

#[cfg(test)]
#[path = "convert_tests.rs"]
mod tests;
