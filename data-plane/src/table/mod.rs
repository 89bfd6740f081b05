//! Route table: compile + lookup + load balancing. Pure: no I/O, no tasks.
//!
//! # API (what the proxy runtime uses)
//!
//! ```text
//! compile(cfg: &Config, previous: Option<&Table>) -> Result<Table, CompileError>
//!     Off the hot path, once per revision. Reuses from `previous` the `Arc<EndpointState>` of
//!     every (cluster name, address) still present, and the `Arc<RouteStats>` of every route name.
//! Table::with_revision(self, Revision) -> Table;  Table::revision(&self) -> Revision
//! Table::listener(&self, name) -> Option<&ListenerTable>;  Table::listeners() -> iter (name, &ListenerTable)
//! Table::cluster(&self, name) -> Option<&Arc<ClusterLb>>;  Table::clusters() -> iter (name, &Arc<ClusterLb>)
//! ListenerTable::{name, address, protocol, idle_timeout, max_connections, drain, hash_source_ip,
//!   proxy_protocol, accept_proxy_protocol, tcp_keepalive, routes}
//! ListenerTable::find(&self, &RequestView) -> Option<&RouteEntry>      no allocation (see below)
//! ListenerTable::cluster(&self) -> Option<&Arc<ClusterLb>>              tcp/udp (and tls default) cluster
//! ListenerTable::sni_cluster(&self, Option<&str>) -> Option<&Arc<ClusterLb>>  tls passthrough by SNI
//! RouteEntry::pick_cluster(&self) -> Option<&Arc<ClusterLb>>            weighted, per request
//! RouteEntry::{name, priority, backends, backend(name), timeout, retries, sticky, hash_on, https_redirect, stats}
//! RouteEntry::{deposit_retry_budget, withdraw_retry_budget}             retry budget (`retry.rs`)
//! ClusterLb::breaker(&self) -> Option<&Arc<Breaker>>                    circuit breaking (`breaker.rs`)
//! ClusterLb::pick_address(&self, SocketAddr) -> Option<EndpointGuard>   sticky sessions
//! ClusterLb::pick(&self) -> Option<EndpointGuard>                       backups only if no primary; None: 503
//! ClusterLb::pick_excluding(&self, &[SocketAddr]) -> Option<EndpointGuard>   for retries
//! ClusterLb::pick_hashed(&self, key: u64, &[SocketAddr]) -> Option<EndpointGuard>  ring_hash, maglev
//! hash_ip(IpAddr) -> u64; hash_bytes(&[u8]) -> u64                    keys: source IP; header/cookie value
//! EndpointGuard: Deref<Target = EndpointState>; counts one active request until dropped
//! EndpointState::{address, is_healthy, set_healthy, active}
//! ClusterLb::record_outcome(&self, &EndpointState, failed: bool)        passive outlier detection
//! ClusterLb::health_check(&self) -> Option<&HealthCheck>                 active checks (`health/`)
//! RouteStats::{record_request, record_response(status), requests, responses(class)}
//! normalize_host(&str) -> Cow<str>                                      Host header -> RequestView::host
//! ```
//!
//! # Route choice (DESIGN §3)
//!
//! Highest `priority` wins. Among equal priorities, in this order: host tier (exact host >
//! `*.suffix` wildcard, longer suffix first > no hosts), path tier (exact > longer prefix >
//! shorter prefix > regex > no path), more conditions (a method list counts one, each header and
//! query condition one), then the name that sorts first.
//!
//! Matching rules: `RequestView::host` must already be lower-case without port or trailing dot
//! ([`normalize_host`]); `*.myshop.com` matches `a.myshop.com` and `a.b.myshop.com`, not
//! `myshop.com`. Prefix and exact paths compare the raw path bytes (`/api/` matches `/api/x`, not
//! `/api`); regexes (path, header, query) search unanchored, use `^…$` to anchor. Header names are
//! case-insensitive, a repeated header or query parameter matches if any value does, and
//! `present: false` means absent. Query names and values are percent-decoded, `+` read as space.
//!
//! # Balancing
//!
//! `pick_cluster`: weighted random with a thread-local wyrand (no lock, no shared cache line).
//! `ClusterLb::pick` by policy, over healthy endpoints with non-zero weight: `round_robin` is
//! lock-free interleaved weighted round robin on one atomic counter (each endpoint gets exactly
//! its weight per cycle); `least_request` scans exactly up to 8 endpoints and uses power of two
//! choices beyond; `random` is weighted random. `ring_hash` and `maglev` (`hash.rs`) map a key
//! through `ClusterLb::pick_hashed(key, exclude)`; without a key (plain `pick`) they round robin. When the policy's tries keep hitting unhealthy endpoints, a scan finds any
//! healthy one.

mod breaker;
mod compile;
mod hash;
mod http_options;
mod index;
mod ip_policy;
mod lb;
mod matcher;
mod outlier;
mod rate_limit;
mod request;
mod retry;
mod route;
mod sni;
mod transform;

#[cfg(test)]
mod tests_accepted_compiles;
#[cfg(test)]
mod tests_lb;
#[cfg(test)]
mod tests_max_connections;
#[cfg(test)]
mod tests_precedence;
#[cfg(test)]
mod tests_reference;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice_shared::cidr::Cidr;
use sluice_shared::model::{Protocol, ProxyProtocol, TcpKeepalive};
use sluice_shared::Revision;

pub use breaker::{Breaker, Overflow, PendingGuard, RequestPermit};
pub use compile::compile;
pub use hash::{hash_bytes, hash_ip};
pub use http_options::{EscapedSlashes, HttpOptions, PathPolicy};
pub use ip_policy::IpPolicy;
pub use lb::{ClusterLb, EndpointGuard, EndpointState, LbEndpoint};
pub use outlier::{max_ejected, OutlierPolicy};
pub use rate_limit::{LimitKey, Limited, RateLimiter};
pub use request::{normalize_host, valid_authority, RequestView};
pub use retry::{RetryBucket, RetryPolicy};
pub use route::{RouteEntry, RouteStats, WeightedBackend};
pub use transform::{HeaderOps, PathRewrite, RouteRedirect, RouteRewrite, Transforms, Values};

use index::RouteIndex;

/// Why a config could not be compiled: the config path of the field at fault and what is wrong.
/// Its display text is what a node sends in a NACK.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct CompileError {
    pub field: String,
    pub message: String,
}

impl CompileError {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> CompileError {
        CompileError { field: field.into(), message: message.into() }
    }
}

/// One compiled revision: every listener with its route index, every cluster with its balancer.
/// Immutable; share it as `Arc<Table>` (one `ArcSwap::store` per revision).
#[derive(Debug, Default)]
pub struct Table {
    revision: Revision,
    listeners: BTreeMap<String, ListenerTable>,
    clusters: HashMap<String, Arc<ClusterLb>>,
}

impl Table {
    /// Stamps the config revision this table was compiled from (`compile` leaves it 0).
    pub fn with_revision(mut self, revision: Revision) -> Table {
        self.revision = revision;
        self
    }

    pub fn revision(&self) -> Revision {
        self.revision
    }

    pub fn listener(&self, name: &str) -> Option<&ListenerTable> {
        self.listeners.get(name)
    }

    /// In name order.
    pub fn listeners(&self) -> impl Iterator<Item = (&str, &ListenerTable)> {
        self.listeners.iter().map(|(n, l)| (n.as_str(), l))
    }

    pub fn cluster(&self, name: &str) -> Option<&Arc<ClusterLb>> {
        self.clusters.get(name)
    }

    /// In no particular order.
    pub fn clusters(&self) -> impl Iterator<Item = (&str, &Arc<ClusterLb>)> {
        self.clusters.iter().map(|(n, c)| (n.as_str(), c))
    }
}

/// One listener of a table: where it listens, and its routes (http/https) or cluster (tcp/udp/tls).
#[derive(Debug)]
pub struct ListenerTable {
    name: Arc<str>,
    address: SocketAddr,
    protocol: Protocol,
    cluster: Option<Arc<ClusterLb>>,
    idle_timeout: Option<Duration>,
    max_connections: Option<u32>,
    drain: Option<Duration>,
    /// `hash_on: {"source_ip": true}` (tcp/udp): the client IP is the hashing policies' key.
    hash_source_ip: bool,
    proxy_protocol: Option<ProxyProtocol>,
    /// `Some` when connections start with a PROXY header: the sources trusted to send it (empty: any).
    accept_proxy_protocol: Option<Arc<[Cidr]>>,
    tcp_keepalive: Option<TcpKeepalive>,
    /// `allow_from` / `deny_from`: who may connect at all; `None`: anyone.
    clients: Option<IpPolicy>,
    http: HttpOptions,
    sni: sni::SniMap,
    /// Sorted by name; the index refers to routes by position.
    routes: Vec<RouteEntry>,
    index: RouteIndex,
}

impl ListenerTable {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The cluster of a tcp/udp listener (the default cluster of a tls passthrough listener).
    pub fn cluster(&self) -> Option<&Arc<ClusterLb>> {
        self.cluster.as_ref()
    }

    /// The cluster of a tls passthrough listener for a ClientHello's server name (lower-case, as
    /// [`normalize_host`] makes it): exact name, else the longest matching `*.suffix`, else the
    /// listener's default cluster (also when the client sent no SNI).
    pub fn sni_cluster(&self, server_name: Option<&str>) -> Option<&Arc<ClusterLb>> {
        server_name.and_then(|n| self.sni.get(n)).or(self.cluster.as_ref())
    }

    pub fn idle_timeout(&self) -> Option<Duration> {
        self.idle_timeout
    }

    /// tcp/tls: open connections; udp: client sessions. `None`: the node's default bound.
    pub fn max_connections(&self) -> Option<u32> {
        self.max_connections
    }

    /// How long open connections may finish once this listener is removed; `None`: node default.
    pub fn drain(&self) -> Option<Duration> {
        self.drain
    }

    pub fn hash_source_ip(&self) -> bool {
        self.hash_source_ip
    }

    /// tcp/tls: the PROXY protocol header each upstream connection starts with, if any.
    pub fn proxy_protocol(&self) -> Option<ProxyProtocol> {
        self.proxy_protocol
    }

    /// Connections start with a PROXY protocol header to take the client's address from: `Some`
    /// networks its senders must be in (empty: any source), `None` when no header is expected.
    pub fn accept_proxy_protocol(&self) -> Option<&Arc<[Cidr]>> {
        self.accept_proxy_protocol.as_ref()
    }

    /// Whether a client at `ip` may connect to this listener (`allow_from`, `deny_from`).
    pub fn admits(&self, ip: std::net::IpAddr) -> bool {
        self.clients.as_ref().is_none_or(|p| p.permits(ip))
    }

    /// tcp/tls: keepalive probes on both sides of each connection.
    pub fn tcp_keepalive(&self) -> Option<&TcpKeepalive> {
        self.tcp_keepalive.as_ref()
    }

    /// http/https: the HTTP versions offered and the HTTP/2 limits.
    pub fn http(&self) -> &HttpOptions {
        &self.http
    }

    /// The routes attached to this listener, by name.
    pub fn routes(&self) -> &[RouteEntry] {
        &self.routes
    }

    /// The route for a request by the rules in the module docs; `None`: no route matches (404).
    /// Allocates nothing unless a query regex meets a percent-encoded value.
    pub fn find(&self, req: &RequestView<'_>) -> Option<&RouteEntry> {
        self.index.find(&self.routes, req).map(|i| &self.routes[i as usize])
    }
}
