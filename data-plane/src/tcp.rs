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
//! - Config changes never touch an open connection: the table is only read to connect, and the
//!   endpoint guard (which `least_request` counts) lives as long as the connection.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::l4_stats::L4Stats;
use crate::listeners::Phase;
use crate::state::Shared;
use crate::table::{hash_ip, ClusterLb, EndpointGuard};

/// Bound on connecting upstream, all endpoint tries together.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on one endpoint's try, so an unreachable one leaves time for the next.
const CONNECT_TRY_TIMEOUT: Duration = Duration::from_secs(2);
/// Open connections per listener when it sets no `max_connections` (file descriptors are finite).
pub const DEFAULT_MAX_CONNECTIONS: u32 = 65_536;
const BUFFER: usize = 32 * 1024;

pub async fn serve(
    client: TcpStream,
    peer: SocketAddr,
    listener: &str,
    shared: &Arc<Shared>,
    stats: &Arc<L4Stats>,
    phase: watch::Receiver<Phase>,
) {
    // The table is read once, to connect; the connection holds only its endpoint guard after that,
    // so later revisions neither cut it nor stay in memory because of it.
    let (upstream, guard, idle, _admitted) = {
        let Some(installed) = shared.installed.load_full() else { return };
        let Some(table) = installed.table.listener(listener) else { return };
        let Some(cluster) = table.cluster() else {
            tracing::debug!("listener has no cluster in the installed table");
            return;
        };
        let Some(admitted) = stats.admit(table.max_connections().unwrap_or(DEFAULT_MAX_CONNECTIONS)) else {
            tracing::debug!("max_connections reached, closing");
            return;
        };
        // The client IP is the only key raw traffic has: ring_hash and maglev use it even without
        // `hash_on` (other policies ignore the key).
        let key = Some(hash_ip(peer.ip()));
        let Some((upstream, guard)) = connect(cluster, key, stats).await else {
            stats.no_endpoint.fetch_add(1, Ordering::Relaxed);
            return;
        };
        (upstream, guard, table.idle_timeout(), admitted)
    };
    let _ = upstream.set_nodelay(true);
    tracing::debug!(endpoint = %guard.address(), "connected upstream");
    splice(client, upstream, idle, stats, phase).await;
    drop(guard);
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
pub async fn splice(
    mut client: TcpStream,
    mut upstream: TcpStream,
    idle: Option<Duration>,
    stats: &L4Stats,
    mut phase: watch::Receiver<Phase>,
) {
    let start = Instant::now();
    let last_activity = AtomicU64::new(0);
    let failed = {
        let (cr, cw) = client.split();
        let (ur, uw) = upstream.split();
        // Without an idle timeout nothing reads the activity clock: skip the clock reads.
        let clock = idle.map(|_| (start, &last_activity));
        let to_upstream = pump(cr, uw, Meter::new(&stats.bytes_from_clients), clock);
        let to_client = pump(ur, cw, Meter::new(&stats.bytes_to_clients), clock);
        // `try_join` stops at the first error: both sockets are then closed below.
        let both = async { tokio::try_join!(to_upstream, to_client) };
        tokio::pin!(both);
        let idle_expired = idle_expiry(idle, start, &last_activity);
        tokio::pin!(idle_expired);
        loop {
            tokio::select! {
                res = &mut both => break res.err(),
                () = &mut idle_expired => {
                    stats.idle_timeouts.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("idle timeout, closing");
                    break None;
                }
                // Draining leaves established connections alone; only abort (or a gone listener) cuts.
                changed = phase.changed() => {
                    if changed.is_err() || *phase.borrow_and_update() == Phase::Abort {
                        break None;
                    }
                }
            }
        }
    };
    if let Some(e) = failed {
        tracing::debug!(error = %e, "tcp proxy ended with an error");
        // A reset on one side becomes a reset on the other, rather than a clean end of stream.
        if e.kind() == io::ErrorKind::ConnectionReset {
            let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
            let _ = socket2::SockRef::from(&upstream).set_linger(Some(Duration::ZERO));
        }
    }
}

/// One direction: read until end of stream, then shut the writer's sending side down (FIN).
async fn pump<R, W>(
    mut from: R,
    mut to: W,
    mut bytes: Meter<'_>,
    clock: Option<(Instant, &AtomicU64)>,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUFFER];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            // The peer may have gone already; its other direction reports that.
            let _ = to.shutdown().await;
            return Ok(());
        }
        to.write_all(&buf[..n]).await?;
        bytes.add(n);
        if let Some((start, activity)) = clock {
            activity.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
    }
}

/// Counts one direction's bytes locally and adds them to the listener's shared counter in
/// batches (and when dropped, however the copy ends): one shared cache line touched per
/// `METER_BATCH` bytes instead of per read.
struct Meter<'a> {
    shared: &'a AtomicU64,
    pending: u64,
}

const METER_BATCH: u64 = 256 * 1024;

impl<'a> Meter<'a> {
    fn new(shared: &'a AtomicU64) -> Meter<'a> {
        Meter { shared, pending: 0 }
    }

    fn add(&mut self, n: usize) {
        self.pending += n as u64;
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

/// Resolves once no byte moved for `idle` (never when `None`).
async fn idle_expiry(idle: Option<Duration>, start: Instant, activity: &AtomicU64) {
    let Some(idle) = idle else { return std::future::pending().await };
    loop {
        let deadline = start + Duration::from_millis(activity.load(Ordering::Relaxed)) + idle;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}
