//! The node's listening sockets: bound before a table that needs them is swapped in, started after,
//! and stopped (no more accepts, open connections drained for a bounded time) when a table drops them.
//!
//! Each listener binds one `SO_REUSEPORT` socket per worker thread so the kernel spreads accepts over
//! them; that also lets a changed listener bind its address again while the old sockets still run.
//! The kernel's spread ignores load, so a worker may hand an accepted connection to a less loaded
//! one (`spread.rs`).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sluice_shared::cidr::Cidr;
use sluice_shared::model::Protocol;
use socket2::{Domain, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::access_log::L4Entry;
use crate::l4_stats::L4Stats;
use crate::metrics::{ActiveConnection, ConnectionCounts};
use crate::proxy_protocol;
use crate::spread::{Handed, Spread};
use crate::state::{ConnCtx, Shared};
use crate::table::Table;
use crate::upgrade::{Inherited, SocketKind};
use crate::workers::Workers;

/// How long a stopped listener's open connections may take to finish before they are cut.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
const BACKLOG: i32 = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Serving,
    /// No new connections; finish the requests in flight.
    Draining,
    /// Drop every connection now.
    Abort,
}

/// What a listener is, as far as its sockets go: a change of either means new sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerSpec {
    pub address: SocketAddr,
    pub protocol: Protocol,
}

/// Sockets bound for a listener that is not running yet.
pub struct Bound {
    name: String,
    spec: ListenerSpec,
    sockets: Sockets,
}

enum Sockets {
    Stream(Vec<std::net::TcpListener>),
    /// udp listeners (see `udp.rs`).
    Datagram(Vec<std::net::UdpSocket>),
}

#[derive(Debug, thiserror::Error)]
#[error("listener {listener}: cannot bind {address}: {source}")]
pub struct BindError {
    pub listener: String,
    pub address: SocketAddr,
    pub source: io::Error,
}

struct Running {
    spec: ListenerSpec,
    phase: watch::Sender<Phase>,
    accept_tasks: Vec<JoinHandle<()>>,
    connections: TaskTracker,
    /// The listener's `drain_ms`, else `DRAIN_TIMEOUT`; refreshed on every install.
    drain: Duration,
    /// Where the drain state is reported.
    stats: Arc<L4Stats>,
    /// Duplicates of the listening sockets, for a new process taking over (see `upgrade.rs`).
    fds: Vec<OwnedFd>,
}

/// The listeners a node runs. Only the installer touches it (off the request path).
pub struct Listeners {
    running: HashMap<String, Running>,
    sockets_per_listener: usize,
    /// The threads the accept loops and their connections run on (see `workers.rs`).
    workers: Workers,
    /// Sockets a replaced process handed over, used before binding new ones.
    inherited: Inherited,
}

/// Which listeners a new table adds (or changes) and which it drops.
#[derive(Debug, Default)]
pub struct Plan {
    pub add: Vec<(String, ListenerSpec)>,
    pub remove: Vec<String>,
}

impl Listeners {
    pub fn new() -> Listeners {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        Listeners {
            running: HashMap::new(),
            sockets_per_listener: threads.clamp(1, 16),
            workers: Workers::new(threads.clamp(1, 16)),
            inherited: Inherited::default(),
        }
    }

    /// Sockets from the process this one replaces: listeners at their addresses serve on them
    /// (connections queued there are not lost), binding more only if there are fewer than usual.
    pub fn inherit(&mut self, inherited: Inherited) {
        self.inherited = inherited;
    }

    /// Closes inherited sockets no listener took (the config no longer has them).
    pub fn forget_inherited(&mut self) {
        if !self.inherited.is_empty() {
            tracing::info!(sockets = self.inherited.len(), "closing inherited sockets no listener uses");
            self.inherited = Inherited::default();
        }
    }

    /// Duplicates of every running listener's sockets, for a process taking over.
    pub fn sockets(&self) -> Vec<(SocketAddr, SocketKind, Vec<OwnedFd>)> {
        let mut out = Vec::with_capacity(self.running.len());
        for r in self.running.values() {
            let kind = if r.spec.protocol == Protocol::Udp { SocketKind::Datagram } else { SocketKind::Stream };
            let fds = r.fds.iter().filter_map(|f| f.try_clone().ok()).collect();
            out.push((r.spec.address, kind, fds));
        }
        out
    }

    pub fn plan(&self, table: &Table) -> Plan {
        let mut plan = Plan::default();
        for (name, l) in table.listeners() {
            let spec = ListenerSpec { address: l.address(), protocol: l.protocol() };
            match self.running.get(name) {
                Some(r) if r.spec == spec => {}
                Some(_) => {
                    plan.remove.push(name.to_string());
                    plan.add.push((name.to_string(), spec));
                }
                None => plan.add.push((name.to_string(), spec)),
            }
        }
        plan.remove.extend(self.running.keys().filter(|n| table.listener(n).is_none()).cloned());
        plan
    }

    /// Binds every listener the plan adds: the sockets of those that could be bound, and why each
    /// other one could not (its port taken on this node, say).
    pub fn bind(&mut self, plan: &Plan) -> (Vec<Bound>, Vec<BindError>) {
        let mut bound = Vec::with_capacity(plan.add.len());
        let mut failed = Vec::new();
        let count = self.sockets_per_listener;
        for (name, spec) in &plan.add {
            let (addr, inherited) = (spec.address, &mut self.inherited);
            let sockets = match spec.protocol {
                Protocol::Udp => topped_up(inherited, addr, SocketKind::Datagram, count, crate::udp::bind_reuseport)
                    .map(Sockets::Datagram),
                _ => topped_up(inherited, addr, SocketKind::Stream, count, bind_reuseport).map(Sockets::Stream),
            };
            match sockets {
                Ok(sockets) => bound.push(Bound { name: name.clone(), spec: *spec, sockets }),
                Err(source) => failed.push(BindError { listener: name.clone(), address: spec.address, source }),
            }
        }
        (bound, failed)
    }

    /// Whether `bound` is what `plan` adds for its listener (a replanned install keeps only those).
    pub fn still_planned(plan: &Plan, bound: &Bound) -> bool {
        plan.add.iter().any(|(name, spec)| *name == bound.name && *spec == bound.spec)
    }

    /// Starts accepting on freshly bound sockets (after the table that needs them is installed).
    pub fn start(&mut self, bound: Vec<Bound>, shared: &Arc<Shared>) {
        let installed = shared.installed.load_full();
        let drain_of = |name: &str| {
            installed.as_ref().and_then(|i| i.table.listener(name)).and_then(|l| l.drain()).unwrap_or(DRAIN_TIMEOUT)
        };
        for (name, r) in self.running.iter_mut() {
            r.drain = drain_of(name);
        }
        for b in bound {
            let (phase, _) = watch::channel(Phase::Serving);
            let connections = TaskTracker::new();
            let name: Arc<str> = Arc::from(b.name.as_str());
            let stats = shared.metrics.l4.listener(&name);
            let mut fds = Vec::new();
            let sockets = match b.sockets {
                Sockets::Stream(sockets) => {
                    fds.extend(sockets.iter().filter_map(|s| s.try_clone().ok()).map(OwnedFd::from));
                    sockets
                }
                Sockets::Datagram(sockets) => {
                    fds.extend(sockets.iter().filter_map(|s| s.try_clone().ok()).map(OwnedFd::from));
                    for socket in sockets {
                        let serve =
                            crate::udp::serve(socket, name.clone(), shared.clone(), stats.clone(), phase.subscribe());
                        connections.spawn(serve.instrument(tracing::debug_span!("udp", listener = %name)));
                    }
                    Vec::new()
                }
            };
            let mut accept_tasks = Vec::with_capacity(2 * sockets.len());
            let (spread, handoffs) = Spread::new(sockets.len());
            for (i, (socket, handoff)) in sockets.into_iter().zip(handoffs).enumerate() {
                if let Err(e) = socket.set_nonblocking(true) {
                    tracing::error!(listener = %name, error = %e, "cannot register listening socket");
                    continue;
                }
                let acceptor = Acceptor {
                    name: name.clone(),
                    protocol: b.spec.protocol,
                    shared: shared.clone(),
                    phase: phase.subscribe(),
                    connections: connections.clone(),
                    l4: stats.clone(),
                    counts: shared.metrics.connections(&name),
                    worker: i,
                    spread: spread.clone(),
                };
                accept_tasks.push(self.workers.spawn(i, acceptor.clone().adopt(handoff)));
                // One socket per worker; it registers with that worker's reactor, so converts there.
                accept_tasks.push(self.workers.spawn(i, async move {
                    match TcpListener::from_std(socket) {
                        Ok(listener) => acceptor.run(listener).await,
                        Err(e) => {
                            tracing::error!(listener = %acceptor.name, error = %e, "cannot register listening socket")
                        }
                    }
                }));
            }
            tracing::info!(listener = %name, address = %b.spec.address, protocol = ?b.spec.protocol, "listening");
            // Replacing a listener of the same name: the old one drains on its own.
            let drain_for = drain_of(&b.name);
            let running = Running { spec: b.spec, phase, accept_tasks, connections, drain: drain_for, stats, fds };
            if let Some(old) = self.running.insert(b.name, running) {
                let grace = old.drain;
                drain(old, grace);
            }
        }
    }

    /// Stops listeners: accepts end now, connections drain for at most their `drain_ms`
    /// (`DRAIN_TIMEOUT` by default).
    pub fn stop(&mut self, names: &[String]) {
        for name in names {
            if let Some(r) = self.running.remove(name) {
                tracing::info!(listener = %name, address = %r.spec.address, "listener removed, draining");
                let grace = r.drain;
                drain(r, grace);
            }
        }
    }

    /// Stops everything, waiting up to `grace` for open connections (`None`: each listener's
    /// own drain time).
    pub async fn shutdown(&mut self, grace: Option<Duration>) {
        let waits: Vec<_> = self
            .running
            .drain()
            .map(|(_, r)| {
                let grace = grace.unwrap_or(r.drain);
                drain(r, grace)
            })
            .collect();
        for w in waits {
            let _ = w.await;
        }
    }
}

fn drain(r: Running, grace: Duration) -> JoinHandle<()> {
    let _ = r.phase.send(Phase::Draining);
    for t in &r.accept_tasks {
        // The accept loop exits on the phase change; aborting also closes the socket at once.
        t.abort();
    }
    r.connections.close();
    r.stats.draining.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    r.stats.drain_ms.store(grace.as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
    tokio::spawn(async move {
        if tokio::time::timeout(grace, r.connections.wait()).await.is_err() {
            tracing::info!(address = %r.spec.address, "drain timeout, closing remaining connections");
            let _ = r.phase.send(Phase::Abort);
            r.connections.wait().await;
        }
        r.stats.draining.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    })
}

/// The sockets inherited for `addr`, plus as many freshly bound ones as it takes to make `count`.
fn topped_up<S: From<OwnedFd>>(
    inherited: &mut Inherited,
    addr: SocketAddr,
    kind: SocketKind,
    count: usize,
    bind: fn(SocketAddr, usize) -> io::Result<Vec<S>>,
) -> io::Result<Vec<S>> {
    let mut have: Vec<S> = inherited.take(addr, kind).into_iter().map(S::from).collect();
    have.extend(bind(addr, count.saturating_sub(have.len()))?);
    Ok(have)
}

/// Binds `count` sockets to one address with `SO_REUSEPORT` (port 0: the first picks, the rest follow).
fn bind_reuseport(addr: SocketAddr, count: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let mut out = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        #[cfg(unix)]
        socket.set_reuse_port(true)?;
        socket.set_tcp_nodelay(true)?;
        socket.bind(&addr.into())?;
        socket.listen(BACKLOG)?;
        let listener: std::net::TcpListener = socket.into();
        addr = listener.local_addr()?;
        out.push(listener);
    }
    Ok(out)
}

#[derive(Clone)]
struct Acceptor {
    name: Arc<str>,
    protocol: Protocol,
    shared: Arc<Shared>,
    phase: watch::Receiver<Phase>,
    connections: TaskTracker,
    l4: Arc<L4Stats>,
    /// Accepted and open connections (`/metrics`).
    counts: Arc<ConnectionCounts>,
    /// The worker thread this acceptor runs on.
    worker: usize,
    spread: Arc<Spread>,
}

impl Acceptor {
    async fn run(mut self, listener: TcpListener) {
        loop {
            let (stream, peer) = tokio::select! {
                _ = self.phase.changed() => return,
                r = listener.accept() => match r {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(listener = %self.name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let to = self.spread.choose(self.worker);
            if to != self.worker {
                // The socket moves to the other worker's reactor; on any failure it stays here.
                let handed = match stream.into_std() {
                    Ok(s) => {
                        self.spread.hand(to, Handed { stream: s, peer }).map_err(|h| TcpStream::from_std(h.stream))
                    }
                    Err(e) => Err(Err(e)),
                };
                match handed {
                    Ok(()) => continue,
                    Err(Ok(stream)) => self.serve(stream, peer),
                    Err(Err(e)) => tracing::debug!(listener = %self.name, error = %e, "hand-off failed"),
                }
                continue;
            }
            self.serve(stream, peer);
        }
    }

    /// Serves the connections other workers hand to this one, until the listener stops.
    async fn adopt(mut self, mut handoff: mpsc::UnboundedReceiver<Handed>) {
        loop {
            let handed = tokio::select! {
                _ = self.phase.changed() => return,
                h = handoff.recv() => match h {
                    Some(h) => h,
                    None => return,
                },
            };
            match TcpStream::from_std(handed.stream) {
                Ok(stream) => self.serve(stream, handed.peer),
                Err(e) => tracing::debug!(listener = %self.name, error = %e, "cannot adopt a connection"),
            }
        }
    }

    /// Serves one accepted connection on this worker. Each protocol spawns its own future, so a
    /// connection's task is the size its protocol needs.
    fn serve(&self, mut stream: TcpStream, peer: SocketAddr) {
        if matches!(self.protocol, Protocol::Http | Protocol::Https) && !self.admit_http() {
            // Over a cap: closed at once, so that the process keeps descriptors for the rest.
            self.counts.refused.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let _ = stream.set_nodelay(true);
        let active = (ActiveConnection::new(&self.counts), self.spread.opened(self.worker));
        let span = tracing::debug_span!("conn", listener = %self.name, %peer, client = tracing::field::Empty);
        let phase = self.phase.clone();
        let origin = self.accepts_proxy_protocol().map(|from| ProxyAccept { from, counts: self.counts.clone() });
        match self.protocol {
            Protocol::Tcp => {
                let (shared, name, l4) = (self.shared.clone(), self.name.clone(), self.l4.clone());
                let counts = self.counts.clone();
                self.connections.spawn(
                    async move {
                        let Some((peer, local)) = take_l4_origin(origin, &mut stream, peer, &name).await else {
                            return;
                        };
                        if !admits(&shared, &name, peer, Some(&counts)) {
                            return L4Entry::start(&name, peer).end("client_denied");
                        }
                        crate::tcp::serve(stream, peer, local, &name, &shared, &l4, phase).await;
                        drop(active);
                    }
                    .instrument(span),
                );
            }
            Protocol::Tls => {
                let (shared, name, l4) = (self.shared.clone(), self.name.clone(), self.l4.clone());
                let counts = self.counts.clone();
                self.connections.spawn(
                    async move {
                        let Some((peer, local)) = take_l4_origin(origin, &mut stream, peer, &name).await else {
                            return;
                        };
                        if !admits(&shared, &name, peer, Some(&counts)) {
                            return L4Entry::start(&name, peer).end("client_denied");
                        }
                        crate::tls::passthrough::serve(stream, peer, local, &name, &shared, &l4, phase).await;
                        drop(active);
                    }
                    .instrument(span),
                );
            }
            Protocol::Https | Protocol::Http | Protocol::Udp => {
                let (shared, listener, https) =
                    (self.shared.clone(), self.name.clone(), self.protocol == Protocol::Https);
                let open = HttpOpen::new();
                let counts = self.counts.clone();
                self.connections.spawn(
                    async move {
                        let _open = open;
                        // Refused: counted in /metrics (the HTTP access log has a line per request).
                        let Ok((peer, _)) = take_origin(origin, &mut stream, peer).await else { return };
                        if !admits(&shared, &listener, peer, Some(&counts)) {
                            return;
                        }
                        // What the connection's requests share.
                        let scheme = if https { "https" } else { "http" };
                        let conn = Arc::new(ConnCtx { listener, peer, scheme, shared });
                        if https {
                            crate::tls::terminate::serve(stream, conn, phase).await;
                        } else {
                            crate::http::downstream::h1::serve_plain(stream, conn, phase).await;
                        }
                        drop(active);
                    }
                    .instrument(span),
                );
            }
        }
    }

    /// Whether an http/https connection fits under this listener's `max_connections` (default:
    /// none) and the process's cap on client connections (see [`http_connection_cap`]).
    fn admit_http(&self) -> bool {
        let installed = self.shared.installed.load();
        let limit = installed.as_ref().and_then(|i| i.table.listener(&self.name)).and_then(|l| l.max_connections());
        let active = self.counts.active.load(Ordering::Relaxed);
        limit.is_none_or(|max| active < i64::from(max))
            && HTTP_OPEN.load(Ordering::Relaxed) < HTTP_CAP.load(Ordering::Relaxed)
    }

    /// Whether this listener's connections start with a PROXY protocol header (and from which
    /// senders), as of the table installed now: a change applies to the connections accepted after it.
    fn accepts_proxy_protocol(&self) -> Option<Arc<[Cidr]>> {
        let installed = self.shared.installed.load();
        installed.as_ref()?.table.listener(&self.name)?.accept_proxy_protocol().cloned()
    }
}

/// Client connections of every http/https listener of the process, and the most there may be.
static HTTP_OPEN: AtomicI64 = AtomicI64::new(0);
static HTTP_CAP: AtomicI64 = AtomicI64::new(i64::MAX);

/// One open http/https client connection, counted in [`HTTP_OPEN`] while it lives.
struct HttpOpen;

impl HttpOpen {
    fn new() -> HttpOpen {
        HTTP_OPEN.fetch_add(1, Ordering::Relaxed);
        HttpOpen
    }
}

impl Drop for HttpOpen {
    fn drop(&mut self) {
        HTTP_OPEN.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Whether the process's http/https client connections are past three quarters of their cap:
/// then idle keep-alive connections get a short idle timeout, so that they make room first.
pub fn under_pressure() -> bool {
    let cap = HTTP_CAP.load(Ordering::Relaxed);
    HTTP_OPEN.load(Ordering::Relaxed) >= cap - cap / 4
}

/// How long an idle client connection may stay: `normal`, or a second once the process nears its
/// cap on client connections (idle keep-alive and HTTP/2 connections make room first).
pub fn idle_allowance(normal: Duration) -> Duration {
    if under_pressure() {
        normal.min(IDLE_UNDER_PRESSURE)
    } else {
        normal
    }
}

const IDLE_UNDER_PRESSURE: Duration = Duration::from_secs(1);

/// Raises the open-files soft limit to the hard one and caps the process's http/https client
/// connections at half of what is then left after a reserve (each may hold an endpoint
/// connection too), so that a flood of idle clients leaves descriptors for the endpoints, the
/// admin server and the control plane's REST API in the same process; `SLUICE_MAX_CLIENT_CONNECTIONS`
/// sets the cap instead. Returns the cap.
pub fn set_http_connection_cap() -> u64 {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open-files limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    };
    let set = std::env::var("SLUICE_MAX_CLIENT_CONNECTIONS").ok().and_then(|v| v.trim().parse::<u64>().ok());
    let cap = set.filter(|&n| n > 0).unwrap_or_else(|| http_connection_cap(limit));
    HTTP_CAP.store(i64::try_from(cap).unwrap_or(i64::MAX), Ordering::Relaxed);
    tracing::info!(open_files = limit, http_client_connections = cap, "connection limits");
    cap
}

/// Half of `open_files` after a reserve of 512 (at least 64).
pub fn http_connection_cap(open_files: u64) -> u64 {
    (open_files.saturating_sub(512) / 2).max(64)
}

/// [`take_origin`] on a tcp or tls listener, where a connection refused over its header also gets
/// its access-log line.
async fn take_l4_origin(
    origin: Option<ProxyAccept>,
    stream: &mut TcpStream,
    peer: SocketAddr,
    listener: &str,
) -> Option<(SocketAddr, Option<SocketAddr>)> {
    take_origin(origin, stream, peer).await.map_err(|why| L4Entry::start(listener, peer).end(why)).ok()
}

/// Whether the listener's `allow_from` / `deny_from` let `client` in (udp: open a session), as of
/// the table installed now; a refused client is counted in `counts` (else the listener's, looked
/// up only then).
pub fn admits(shared: &Shared, listener: &str, client: SocketAddr, counts: Option<&ConnectionCounts>) -> bool {
    let installed = shared.installed.load();
    let admitted = installed.as_ref().and_then(|i| i.table.listener(listener)).is_none_or(|l| l.admits(client.ip()));
    if !admitted {
        tracing::debug!(%client, "client refused by the listener's allow_from / deny_from");
        match counts {
            Some(c) => c.denied.fetch_add(1, Ordering::Relaxed),
            None => shared.metrics.connections(listener).denied.fetch_add(1, Ordering::Relaxed),
        };
    }
    admitted
}

/// A listener behind another balancer: who may send the PROXY header, and where a connection
/// closed for it is counted.
struct ProxyAccept {
    /// Empty: any source.
    from: Arc<[Cidr]>,
    counts: Arc<ConnectionCounts>,
}

/// The client and, when a header said so, the address it connected to: from the connection's
/// PROXY protocol header when `origin` is set, else `peer` itself. `Err`: the connection is to be
/// closed (a sender not trusted, or no valid header), and is counted; the error says which, in
/// the access log's words.
async fn take_origin(
    origin: Option<ProxyAccept>,
    stream: &mut TcpStream,
    peer: SocketAddr,
) -> Result<(SocketAddr, Option<SocketAddr>), &'static str> {
    let Some(ProxyAccept { from, counts }) = origin else { return Ok((peer, None)) };
    if !from.is_empty() && !from.iter().any(|net| net.contains(peer.ip())) {
        tracing::debug!("not a trusted sender of PROXY headers, closing");
        counts.proxy_header_errors.fetch_add(1, Ordering::Relaxed);
        return Err("proxy_sender_untrusted");
    }
    match proxy_protocol::accept(stream).await {
        Ok(Some(o)) => {
            tracing::Span::current().record("client", tracing::field::display(o.client));
            Ok((o.client, Some(o.local)))
        }
        Ok(None) => Ok((peer, None)),
        Err(e) => {
            tracing::debug!(error = %e, "closing");
            counts.proxy_header_errors.fetch_add(1, Ordering::Relaxed);
            Err("proxy_header_invalid")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_room_for_endpoints_and_the_rest() {
        assert_eq!(super::http_connection_cap(20_000), 9_744);
        assert_eq!(super::http_connection_cap(1_024), 256);
        assert_eq!(super::http_connection_cap(100), 64);
    }

    #[test]
    fn reuseport_binds_many_and_refuses_a_taken_port() {
        let socks = bind_reuseport("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        let port = socks[0].local_addr().unwrap().port();
        assert!(socks.iter().all(|s| s.local_addr().unwrap().port() == port));
        // A plain socket (no SO_REUSEPORT) holding a port keeps us out.
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let err = bind_reuseport(taken.local_addr().unwrap(), 2).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }
}
