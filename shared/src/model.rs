//! The resources operators register (DESIGN.md §3), exactly as the REST API reads and writes them.
//!
//! A resource's name is not part of its body: it comes from the URL (`PUT /v1/clusters/{name}`), so
//! each type here is the *spec* of one named resource. Unknown JSON fields are refused
//! (`deny_unknown_fields`) so that a typo never silently drops a setting.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

fn default_weight() -> u32 {
    1
}

fn default_group() -> String {
    "default".to_string()
}

// ------------------------------------------------------------------------------------ cluster

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    #[default]
    RoundRobin,
    LeastRequest,
    Random,
    RingHash,
    Maglev,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    #[serde(default)]
    pub lb_policy: LbPolicy,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// When no endpoint is healthy (health checks, outlier ejection), spread over all of them
    /// rather than answer 503. Off by default.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub panic_mode: bool,
    /// TLS to the endpoints, for HTTP(S) routes and `tcp` listeners (which then encrypt the
    /// client's plaintext); `None`: plaintext. `tls` passthrough listeners forward the client's own
    /// TLS as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
    /// Bound on one TCP connect to an endpoint (Envoy's `connect_timeout`, HAProxy's `timeout
    /// connect`); `None`: 2 s per try on L4 listeners, 5 s for HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout_ms: Option<u64>,
    /// L4 connections follow the active health checks: an endpoint marked down has its open tcp
    /// and tls connections closed, and a primary marked up again closes those to the backups
    /// (HAProxy's `on-marked-down shutdown-sessions` and `on-marked-up shutdown-backup-sessions`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub close_connections_on_health_change: bool,
    /// The HTTP version spoken to the endpoints of the routes using this cluster.
    #[serde(default, skip_serializing_if = "is_default")]
    pub protocol: UpstreamProtocol,
}

/// How the proxy speaks HTTP to a cluster's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with pooled keep-alive connections.
    #[default]
    Http1,
    /// HTTP/2: h2 by ALPN over TLS, h2c with prior knowledge on plain connections; requests are
    /// streams multiplexed over few connections (gRPC needs this).
    Http2,
    /// ALPN decides on TLS connections (h2 when the endpoint offers it); HTTP/1.1 on plain ones.
    Auto,
}

/// Per-node limits on what one cluster may be sent; past them the proxy answers 503 at once
/// instead of queueing without bound. Each limit is off when unset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreaker {
    /// Upstream connections open to the cluster's endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Requests waiting for a connection while `max_connections` are open (0: none wait).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending: Option<u32>,
    /// Requests in flight to the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
}

/// How the proxy speaks TLS to a cluster's endpoints: it verifies their certificate against
/// `ca_pem` and may present one of the certificate resources (mTLS).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// PEM bundle of the CAs that endpoint certificates must chain to.
    pub ca_pem: String,
    /// The name verified in the endpoint's certificate and sent as SNI; default: the endpoint's IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Name of a certificate resource presented to the endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// `IP:port`, or `host:port` with a DNS name the nodes resolve (every address of the answer an
    /// endpoint); checked by validation, kept as text so errors can quote it.
    pub address: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Unique in its cluster; what a sticky cookie names (an opaque id of the address otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Takes traffic only while no primary (non-backup) endpoint of the cluster is usable
    /// (HAProxy's `backup` servers): a standby, or a "sorry" server.
    #[serde(default, skip_serializing_if = "is_default")]
    pub backup: bool,
    /// The most requests (L7), connections (L4 tcp and tls) or sessions (udp) the endpoint takes
    /// at once from one node (nginx's `max_conns`, HAProxy's per-server `maxconn` without a
    /// queue). A full endpoint is passed over as if unhealthy until one ends; with every endpoint
    /// full, the node answers 503 or closes the connection. `None`: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
}

impl Endpoint {
    /// The parsed address. Only call on validated endpoints; an invalid one yields `None`.
    pub fn parsed_address(&self) -> Option<crate::endpoint_address::EndpointAddress> {
        crate::endpoint_address::EndpointAddress::parse(&self.address).ok()
    }
}

/// `{"http": {"path": "/healthz"}}` or `{"tcp": {}}`, plus timing and thresholds.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpHealthCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpHealthCheck>,
    /// The gRPC health protocol (`grpc.health.v1.Health/Check`) over HTTP/2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcHealthCheck>,
    #[serde(default = "HealthCheck::default_interval_ms")]
    pub interval_ms: u64,
    #[serde(default = "HealthCheck::default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "HealthCheck::default_healthy_threshold")]
    pub healthy_threshold: u32,
    #[serde(default = "HealthCheck::default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
}

/// An endpoint passes when `Check` answers SERVING for `service` ("": the server as a whole).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcHealthCheck {
    #[serde(default)]
    pub service: String,
}

impl HealthCheck {
    pub fn default_interval_ms() -> u64 {
        5_000
    }
    pub fn default_timeout_ms() -> u64 {
        1_000
    }
    pub fn default_healthy_threshold() -> u32 {
        2
    }
    pub fn default_unhealthy_threshold() -> u32 {
        3
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpHealthCheck {
    pub path: String,
    /// Expected status; `None` accepts any 2xx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_status: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpHealthCheck {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetection {
    #[serde(default = "OutlierDetection::default_consecutive_failures")]
    pub consecutive_failures: u32,
    #[serde(default = "OutlierDetection::default_ejection_ms")]
    pub ejection_ms: u64,
}

impl OutlierDetection {
    pub fn default_consecutive_failures() -> u32 {
        5
    }
    pub fn default_ejection_ms() -> u64 {
        30_000
    }
}

// ------------------------------------------------------------------------------------ listener

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Http,
    Https,
    Tcp,
    Udp,
    Tls,
}

impl Protocol {
    /// HTTP-aware listeners, the ones routes attach to.
    pub fn is_l7(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Https)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// `IP:port`; checked by validation.
    pub address: String,
    pub protocol: Protocol,
    #[serde(default = "default_group")]
    pub group: String,
    /// The cluster of a tcp/udp listener (and the default of a tls passthrough listener).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Certificate names of an https listener; the first is the default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<String>,
    /// tls passthrough: SNI host name (exact or `*.` wildcard) -> cluster.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sni: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<HashOn>,
    /// Open client connections (udp: client sessions) beyond which new ones are closed at once
    /// (http/https: besides the process's cap, half of its open-files limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// How long a removed (or re-addressed) listener's open connections may finish before they
    /// are cut; the node's default (30 s) when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_ms: Option<u64>,
    /// tcp/tls: each upstream connection starts with a PROXY protocol header carrying the
    /// client's address, which an L4 proxy otherwise hides from the endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Behind another L4 balancer: every connection starts with a PROXY protocol header (v1 or
    /// v2), whose client address stands for the connection's. Not for udp.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub accept_proxy_protocol: bool,
    /// With `accept_proxy_protocol`: the balancers trusted to send the header (networks, as
    /// `10.0.0.0/8` or one address); connections from elsewhere are closed. Empty: any source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proxy_protocol_from: Vec<String>,
    /// tcp/tls: TCP keepalive on both sides of every connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// http/https: the HTTP versions offered to clients (ALPN on https, h2c with prior knowledge
    /// on http). Empty: both.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_versions: Vec<HttpVersion>,
    /// http/https: limits on HTTP/2 clients; each unset one has an edge-safe default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2: Option<Http2Settings>,
    /// http/https: how request paths are normalized before routing (see docs/API.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths: Option<PathSettings>,
    /// http/https: how long a client may take to send a request head, idle keep-alive time
    /// included; past it, 408 and the connection closes (default 30 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_timeout_ms: Option<u64>,
    /// http/https: how long a client sending a request body may go without sending any of it;
    /// past it, 408, and the endpoint is not blamed (default 30 s). Route and per-try timeouts
    /// count from the end of the body, not while the client is still sending it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_timeout_ms: Option<u64>,
    /// Client networks (CIDRs) that may connect; empty: any. Checked on the client address (the
    /// one a trusted PROXY header names); other connections are closed before anything is read
    /// (udp: their datagrams dropped).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_from: Vec<String>,
    /// Client networks refused, even when `allow_from` lists them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_from: Vec<String>,
}

/// Path normalization of an http/https listener; dot segments are always removed and
/// unreserved escapes always decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathSettings {
    /// Runs of `/` become one (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge_slashes: Option<bool>,
    /// What `%2F`, `%5C` and `\` in a path do (default reject).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escaped_slashes: Option<EscapedSlashes>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EscapedSlashes {
    /// Left encoded and never treated as a separator.
    Keep,
    /// 400.
    Reject,
    /// Decoded, and the client redirected (307) to the decoded path.
    DecodeAndRedirect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpVersion {
    Http1,
    Http2,
}

/// An http/https listener's HTTP/2 limits (Envoy's edge guide sets the defaults' spirit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http2Settings {
    /// Streams one client connection may have open at once (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_streams: Option<u32>,
    /// The largest header list a client may send, decoded (default 64 KiB); past it, 431.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_header_list_bytes: Option<u32>,
    /// Flow-control window of each stream: what a client may send ahead (default 64 KiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_stream_window_bytes: Option<u32>,
    /// Flow-control window of the whole connection (default 1 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_connection_window_bytes: Option<u32>,
    /// A connection with no open stream for this long is closed with GOAWAY (default 5 min).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_ms: Option<u64>,
    /// A connection older than this gets a graceful GOAWAY (default: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connection_age_ms: Option<u64>,
}

/// TCP keepalive probes on an L4 listener's client and endpoint sockets, so that a connection
/// whose peer vanished without a FIN or RST (a host powered off, a cable pulled) is found and
/// closed instead of held forever; and so that middleboxes keep long idle connections (a
/// database pool's) mapped. The kernel counts in whole seconds: milliseconds are rounded up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpKeepalive {
    /// Idle time before the first probe.
    #[serde(default = "TcpKeepalive::default_idle_ms")]
    pub idle_ms: u64,
    /// Between unanswered probes.
    #[serde(default = "TcpKeepalive::default_interval_ms")]
    pub interval_ms: u64,
    /// Unanswered probes before the connection is dropped.
    #[serde(default = "TcpKeepalive::default_probes")]
    pub probes: u32,
}

impl TcpKeepalive {
    fn default_idle_ms() -> u64 {
        60_000
    }
    fn default_interval_ms() -> u64 {
        10_000
    }
    fn default_probes() -> u32 {
        3
    }
}

/// The PROXY protocol version a listener sends to its endpoints (HAProxy's `send-proxy` and
/// `send-proxy-v2`, nginx's `proxy_protocol on`, which is v1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProxyProtocol {
    /// The text header: `PROXY TCP4 <client ip> <local ip> <client port> <local port>\r\n`.
    V1,
    /// The binary header.
    V2,
}

impl Listener {
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.address.parse().ok()
    }
}

/// The key a hashing policy (ring_hash, maglev) or stickiness hashes on: exactly one is set.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HashOn {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub source_ip: bool,
}

// ------------------------------------------------------------------------------------ route

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub listener: String,
    #[serde(default)]
    pub priority: i32,
    #[serde(default, rename = "match")]
    pub matcher: RouteMatch,
    pub backends: Vec<WeightedCluster>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<Sticky>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<HashOn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
    /// On plain http listeners: answer with a redirect to the same URL over https.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https_redirect: Option<HttpsRedirect>,
    /// Request bodies over this size are refused with 413 (like nginx's `client_max_body_size`);
    /// unset: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_body_bytes: Option<u64>,
    /// Client networks (CIDRs) allowed to use the route; empty: any. Others get 403.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_from: Vec<String>,
    /// Client networks refused (403), even when `allow_from` lists them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_from: Vec<String>,
    /// Answer every request with this, no backend involved (a maintenance page, say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<DirectResponse>,
    /// Answer every request with a redirect (scheme, host, port, path or prefix replaced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Box<crate::transforms::Redirect>>,
    /// The path and Host the endpoint gets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Box<crate::transforms::Rewrite>>,
    /// Headers removed, set and added on the request to the endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<Box<crate::transforms::HeaderRewrite>>,
    /// Headers removed, set and added on the response to the client (the proxy's own answers
    /// of the route included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<Box<crate::transforms::HeaderRewrite>>,
    /// Requests over the rate get 429.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<Box<crate::rate_limit::RateLimit>>,
    /// A share of the requests copied to another cluster, its answers discarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Box<crate::transforms::Mirror>>,
}

impl Route {
    /// A route answering by itself (a redirect or a fixed response) never reaches a backend.
    pub fn answers_itself(&self) -> bool {
        self.https_redirect.is_some() || self.direct_response.is_some() || self.redirect.is_some()
    }

    /// Every cluster the route sends to, with the field that names it: its backends, then the
    /// cluster it mirrors to.
    pub fn clusters(&self) -> impl Iterator<Item = (String, &str)> {
        let backends =
            self.backends.iter().enumerate().map(|(i, b)| (format!("backends[{i}].cluster"), b.cluster.as_str()));
        backends.chain(self.mirror.iter().map(|m| ("mirror.cluster".to_string(), m.cluster.as_str())))
    }
}

/// A fixed answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectResponse {
    /// 200-599.
    pub status: u16,
    /// At most 64 KiB.
    #[serde(default)]
    pub body: String,
    /// Default `text/plain; charset=utf-8`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpsRedirect {
    /// The https port in the `Location`; 443 is left out of it.
    #[serde(default = "HttpsRedirect::default_port")]
    pub port: u16,
    /// 301, 302, 307 or 308.
    #[serde(default = "HttpsRedirect::default_status")]
    pub status: u16,
}

impl HttpsRedirect {
    pub fn default_port() -> u16 {
        443
    }
    pub fn default_status() -> u16 {
        301
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// Exact (`myshop.com`) or wildcard (`*.myshop.com`) host names; empty matches any host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// Upper-case method names; empty matches any method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<ValueMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query: Vec<ValueMatch>,
}

/// Exactly one of `prefix`, `exact`, `regex`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// The one kind of path match a validated [`PathMatch`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind<'a> {
    Prefix(&'a str),
    Exact(&'a str),
    Regex(&'a str),
}

impl PathMatch {
    /// `None` unless exactly one kind is set (validation guarantees it).
    pub fn kind(&self) -> Option<PathKind<'_>> {
        match (&self.prefix, &self.exact, &self.regex) {
            (Some(p), None, None) => Some(PathKind::Prefix(p)),
            (None, Some(e), None) => Some(PathKind::Exact(e)),
            (None, None, Some(r)) => Some(PathKind::Regex(r)),
            _ => None,
        }
    }
}

/// A header or query parameter condition: `name` plus exactly one of `exact`, `regex`, `present`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValueMatch {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
}

/// The one kind of condition a validated [`ValueMatch`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind<'a> {
    Exact(&'a str),
    Regex(&'a str),
    /// `present: true` requires the name, `present: false` requires its absence.
    Present(bool),
}

impl ValueMatch {
    pub fn kind(&self) -> Option<ValueKind<'_>> {
        match (&self.exact, &self.regex, self.present) {
            (Some(e), None, None) => Some(ValueKind::Exact(e)),
            (None, Some(r), None) => Some(ValueKind::Regex(r)),
            (None, None, Some(p)) => Some(ValueKind::Present(p)),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedCluster {
    pub cluster: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sticky {
    #[serde(default = "Sticky::default_cookie")]
    pub cookie: String,
    #[serde(default = "Sticky::default_ttl_s")]
    pub ttl_s: u64,
}

impl Sticky {
    pub fn default_cookie() -> String {
        "sluice_sticky".to_string()
    }
    pub fn default_ttl_s() -> u64 {
        3_600
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryOn {
    ConnectFailure,
    Reset,
    #[serde(rename = "5xx")]
    Status5xx,
}

impl RetryOn {
    pub fn as_str(self) -> &'static str {
        match self {
            RetryOn::ConnectFailure => "connect_failure",
            RetryOn::Reset => "reset",
            RetryOn::Status5xx => "5xx",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "connect_failure" => Some(RetryOn::ConnectFailure),
            "reset" => Some(RetryOn::Reset),
            "5xx" => Some(RetryOn::Status5xx),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retries {
    pub attempts: u32,
    #[serde(default = "Retries::default_on")]
    pub on: Vec<RetryOn>,
    /// Timeout of each try; the route's `timeout_ms` still bounds them all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout_ms: Option<u64>,
    /// Bounds retries so they cannot multiply an outage; the default budget when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<RetryBudget>,
}

impl Retries {
    pub fn default_on() -> Vec<RetryOn> {
        vec![RetryOn::ConnectFailure]
    }
}

/// Retries allowed: `percent` of the route's requests, plus `min_per_s` every second whatever
/// the traffic (so a quiet route can still retry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBudget {
    #[serde(default = "RetryBudget::default_percent")]
    pub percent: u32,
    #[serde(default = "RetryBudget::default_min_per_s")]
    pub min_per_s: u32,
}

impl RetryBudget {
    pub fn default_percent() -> u32 {
        20
    }
    pub fn default_min_per_s() -> u32 {
        10
    }
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget { percent: Self::default_percent(), min_per_s: Self::default_min_per_s() }
    }
}

// ------------------------------------------------------------------------------------ certificate

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    pub cert_pem: String,
    /// Never returned by reads nor logged (see the Debug impl).
    pub key_pem: String,
}

/// Redacts the key, so a certificate in a log line or panic message never shows it.
impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("cert_pem", &format_args!("<{} bytes>", self.cert_pem.len()))
            .field("key_pem", &format_args!("<redacted>"))
            .finish()
    }
}
