//! L4 UDP: per-client sessions. The first datagram from a client address picks an endpoint (by
//! the cluster's policy; `ring_hash`/`maglev` on the client IP) and opens a session: its own
//! upstream socket connected to that endpoint, so replies are told apart by socket and go back to
//! the right client from the listener's address.
//!
//! Memory is bounded: at most `max_connections` sessions per listener (default
//! [`DEFAULT_MAX_SESSIONS`]), each a socket and a small task without a buffer of its own (replies
//! are read into a per-thread buffer). A session ends after `idle_timeout_ms` (default
//! [`DEFAULT_IDLE`]) without a datagram either way.
//!
//! A session is an upstream connection for the cluster's circuit breaker too: its
//! `max_connections` bounds the node's sessions and connections to the cluster together (as
//! Envoy's UDP proxy does); a client over it gets no session, at once (a datagram cannot wait),
//! counted in `sluice_cluster_overflow_total`.
//!
//! A session whose endpoint stops being healthy (active health checks, outlier ejection) moves to
//! a healthy one with the client's next datagram, as Envoy's UDP proxy does: UDP has no
//! connection to fail, so nothing else would move a client that keeps sending to a dead endpoint.
//! UDP is lossy: a datagram that cannot be sent at once (full socket buffer, session cap reached,
//! no endpoint) is dropped and counted.

use std::cell::RefCell;
use std::collections::hash_map::{Entry, HashMap};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::l4_stats::{Admitted, L4Stats};
use crate::listeners::Phase;
use crate::state::Shared;
use crate::table::{hash_ip, EndpointGuard, EndpointState, Overflow};

/// Client sessions per listener when it sets no `max_connections`.
pub const DEFAULT_MAX_SESSIONS: u32 = 16_384;
/// Session idle expiry when the listener sets no `idle_timeout_ms`.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(60);
/// How often finished sessions are swept from the table.
const SWEEP: Duration = Duration::from_millis(500);
const MAX_DATAGRAM: usize = 65_536;

thread_local! {
    /// Reply buffer shared by every session running on this thread (used without an await).
    static REPLY_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; MAX_DATAGRAM]);
}

/// Binds `count` UDP sockets to one address with `SO_REUSEPORT` (the kernel keeps a client on one
/// of them); port 0: the first picks, the rest follow.
pub fn bind_reuseport(addr: SocketAddr, count: usize) -> io::Result<Vec<std::net::UdpSocket>> {
    let mut out = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, None)?;
        socket.set_reuse_address(true)?;
        #[cfg(unix)]
        socket.set_reuse_port(true)?;
        socket.bind(&addr.into())?;
        let udp: std::net::UdpSocket = socket.into();
        addr = udp.local_addr()?;
        out.push(udp);
    }
    Ok(out)
}

struct Session {
    upstream: Arc<UdpSocket>,
    endpoint: Arc<EndpointState>,
    last_activity: Arc<AtomicU64>,
    replies: JoinHandle<()>,
    /// One of the cluster's circuit breaker's `max_connections`, when it sets one. Held here
    /// rather than by the reply task so that a session moving to another endpoint keeps it; given
    /// back when the session leaves the table (at most [`SWEEP`] after it ended).
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.replies.abort();
    }
}

/// Serves one listening socket until the listener is aborted, or drained and out of sessions.
pub async fn serve(
    socket: std::net::UdpSocket,
    listener: Arc<str>,
    shared: Arc<Shared>,
    stats: Arc<L4Stats>,
    mut phase: watch::Receiver<Phase>,
) {
    let socket = match socket.set_nonblocking(true).and_then(|_| UdpSocket::from_std(socket)) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            tracing::error!(listener = %listener, error = %e, "cannot register udp socket");
            return;
        }
    };
    let start = Instant::now();
    let mut sessions: HashMap<SocketAddr, Session> = HashMap::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut sweep = tokio::time::interval(SWEEP);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut draining = *phase.borrow() != Phase::Serving;
    loop {
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                let (n, client) = match r {
                    Ok(x) => x,
                    Err(e) => {
                        // ICMP errors from earlier sends surface here on some systems: not fatal.
                        tracing::debug!(error = %e, "udp receive failed");
                        continue;
                    }
                };
                stats.bytes_from_clients.fetch_add(n as u64, Ordering::Relaxed);
                match sessions.get(&client).map(|s| (s.replies.is_finished(), s.endpoint.is_healthy())) {
                    // Its reply task ended (idle, refused): replaced by a fresh one.
                    Some((true, _)) => drop(sessions.remove(&client)),
                    // Its endpoint went unhealthy: it moves, if a healthy endpoint takes it.
                    Some((false, false)) if !draining => {
                        let moved = open(&socket, client, &listener, &shared, &stats, start, Pick::HealthyOnly).await;
                        if let Some(mut s) = moved {
                            tracing::debug!(%client, "udp session moved off an unhealthy endpoint");
                            // Still one session: it keeps its place under the circuit breaker.
                            s.permit = sessions.get_mut(&client).and_then(|old| old.permit.take());
                            sessions.insert(client, s);
                        }
                    }
                    _ => {}
                }
                let session = match sessions.entry(client) {
                    Entry::Occupied(o) => o.into_mut(),
                    Entry::Vacant(v) => {
                        if draining || !crate::listeners::admits(&shared, &listener, client, None) {
                            continue;
                        }
                        match open(&socket, client, &listener, &shared, &stats, start, Pick::Any).await {
                            Some(s) => v.insert(s),
                            None => continue,
                        }
                    }
                };
                session.last_activity.store(elapsed_ms(start), Ordering::Relaxed);
                // Awaiting only waits for a fresh socket's first writable event: a UDP send
                // does not block on a full path (the kernel drops instead).
                if let Err(e) = session.upstream.send(&buf[..n]).await {
                    tracing::debug!(%client, error = %e, "datagram to upstream failed, ending session");
                    sessions.remove(&client);
                }
            }
            _ = sweep.tick() => {
                sessions.retain(|_, s| !s.replies.is_finished());
                if draining && sessions.is_empty() {
                    return;
                }
            }
            changed = phase.changed() => {
                if changed.is_err() || *phase.borrow_and_update() == Phase::Abort {
                    return;
                }
                // Draining: no new sessions; the open ones run until they expire (or the abort).
                draining = true;
            }
        }
    }
}

/// Which endpoints a new session may go to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pick {
    /// Whatever the cluster's pick gives (in panic mode, an unhealthy one too).
    Any,
    /// Healthy ones only: moving a session off an unhealthy endpoint to another is no gain.
    HealthyOnly,
}

/// Opens a session for a client: admission, endpoint choice, upstream socket, reply task.
async fn open(
    socket: &Arc<UdpSocket>,
    client: SocketAddr,
    listener: &str,
    shared: &Shared,
    stats: &Arc<L4Stats>,
    start: Instant,
    pick: Pick,
) -> Option<Session> {
    let (guard, idle, permit, admitted) = {
        let installed = shared.installed.load();
        let table = installed.as_ref()?.table.listener(listener)?;
        let cluster = table.cluster()?;
        // As for tcp: the client IP is the key of ring_hash and maglev, with or without `hash_on`.
        let guard = match (cluster.pick_hashed(hash_ip(client.ip()), &[]), pick) {
            (Some(g), Pick::Any) => g,
            (Some(g), Pick::HealthyOnly) if g.is_healthy() => g,
            // The session stays where it is: nothing to count.
            (_, Pick::HealthyOnly) => return None,
            (None, Pick::Any) => {
                let counter = if cluster.is_full() { &stats.endpoints_full } else { &stats.no_endpoint };
                counter.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        // Picked first, so that a client with no endpoint takes no slot and counts no session. A
        // moving session brings its permit along.
        let permit = match cluster.breaker().filter(|b| b.limits_connections() && pick == Pick::Any) {
            // No waiting, unlike tcp: a datagram cannot be held for a permit.
            Some(breaker) => {
                let Some(permit) = breaker.try_connection() else {
                    breaker.overflowed(Overflow::Connections);
                    tracing::debug!(%client, cluster = cluster.name(), "circuit breaker open, no udp session");
                    return None;
                };
                Some(permit)
            }
            None => None,
        };
        let admitted = stats.admit(table.max_connections().unwrap_or(DEFAULT_MAX_SESSIONS))?;
        (guard, table.idle_timeout().unwrap_or(DEFAULT_IDLE), permit, admitted)
    };
    let endpoint = guard.address();
    let unspecified = match endpoint.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let upstream = match UdpSocket::bind((unspecified, 0)).await {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!(error = %e, "cannot open an upstream udp socket");
            return None;
        }
    };
    if let Err(e) = upstream.connect(endpoint).await {
        tracing::debug!(%endpoint, error = %e, "udp connect failed");
        stats.connect_failed(endpoint);
        return None;
    }
    let upstream = Arc::new(upstream);
    let endpoint_state = guard.endpoint().clone();
    let last_activity = Arc::new(AtomicU64::new(elapsed_ms(start)));
    let replies = tokio::spawn(replies(
        upstream.clone(),
        socket.clone(),
        client,
        stats.clone(),
        Activity { start, last: last_activity.clone(), idle },
        (guard, admitted),
    ));
    tracing::debug!(%client, %endpoint, "udp session opened");
    Some(Session { upstream, endpoint: endpoint_state, last_activity, replies, permit })
}

struct Activity {
    start: Instant,
    last: Arc<AtomicU64>,
    idle: Duration,
}

/// Forwards the endpoint's datagrams to the client until the session idles out or the endpoint
/// refuses (ICMP port unreachable). Holds the endpoint guard and the admission slot.
async fn replies(
    upstream: Arc<UdpSocket>,
    socket: Arc<UdpSocket>,
    client: SocketAddr,
    stats: Arc<L4Stats>,
    activity: Activity,
    _held: (EndpointGuard, Admitted),
) {
    loop {
        let deadline = activity.start + Duration::from_millis(activity.last.load(Ordering::Relaxed)) + activity.idle;
        tokio::select! {
            ready = upstream.readable() => {
                if let Err(e) = ready {
                    tracing::debug!(error = %e, "udp session socket failed");
                    return;
                }
                let mut pending = None;
                let sent = REPLY_BUF.with(|b| {
                    let mut b = b.borrow_mut();
                    let n = match upstream.try_recv(&mut b) {
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
                        Err(e) => return Err(e),
                    };
                    match socket.try_send_to(&b[..n], client) {
                        Ok(_) => {}
                        // Not writable yet: this one reply gets its own copy to wait with.
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => pending = Some(b[..n].to_vec()),
                        Err(e) => tracing::debug!(%client, error = %e, "reply to client dropped"),
                    }
                    Ok(n)
                });
                if let Some(p) = pending {
                    if let Err(e) = socket.send_to(&p, client).await {
                        tracing::debug!(%client, error = %e, "reply to client dropped");
                    }
                }
                match sent {
                    Ok(0) => {}
                    Ok(n) => {
                        stats.bytes_to_clients.fetch_add(n as u64, Ordering::Relaxed);
                        activity.last.store(elapsed_ms(activity.start), Ordering::Relaxed);
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "udp endpoint refused, ending session");
                        if let Ok(peer) = upstream.peer_addr() {
                            stats.connect_failed(peer);
                        }
                        return;
                    }
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                if Instant::now() >= activity.start + Duration::from_millis(activity.last.load(Ordering::Relaxed)) + activity.idle {
                    stats.idle_timeouts.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%client, "udp session idle, closing");
                    return;
                }
            }
        }
    }
}

fn elapsed_ms(start: Instant) -> u64 {
    start.elapsed().as_millis() as u64
}
