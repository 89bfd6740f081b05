//! L4 TCP: a tcp listener forwards each connection to an endpoint of its cluster and splices bytes
//! both ways until both sides are done.
//!
//! - Half-close passes through: when one side ends its stream (FIN), the other side's write half
//!   is shut down and the opposite direction keeps flowing until it ends too.
//! - An error on either side (reset, write failure) closes both at once; an upstream reset is
//!   passed on to the client as a reset.
//! - `idle_timeout_ms`: no byte in either direction for that long closes both.
//! - `max_connections`: a connection beyond it is closed at once (counted as rejected).
//! - Endpoint choice: the cluster's policy; `ring_hash`/`maglev` key on the client IP (what
//!   `hash_on: {"source_ip": true}` says; also the default, raw traffic has no other key). A refused or unreachable endpoint is counted and
//!   the next one tried, all within [`CONNECT_TIMEOUT`]; then the client is closed.
//! - `tcp_keepalive`: keepalive probes on the client's and the endpoint's socket, so a peer gone
//!   without a FIN or RST is found; without it (and without `idle_timeout_ms`) such a connection
//!   would be held until the other side writes.
//! - `proxy_protocol`: the endpoint gets a PROXY protocol header with the client's address before
//!   the client's first byte (`proxy_protocol/`).
//! - Config changes never touch an open connection: the table is only read to connect, and the
//!   endpoint guard (which `least_request` counts) lives as long as the connection.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use sluice_shared::model::{ProxyProtocol, TcpKeepalive};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::access_log::L4Entry;
use crate::l4_stats::{Admitted, L4Stats};
use crate::listeners::Phase;
use crate::phase_watch::PhaseWatch;
use crate::proxy_protocol;
use crate::state::Shared;
use crate::table::{hash_ip, ClusterLb, EndpointGuard, ListenerTable};

/// Bound on connecting upstream, all endpoint tries together.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on one endpoint's try, so an unreachable one leaves time for the next.
const CONNECT_TRY_TIMEOUT: Duration = Duration::from_secs(2);
/// Open connections per listener when it sets no `max_connections` (file descriptors are finite).
pub const DEFAULT_MAX_CONNECTIONS: u32 = 65_536;
const BUFFER: usize = 32 * 1024;

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
        let upstream = match admit_and_connect(&client, peer, local, table, cluster, stats, &mut log).await {
            Ok(upstream) => upstream,
            Err(refused) => return log.end(refused.as_str()),
        };
        let tls = installed.tls.upstream(cluster.name()).cloned();
        (upstream, table.idle_timeout(), tls)
    };
    let Upstream { stream, endpoint, slot: _slot } = upstream;
    let spliced = match tls {
        // The cluster speaks TLS: the client's plaintext goes to the endpoint encrypted.
        Some(tls) => match tls.connect(endpoint.address(), stream).await {
            Ok(stream) => splice_tls(client, stream, idle, stats, phase).await,
            Err(e) => {
                tracing::debug!(endpoint = %endpoint.address(), error = %e, "upstream TLS handshake failed");
                stats.connect_failed(endpoint.address());
                return log.end("upstream_tls_failed");
            }
        },
        None => splice(client, stream, idle, stats, phase).await,
    };
    spliced.log_to(&mut log);
}

/// An admitted client's connection to an endpoint; dropping it releases the endpoint (which
/// `least_request` counts) and the listener's connection slot.
pub struct Upstream {
    pub stream: TcpStream,
    pub endpoint: EndpointGuard,
    pub slot: Admitted,
}

/// Why [`admit_and_connect`] gave up on a client (already counted in the listener's stats).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `max_connections` reached.
    Limit,
    /// No endpoint could be connected within [`CONNECT_TIMEOUT`].
    NoEndpoint,
    /// The endpoint did not take the PROXY protocol header.
    ProxyHeader,
}

impl Refused {
    /// What the access log says.
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Limit => "max_connections",
            Refused::NoEndpoint => "no_endpoint",
            Refused::ProxyHeader => "proxy_header_failed",
        }
    }
}

/// Admits a client under the listener's `max_connections` and connects it to an endpoint of
/// `cluster`, then sends the listener's PROXY protocol header (if any) there.
pub async fn admit_and_connect(
    client: &TcpStream,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    table: &ListenerTable,
    cluster: &ClusterLb,
    stats: &Arc<L4Stats>,
    log: &mut L4Entry<'_>,
) -> Result<Upstream, Refused> {
    let Some(slot) = stats.admit(table.max_connections().unwrap_or(DEFAULT_MAX_CONNECTIONS)) else {
        tracing::debug!("max_connections reached, closing");
        return Err(Refused::Limit);
    };
    // The client IP is the only key raw traffic has: ring_hash and maglev use it even without
    // `hash_on` (other policies ignore the key).
    let Some((stream, endpoint)) = connect(cluster, Some(hash_ip(peer.ip())), stats).await else {
        stats.no_endpoint.fetch_add(1, Ordering::Relaxed);
        return Err(Refused::NoEndpoint);
    };
    let _ = stream.set_nodelay(true);
    if let Some(k) = table.tcp_keepalive() {
        for socket in [client, &stream] {
            set_keepalive(socket, k);
        }
    }
    tracing::debug!(endpoint = %endpoint.address(), "connected upstream");
    log.upstream(cluster.name(), endpoint.address());
    let mut upstream = Upstream { stream, endpoint, slot };
    if let Some(version) = table.proxy_protocol() {
        let local = local.map_or_else(|| client.local_addr(), Ok);
        send_proxy_header(&mut upstream, version, peer, local, stats).await.ok_or(Refused::ProxyHeader)?;
    }
    Ok(upstream)
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
async fn send_proxy_header(
    upstream: &mut Upstream,
    version: ProxyProtocol,
    peer: SocketAddr,
    local: io::Result<SocketAddr>,
    stats: &L4Stats,
) -> Option<()> {
    let sent = async { upstream.stream.write_all(&proxy_protocol::header(version, peer, local?)).await };
    let why = match tokio::time::timeout(CONNECT_TRY_TIMEOUT, sent).await {
        Ok(Ok(())) => return Some(()),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "timed out".to_string(),
    };
    tracing::debug!(endpoint = %upstream.endpoint.address(), error = why, "sending the PROXY header failed");
    stats.connect_failed(upstream.endpoint.address());
    None
}

/// Connects to an endpoint of `cluster` (by `key` for the hashing policies), trying the next one
/// on failure; `None` when every endpoint failed or [`CONNECT_TIMEOUT`] passed.
pub async fn connect(cluster: &ClusterLb, key: Option<u64>, stats: &L4Stats) -> Option<(TcpStream, EndpointGuard)> {
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    let mut tried: Vec<SocketAddr> = Vec::new();
    loop {
        // Every endpoint gets one try at most.
        let picked = match key {
            Some(k) => cluster.pick_hashed(k, &tried),
            None => cluster.pick_excluding(&tried),
        };
        let Some(endpoint) = picked else {
            tracing::debug!(cluster = cluster.name(), tried = tried.len(), "no endpoint to connect to");
            return None;
        };
        let addr = endpoint.address();
        let budget = deadline.saturating_duration_since(Instant::now()).min(CONNECT_TRY_TIMEOUT);
        match tokio::time::timeout(budget, TcpStream::connect(addr)).await {
            Ok(Ok(upstream)) => {
                cluster.record_outcome(&endpoint, false);
                return Some((upstream, endpoint));
            }
            Ok(Err(e)) => tracing::debug!(%addr, error = %e, "upstream connect failed"),
            Err(_) => tracing::debug!(%addr, "upstream connect timed out"),
        }
        // Passive outlier detection counts connect failures (L4 sees no status codes).
        cluster.record_outcome(&endpoint, true);
        stats.connect_failed(addr);
        if Instant::now() >= deadline {
            return None;
        }
        tried.push(addr);
    }
}

/// Copies both ways until both directions ended, either side failed, the connection was idle for
/// `idle`, or the listener's drain ran out (`Phase::Abort`).
///
/// One hand-written poll loop instead of `select!` over `try_join!` of two copy futures: a wake-up
/// costs one read (and one write) per direction with data and nothing else; the phase's change
/// stream is only polled when its own waker fired (one atomic swap otherwise, see [`PhaseWatch`])
/// and the idle timeout is one timer per connection, re-armed only when it fires before the real
/// deadline.
pub async fn splice(
    mut client: TcpStream,
    mut upstream: TcpStream,
    idle: Option<Duration>,
    stats: &L4Stats,
    phase: watch::Receiver<Phase>,
) -> Spliced {
    let spliced = {
        let (cr, cw) = client.split();
        let (ur, uw) = upstream.split();
        copy_both_ways((cr, cw), (ur, uw), idle, stats, phase).await
    };
    if let End::Failed(e) = &spliced.end {
        tracing::debug!(error = %e, "tcp proxy ended with an error");
        pass_reset_on(e, &[&client, &upstream]);
    }
    spliced
}

/// [`splice`] to an endpoint reached over TLS (a tcp listener whose cluster has `tls`).
async fn splice_tls(
    mut client: TcpStream,
    upstream: tokio_rustls::client::TlsStream<TcpStream>,
    idle: Option<Duration>,
    stats: &L4Stats,
    phase: watch::Receiver<Phase>,
) -> Spliced {
    let (ur, uw) = tokio::io::split(upstream);
    let spliced = {
        let (cr, cw) = client.split();
        copy_both_ways((cr, cw), (ur, uw), idle, stats, phase).await
    };
    if let End::Failed(e) = &spliced.end {
        tracing::debug!(error = %e, "tcp proxy (upstream TLS) ended with an error");
        pass_reset_on(e, &[&client]);
    }
    spliced
}

/// How a splice ended, and the bytes it moved.
pub struct Spliced {
    pub end: End,
    /// From the client to the endpoint.
    pub received: u64,
    /// From the endpoint to the client.
    pub sent: u64,
}

pub enum End {
    /// Both directions ended (FIN each way).
    Closed,
    IdleTimeout,
    /// The listener's drain ran out, or the listener is gone.
    Aborted,
    /// A read or write failed (a reset, most often): both sides were closed.
    Failed(io::Error),
}

impl Spliced {
    pub fn log_to(&self, log: &mut L4Entry<'_>) {
        log.bytes(self.received, self.sent);
        log.end(match &self.end {
            End::Closed => "closed",
            End::IdleTimeout => "idle_timeout",
            End::Aborted => "drain_aborted",
            End::Failed(e) if e.kind() == io::ErrorKind::ConnectionReset => "reset",
            End::Failed(_) => "error",
        });
    }
}

/// A reset on one side becomes a reset on the other, rather than a clean end of stream: the
/// `sockets` close with RST.
fn pass_reset_on(e: &io::Error, sockets: &[&TcpStream]) {
    if e.kind() == io::ErrorKind::ConnectionReset {
        for s in sockets {
            let _ = socket2::SockRef::from(*s).set_linger(Some(Duration::ZERO));
        }
    }
}

/// The loop of [`splice`] over any two (read, write) halves.
async fn copy_both_ways<CR, CW, UR, UW>(
    (mut cr, mut cw): (CR, CW),
    (mut ur, mut uw): (UR, UW),
    idle: Option<Duration>,
    stats: &L4Stats,
    phase: watch::Receiver<Phase>,
) -> Spliced
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    UR: AsyncRead + Unpin,
    UW: AsyncWrite + Unpin,
{
    let mut to_upstream = Pump::new(&stats.bytes_from_clients);
    let mut to_client = Pump::new(&stats.bytes_to_clients);
    // Draining leaves established connections alone; only abort (or a gone listener) cuts.
    let mut phase = PhaseWatch::new(phase);
    // Idle: the time of the last byte moved, read against one timer.
    let mut last_activity = idle.map(|_| Instant::now());
    let mut idle_timer = idle.map(|d| (d, Box::pin(tokio::time::sleep(d))));
    let end = std::future::poll_fn(|cx| {
        if phase.poll(cx) == Phase::Abort {
            return Poll::Ready(End::Aborted);
        }
        // The first error ends both directions: both sockets are then closed by the caller.
        if let Poll::Ready(Err(e)) = to_upstream.poll_copy(cx, &mut cr, &mut uw, &mut last_activity) {
            return Poll::Ready(End::Failed(e));
        }
        if let Poll::Ready(Err(e)) = to_client.poll_copy(cx, &mut ur, &mut cw, &mut last_activity) {
            return Poll::Ready(End::Failed(e));
        }
        if to_upstream.done && to_client.done {
            return Poll::Ready(End::Closed);
        }
        if let (Some((idle, timer)), Some(last)) = (&mut idle_timer, last_activity) {
            while timer.as_mut().poll(cx).is_ready() {
                let deadline = last + *idle;
                if Instant::now() >= deadline {
                    stats.idle_timeouts.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("idle timeout, closing");
                    return Poll::Ready(End::IdleTimeout);
                }
                timer.as_mut().reset(deadline);
            }
        }
        Poll::Pending
    })
    .await;
    Spliced { end, received: to_upstream.bytes.total, sent: to_client.bytes.total }
}

/// One direction: read until end of stream, then shut the writer's sending side down (FIN).
struct Pump<'a> {
    buf: Box<[u8]>,
    /// `buf[pos..len]` is read and not written yet.
    pos: usize,
    len: usize,
    eof: bool,
    done: bool,
    /// Written since the last flush.
    unflushed: bool,
    bytes: Meter<'a>,
}

impl<'a> Pump<'a> {
    fn new(bytes: &'a AtomicU64) -> Pump<'a> {
        Pump {
            buf: vec![0u8; BUFFER].into_boxed_slice(),
            pos: 0,
            len: 0,
            eof: false,
            done: false,
            unflushed: false,
            bytes: Meter::new(bytes),
        }
    }

    /// Moves bytes until `from` has none (`Pending`), this direction is done (`Ready(Ok)`, also
    /// when it was done before) or failed. `activity` (when kept) gets the time of each write.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut R,
        to: &mut W,
        activity: &mut Option<Instant>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            while self.pos < self.len {
                let n = ready!(Pin::new(&mut *to).poll_write(cx, &self.buf[self.pos..self.len]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                self.unflushed = true;
            }
            if self.len > 0 {
                self.bytes.add(self.len);
                (self.pos, self.len) = (0, 0);
                if let Some(at) = activity {
                    *at = Instant::now();
                }
            }
            if self.eof {
                // The peer may have gone already; its other direction reports that.
                let _ = ready!(Pin::new(&mut *to).poll_shutdown(cx));
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            let mut read = ReadBuf::new(&mut self.buf);
            if Pin::new(&mut *from).poll_read(cx, &mut read)?.is_pending() {
                // Nothing more to read for now: a TLS writer may still hold what was written
                // (a no-op on a plain socket).
                if self.unflushed && Pin::new(&mut *to).poll_flush(cx)?.is_ready() {
                    self.unflushed = false;
                }
                return Poll::Pending;
            }
            match read.filled().len() {
                0 => self.eof = true,
                n => self.len = n,
            }
        }
    }
}

/// Counts one direction's bytes locally and adds them to the listener's shared counter in
/// batches (and when dropped, however the copy ends): one shared cache line touched per
/// `METER_BATCH` bytes instead of per read.
struct Meter<'a> {
    shared: &'a AtomicU64,
    pending: u64,
    /// All this connection's bytes in this direction.
    total: u64,
}

const METER_BATCH: u64 = 256 * 1024;

impl<'a> Meter<'a> {
    fn new(shared: &'a AtomicU64) -> Meter<'a> {
        Meter { shared, pending: 0, total: 0 }
    }

    fn add(&mut self, n: usize) {
        self.pending += n as u64;
        self.total += n as u64;
        if self.pending >= METER_BATCH {
            self.shared.fetch_add(std::mem::take(&mut self.pending), Ordering::Relaxed);
        }
    }
}

impl Drop for Meter<'_> {
    fn drop(&mut self) {
        if self.pending > 0 {
            self.shared.fetch_add(self.pending, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The phase future's wake-ups must never be swallowed: here its first poll finds the task's
    /// budget spent (tokio then wakes the task instead of registering with the channel), so only
    /// polling it again on that wake-up registers it. A loop that skipped it then (no new phase
    /// version, same task waker) never heard of the `Abort` sent while it waited.
    #[tokio::test]
    async fn abort_reaches_a_splice_whose_phase_wakeup_was_a_yield() {
        let (client, _client_peer) = tokio::io::duplex(64);
        let (upstream, _upstream_peer) = tokio::io::duplex(64);
        let (tx, rx) = watch::channel(Phase::Serving);
        let stats = L4Stats::default();
        let splice = copy_both_ways(tokio::io::split(client), tokio::io::split(upstream), None, &stats, rx);
        tokio::pin!(splice);
        std::future::poll_fn(|cx| {
            while let Poll::Ready(p) = tokio::task::coop::poll_proceed(cx) {
                p.made_progress();
            }
            assert!(splice.as_mut().poll(cx).is_pending());
            Poll::Ready(())
        })
        .await;
        // Polled again on that wake-up, with a fresh budget: no byte to move, no new phase.
        tokio::task::yield_now().await;
        std::future::poll_fn(|cx| {
            assert!(splice.as_mut().poll(cx).is_pending());
            Poll::Ready(())
        })
        .await;
        // The listener drains and runs out while this task waits on the splice alone.
        tokio::spawn(async move {
            tx.send(Phase::Draining).unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            tx.send(Phase::Abort).unwrap();
            std::future::pending::<()>().await;
        });
        let ended = tokio::select! {
            biased;
            _ = tokio::time::sleep(Duration::from_secs(2)) => false,
            _ = splice.as_mut() => true,
        };
        assert!(ended, "Abort did not end the splice");
    }
}
