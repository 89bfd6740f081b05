//! L4 TCP: a tcp listener forwards each connection to an endpoint of its cluster and splices bytes
//! both ways until both sides are done.
//!
//! - Half-close passes through: when one side ends its stream (FIN), the other side's write half
//!   is shut down and the opposite direction keeps flowing until it ends too.
//! - An error on either side (reset, write failure) closes both at once; an upstream reset is
//!   passed on to the client as a reset.
//! - `idle_timeout_ms`: no byte in either direction for that long closes both.
//! - `max_connections`: a connection beyond it is closed at once (counted as rejected).
//! - The cluster's circuit breaker: its `max_connections` bounds this node's upstream connections
//!   to the cluster, these and HTTP's together. A client over it waits for one to close, as one
//!   of `max_pending`, for at most [`CONNECT_TIMEOUT`]; otherwise it is closed before any
//!   endpoint is connected (HAProxy's `maxconn` queue, Envoy's `upstream_cx_overflow`).
//! - Endpoint choice: the cluster's policy; `ring_hash`/`maglev` key on the client IP (what
//!   `hash_on: {"source_ip": true}` says; also the default, raw traffic has no other key). A refused or unreachable endpoint is counted and
//!   the next one tried, all within [`CONNECT_TIMEOUT`]; then the client is closed.
//! - `tcp_keepalive`: keepalive probes on the client's and the endpoint's socket, so a peer gone
//!   without a FIN or RST is found; without it (and without `idle_timeout_ms`) such a connection
//!   would be held until the other side writes.
//! - `proxy_protocol`: the endpoint gets a PROXY protocol header with the client's address before
//!   the client's first byte (`proxy_protocol/`).
//! - `close_connections_on_health_change` (cluster): the connection is closed when the health
//!   checks mark its endpoint down or outlier detection ejects it, or, to a backup, when a primary
//!   is marked up again.
//! - Config changes never touch an open connection: the table is only read to connect, and the
//!   endpoint guard (which `least_request` counts) lives as long as the connection.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sluice_shared::model::TcpKeepalive;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::time::Instant;

use crate::access_log::L4Entry;
use crate::l4_stats::{Admitted, L4Stats};
use crate::listeners::Phase;
use crate::proxy_protocol;
use crate::state::Shared;
use crate::table::{hash_ip, Breaker, ClusterLb, EndpointGuard, ListenerTable, Overflow};

mod engine;
mod meter;
mod splice;

pub use splice::splice;
use splice::splice_tls;

/// Bound on connecting upstream, all endpoint tries together (or one try, if the cluster's
/// `connect_timeout_ms` is longer).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on one endpoint's try when the cluster sets no `connect_timeout_ms`, so an unreachable
/// one leaves time for the next.
const CONNECT_TRY_TIMEOUT: Duration = Duration::from_secs(2);
/// Open connections per listener when it sets no `max_connections` (file descriptors are finite).
pub const DEFAULT_MAX_CONNECTIONS: u32 = 65_536;

/// `peer` is the client (as a PROXY protocol header announced it, on a listener that accepts one);
/// `local`, where it connected to when a header said so (else the socket's own address).
pub async fn serve(
    client: TcpStream,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    listener: &str,
    shared: &Arc<Shared>,
    stats: &Arc<L4Stats>,
    phase: watch::Receiver<Phase>,
) {
    let mut log = L4Entry::start(listener, peer);
    // The table is read once, to connect; the connection holds only its endpoint guard after that,
    // so later revisions neither cut it nor stay in memory because of it.
    let (upstream, idle, tls) = {
        let Some(installed) = shared.installed.load_full() else { return log.end("no_config") };
        let Some(table) = installed.table.listener(listener) else { return log.end("no_listener") };
        let Some(cluster) = table.cluster() else {
            tracing::debug!("listener has no cluster in the installed table");
            return log.end("no_cluster");
        };
        let downstream = Downstream { stream: &client, peer, local, server_name: None };
        let upstream = match admit_and_connect(downstream, table, cluster, stats, &mut log).await {
            Ok(upstream) => upstream,
            Err(refused) => return log.end(refused.as_str()),
        };
        let tls = installed.tls.upstream(cluster.name()).cloned();
        (upstream, table.idle_timeout(), tls)
    };
    let Upstream { stream, endpoint, slot: _slot, permit: _permit, closing } = upstream;
    let spliced = match tls {
        // The cluster speaks TLS: the client's plaintext goes to the endpoint encrypted.
        Some(tls) => match tls.connect(endpoint.address(), stream).await {
            Ok(stream) => splice_tls(client, stream, idle, stats, phase, closing).await,
            Err(e) => {
                tracing::debug!(endpoint = %endpoint.address(), error = %e, "upstream TLS handshake failed");
                stats.connect_failed(endpoint.address());
                return log.end("upstream_tls_failed");
            }
        },
        None => splice(client, stream, idle, stats, phase, closing).await,
    };
    spliced.log_to(&mut log);
}

/// An admitted client's connection to an endpoint; dropping it releases the endpoint (which
/// `least_request` counts), the listener's connection slot and the circuit breaker's permit.
pub struct Upstream {
    pub stream: TcpStream,
    pub endpoint: EndpointGuard,
    pub slot: Admitted,
    /// One of the cluster's circuit breaker's `max_connections`, when it sets one.
    pub permit: Option<OwnedSemaphorePermit>,
    /// Changes when the connection is to be closed because the endpoint's health changed (with
    /// `close_connections_on_health_change`).
    pub closing: Option<watch::Receiver<u64>>,
}

/// Why [`admit_and_connect`] gave up on a client (already counted in the listener's stats).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `max_connections` reached.
    Limit,
    /// No endpoint could be connected within [`CONNECT_TIMEOUT`].
    NoEndpoint,
    /// Every endpoint that could take the client is at its `max_connections`.
    EndpointsFull,
    /// The endpoint did not take the PROXY protocol header.
    ProxyHeader,
    /// The cluster's circuit breaker: no connection free, and no room or time to wait for one.
    Overflow(Overflow),
}

impl Refused {
    /// What the access log says.
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Limit => "max_connections",
            Refused::NoEndpoint => "no_endpoint",
            Refused::EndpointsFull => "endpoints_full",
            Refused::ProxyHeader => "proxy_header_failed",
            Refused::Overflow(Overflow::Connections) => "circuit_breaker_connections",
            Refused::Overflow(Overflow::Pending) => "circuit_breaker_pending",
            Refused::Overflow(Overflow::Requests) => "circuit_breaker_requests",
        }
    }
}

/// The client's side of a connection to admit.
pub struct Downstream<'a> {
    pub stream: &'a TcpStream,
    /// The client, as a PROXY protocol header announced it on a listener that accepts one.
    pub peer: SocketAddr,
    /// Where it connected to, when such a header said so (else the socket's own address).
    pub local: Option<SocketAddr>,
    /// The TLS server name it asked for (tls passthrough), handed on in a v2 PROXY header.
    pub server_name: Option<&'a str>,
}

/// Admits a client under the listener's `max_connections` and the cluster's circuit breaker,
/// connects it to an endpoint of `cluster`, then sends the listener's PROXY protocol header (if
/// any) there.
pub async fn admit_and_connect(
    client: Downstream<'_>,
    table: &ListenerTable,
    cluster: &ClusterLb,
    stats: &Arc<L4Stats>,
    log: &mut L4Entry<'_>,
) -> Result<Upstream, Refused> {
    let Some(slot) = stats.admit(table.max_connections().unwrap_or(DEFAULT_MAX_CONNECTIONS)) else {
        tracing::debug!("max_connections reached, closing");
        return Err(Refused::Limit);
    };
    let permit = match cluster.breaker() {
        Some(breaker) => connection_permit(breaker, CONNECT_TIMEOUT).await.map_err(|o| {
            tracing::debug!(cluster = cluster.name(), limit = o.as_str(), "circuit breaker open, closing");
            Refused::Overflow(o)
        })?,
        None => None,
    };
    // The client IP is the only key raw traffic has: ring_hash and maglev use it even without
    // `hash_on` (other policies ignore the key).
    let Connected { stream, endpoint, closing } = match connect(cluster, Some(hash_ip(client.peer.ip())), stats).await {
        Ok(connected) => connected,
        // Nothing tried: every endpoint that could take the client was full.
        Err(NotConnected { tried: 0 }) if cluster.is_full() => {
            stats.endpoints_full.fetch_add(1, Ordering::Relaxed);
            return Err(Refused::EndpointsFull);
        }
        Err(_) => {
            stats.no_endpoint.fetch_add(1, Ordering::Relaxed);
            return Err(Refused::NoEndpoint);
        }
    };
    let _ = stream.set_nodelay(true);
    if let Some(k) = table.tcp_keepalive() {
        for socket in [client.stream, &stream] {
            set_keepalive(socket, k);
        }
    }
    tracing::debug!(endpoint = %endpoint.address(), "connected upstream");
    log.upstream(cluster.name(), endpoint.address());
    let mut upstream = Upstream { stream, endpoint, slot, permit, closing };
    if let Some(version) = table.proxy_protocol() {
        let local = client.local.map_or_else(|| client.stream.local_addr(), Ok);
        let header = local.map(|local| proxy_protocol::header(version, client.peer, local, client.server_name));
        send_proxy_header(&mut upstream, header, stats).await.ok_or(Refused::ProxyHeader)?;
    }
    Ok(upstream)
}

/// A permit of `breaker` for one more upstream connection, if it bounds them (`max_connections`).
/// With none free, the client waits for a connection of the cluster to close (L4 or HTTP), as
/// one of `max_pending`, for at most `wait`. Waiting makes room too: an idle pooled HTTP
/// connection holding a permit is closed, and HTTP ones finishing an exchange close instead of
/// idling.
async fn connection_permit(breaker: &Arc<Breaker>, wait: Duration) -> Result<Option<OwnedSemaphorePermit>, Overflow> {
    if !breaker.limits_connections() {
        return Ok(None);
    }
    if let Some(permit) = breaker.try_connection() {
        return Ok(Some(permit));
    }
    let _waiting = breaker.enter_pending()?;
    crate::http::upstream::evict_idle(breaker);
    match tokio::time::timeout(wait, breaker.connection()).await {
        Ok(Some(permit)) => Ok(Some(permit)),
        _ => Err(breaker.overflowed(Overflow::Connections)),
    }
}

/// Turns TCP keepalive on with the listener's timings (whole seconds, rounded up). A socket that
/// refuses is left as it is: keepalive finds dead peers, it is not needed to proxy.
fn set_keepalive(socket: &TcpStream, k: &TcpKeepalive) {
    let secs = |ms: u64| Duration::from_secs(ms.div_ceil(1000));
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(secs(k.idle_ms))
        .with_interval(secs(k.interval_ms))
        .with_retries(k.probes);
    if let Err(e) = socket2::SockRef::from(socket).set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %e, "cannot set TCP keepalive");
    }
}

/// Writes the PROXY protocol header first thing on a new upstream connection; an endpoint that
/// cannot take it (a few dozen bytes on a fresh connection) counts as a failed connect.
async fn send_proxy_header(upstream: &mut Upstream, header: io::Result<Vec<u8>>, stats: &L4Stats) -> Option<()> {
    let sent = async { upstream.stream.write_all(&header?).await };
    let why = match tokio::time::timeout(CONNECT_TRY_TIMEOUT, sent).await {
        Ok(Ok(())) => return Some(()),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "timed out".to_string(),
    };
    tracing::debug!(endpoint = %upstream.endpoint.address(), error = why, "sending the PROXY header failed");
    stats.connect_failed(upstream.endpoint.address());
    None
}

/// A connection to an endpoint, as [`connect`] made it.
pub struct Connected {
    pub stream: TcpStream,
    pub endpoint: EndpointGuard,
    /// With `close_connections_on_health_change`: the endpoint's close requests, watched from
    /// before the connect, so that a verdict given meanwhile is not missed.
    pub closing: Option<watch::Receiver<u64>>,
}

/// [`connect`] found no endpoint to take the client, after trying this many.
#[derive(Debug)]
pub struct NotConnected {
    pub tried: usize,
}

/// Connects to an endpoint of `cluster` (by `key` for the hashing policies), trying the next one
/// on failure; fails when no endpoint is left to try or [`CONNECT_TIMEOUT`] passed.
pub async fn connect(cluster: &ClusterLb, key: Option<u64>, stats: &L4Stats) -> Result<Connected, NotConnected> {
    let per_try = cluster.connect_timeout().unwrap_or(CONNECT_TRY_TIMEOUT);
    let deadline = Instant::now() + CONNECT_TIMEOUT.max(per_try);
    let mut tried: Vec<SocketAddr> = Vec::new();
    loop {
        // Every endpoint gets one try at most.
        let picked = match key {
            Some(k) => cluster.pick_hashed(k, &tried),
            None => cluster.pick_excluding(&tried),
        };
        let Some(endpoint) = picked else {
            tracing::debug!(cluster = cluster.name(), tried = tried.len(), "no endpoint to connect to");
            return Err(NotConnected { tried: tried.len() });
        };
        let addr = endpoint.address();
        let closing = cluster.closes_on_health_change().then(|| endpoint.closings());
        let budget = deadline.saturating_duration_since(Instant::now()).min(per_try);
        match tokio::time::timeout(budget, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                cluster.record_outcome(&endpoint, false);
                return Ok(Connected { stream, endpoint, closing });
            }
            Ok(Err(e)) => tracing::debug!(%addr, error = %e, "upstream connect failed"),
            Err(_) => tracing::debug!(%addr, "upstream connect timed out"),
        }
        // Passive outlier detection counts connect failures (L4 sees no status codes).
        cluster.record_outcome(&endpoint, true);
        stats.connect_failed(addr);
        tried.push(addr);
        if Instant::now() >= deadline {
            return Err(NotConnected { tried: tried.len() });
        }
    }
}

#[cfg(test)]
mod tests {
    use sluice_shared::model::CircuitBreaker;

    use super::*;

    fn breaker(max_connections: Option<u32>, max_pending: Option<u32>) -> Arc<Breaker> {
        Arc::new(Breaker::new(CircuitBreaker { max_connections, max_pending, max_requests: None }))
    }

    #[tokio::test(start_paused = true)]
    async fn connection_permits_wait_in_a_bounded_queue_for_a_bounded_time() {
        let wait = Duration::from_secs(5);
        let b = breaker(Some(1), Some(1));
        let held = connection_permit(&b, wait).await.unwrap().expect("a free permit");
        // Full: the next client waits; one more finds the queue full at once.
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { connection_permit(&b, wait).await }
        });
        while b.pending() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(connection_permit(&b, wait).await.unwrap_err(), Overflow::Pending);
        // A connection closing hands its permit to the waiter.
        drop(held);
        let _second = waiter.await.unwrap().unwrap().expect("the freed permit");
        assert_eq!(b.pending(), 0);
        // Nothing closes: the wait ends after `wait`, counted as a connections overflow.
        let started = Instant::now();
        assert_eq!(connection_permit(&b, wait).await.unwrap_err(), Overflow::Connections);
        assert_eq!(started.elapsed(), wait);
        assert_eq!((b.overflows(Overflow::Pending), b.overflows(Overflow::Connections)), (1, 1));
        assert_eq!((b.pending(), b.connections_open()), (0, 1));
    }

    #[tokio::test]
    async fn breakers_without_a_connection_limit_hand_out_no_permit() {
        let b = breaker(None, Some(0));
        assert!(connection_permit(&b, Duration::ZERO).await.unwrap().is_none());
        let b = breaker(Some(1), Some(0));
        let _held = connection_permit(&b, Duration::ZERO).await.unwrap().expect("a free permit");
        assert_eq!(connection_permit(&b, Duration::from_secs(1)).await.unwrap_err(), Overflow::Pending);
    }
}
