//! A data-plane node: admin server, config stream client, listeners and proxies, started together
//! on the caller's tokio runtime.

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sluice_shared::Revision;
use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;

use crate::cache::SnapshotCache;
use crate::dns::{Dns, DnsOptions};
use crate::install::Installer;
use crate::state::Shared;
use crate::stream_client::{self, StreamClient};
use crate::upgrade::{self, Handover, Inherited, SocketKind, UpgradeError};

/// What `sluice proxy` (and `sluice dev`) start a node with.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// Control-plane gRPC URLs (`http://host:port`), tried in turn; empty: serve the cache only.
    pub control_planes: Vec<String>,
    pub node_id: String,
    pub group: String,
    /// Admin server (`/healthz`, `/readyz`, `/metrics`); port 0 picks one, see [`Node::admin_addr`].
    pub admin_addr: SocketAddr,
    /// Where the last good snapshot is kept; `None`: no cache.
    pub cache_dir: Option<PathBuf>,
    /// TLS to the control planes (`https://` URLs); `None`: plaintext (`http://` URLs).
    pub control_plane_tls: Option<ControlPlaneTls>,
    /// How endpoints given by DNS name are resolved.
    pub dns: DnsOptions,
    /// Where this node offers its listening sockets to a process replacing it, and where a new
    /// node looks for one to replace (see `upgrade.rs`); `None`: no handover.
    pub upgrade_socket: Option<PathBuf>,
    /// How long `shutdown` lets open connections finish; `None`: each listener's `drain_ms`
    /// (30 s by default).
    pub shutdown_drain: Option<Duration>,
}

/// How a node verifies the control plane (CA bundle) and proves itself (client certificate). PEM text.
#[derive(Clone, Default)]
pub struct ControlPlaneTls {
    pub ca_pem: String,
    /// `(cert_pem, key_pem)`; required by a control plane started with a client CA.
    pub client: Option<(String, String)>,
}

impl std::fmt::Debug for ControlPlaneTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlaneTls")
            .field("ca_pem", &format_args!("<{} bytes>", self.ca_pem.len()))
            .field("client", &self.client.as_ref().map(|_| "<certificate and redacted key>"))
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot bind the admin server on {addr}: {source}")]
    AdminBind { addr: SocketAddr, source: std::io::Error },
    #[error("invalid control plane URL {url:?}: {reason}")]
    ControlPlaneUrl { url: String, reason: String },
    #[error("taking over from the running process: {0}")]
    Upgrade(#[from] UpgradeError),
}

pub struct Node {
    admin_addr: SocketAddr,
    shared: Arc<Shared>,
    installer: Arc<Mutex<Installer>>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// Turns true when a new process has taken the listening sockets over.
    handed_over: watch::Receiver<bool>,
    shutdown_drain: Option<Duration>,
}

impl Node {
    /// Binds the admin server, installs the cached snapshot (if any and valid), then connects to
    /// the control plane in the background. Returns once the admin server and cache are up.
    pub async fn start(opts: NodeOptions) -> Result<Node, NodeError> {
        crate::listeners::set_http_connection_cap();
        let endpoints = opts
            .control_planes
            .iter()
            .map(|url| {
                stream_client::endpoint(url, opts.control_plane_tls.as_ref())
                    .map_err(|e| NodeError::ControlPlaneUrl { url: url.clone(), reason: e.to_string() })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (mut inherited, handover) = match opts.upgrade_socket.clone() {
            Some(path) => match tokio::task::spawn_blocking(move || upgrade::receive(&path)).await {
                Ok(Ok(Some((inherited, handover)))) => {
                    tracing::info!(sockets = inherited.len(), "took the listening sockets of the running process");
                    (inherited, Some(handover))
                }
                Ok(Ok(None)) => (Inherited::default(), None),
                Ok(Err(e)) => return Err(e.into()),
                Err(e) => {
                    return Err(NodeError::Upgrade(UpgradeError::Protocol {
                        path: Default::default(),
                        reason: e.to_string(),
                    }))
                }
            },
            None => (Inherited::default(), None),
        };
        let bind_error = |source| NodeError::AdminBind { addr: opts.admin_addr, source };
        let admin = match inherited.take(opts.admin_addr, SocketKind::Admin).pop() {
            Some(fd) => {
                let listener = std::net::TcpListener::from(fd);
                listener.set_nonblocking(true).map_err(bind_error)?;
                tokio::net::TcpListener::from_std(listener).map_err(bind_error)?
            }
            None => crate::admin::bind(opts.admin_addr).await.map_err(bind_error)?,
        };
        let admin_addr = admin.local_addr().map_err(bind_error)?;
        let admin_fd = admin.as_fd().try_clone_to_owned().map_err(bind_error)?;

        let shared = Arc::new(Shared::new());
        let cache = opts.cache_dir.as_deref().map(|d| SnapshotCache::new(d, &opts.group));
        let dns = Arc::new(Dns::new(opts.dns.clone()));
        let mut installer = Installer::new(shared.clone(), cache, dns.clone());
        installer.inherit(inherited);
        installer.install_cached().await;
        let installer = Arc::new(Mutex::new(installer));

        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = vec![tokio::spawn(crate::admin::run(admin, shared.clone(), stop_rx.clone()))];
        let refresh = installer.clone();
        let mut dns_stop = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            let refresher = dns.refresh_loop(|| async { refresh.lock().await.refresh_endpoints().await });
            tokio::select! {
                _ = refresher => {}
                _ = dns_stop.wait_for(|stopped| *stopped) => {}
            }
        }));
        if endpoints.is_empty() {
            tracing::warn!("no control plane configured: serving the cached snapshot only");
        } else {
            let client = StreamClient {
                endpoints,
                node_id: opts.node_id.clone(),
                group: opts.group.clone(),
                installer: installer.clone(),
                shared: shared.clone(),
            };
            tasks.push(tokio::spawn(client.run(stop_rx)));
        }
        let (handed, handed_over) = watch::channel(false);
        if let Some(path) = opts.upgrade_socket.clone() {
            let serving = Serving {
                installer: installer.clone(),
                admin: (admin_addr, admin_fd),
                runtime: tokio::runtime::Handle::current(),
                handed,
            };
            // Not awaited at shutdown: it may still wait for a first table.
            let wait_for_sync = !opts.control_planes.is_empty();
            tokio::spawn(take_over(shared.clone(), handover, path, serving, wait_for_sync));
        }
        tracing::info!(node_id = %opts.node_id, group = %opts.group, %admin_addr, "data-plane node started");
        Ok(Node { admin_addr, shared, installer, stop, tasks, handed_over, shutdown_drain: opts.shutdown_drain })
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The revision installed (or advanced to by the control plane); 0 before any.
    pub fn revision(&self) -> Revision {
        self.shared.metrics.revision.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether a valid table is installed (what `/readyz` reports).
    pub fn is_ready(&self) -> bool {
        self.shared.installed.load().is_some()
    }

    /// Fails `/readyz` from now on, while everything keeps serving: the first step of a graceful
    /// stop, so that load balancers and Kubernetes in front of the node stop sending to it.
    pub fn stop_being_ready(&self) {
        self.shared.stopping.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Returns when a new process has taken over the listening sockets (this one should then
    /// shut down: it accepts no more, and drains).
    pub async fn handed_over(&self) {
        let mut rx = self.handed_over.clone();
        if rx.wait_for(|handed| *handed).await.is_err() {
            // No upgrade socket (or it is gone): no process will take over.
            std::future::pending::<()>().await;
        }
    }

    /// Stops the stream client and the admin server, stops accepting, and lets open connections
    /// finish within the drain time.
    pub async fn shutdown(self) {
        self.stop_being_ready();
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        self.installer.lock().await.shutdown(self.shutdown_drain).await;
        tracing::info!("data-plane node stopped");
    }
}

/// How long a replacing node waits for a control plane's snapshot before it takes over with its
/// cached one.
const SYNC_WAIT: Duration = Duration::from_secs(10);

/// What the upgrade socket answers with: this node's sockets, and a way to tell it to stop.
struct Serving {
    installer: Arc<Mutex<Installer>>,
    admin: (SocketAddr, std::os::fd::OwnedFd),
    runtime: tokio::runtime::Handle,
    handed: watch::Sender<bool>,
}

impl upgrade::Serving for Serving {
    fn sockets(&self) -> Vec<(SocketAddr, SocketKind, Vec<std::os::fd::OwnedFd>)> {
        let mut sockets = self.runtime.block_on(async { self.installer.lock().await.listening_sockets() });
        if let Ok(admin) = self.admin.1.try_clone() {
            sockets.push((self.admin.0, SocketKind::Admin, vec![admin]));
        }
        sockets
    }

    fn handed_over(&self) {
        let _ = self.handed.send(true);
    }
}

/// A node started to replace another: once a table is installed (the control plane's, or after
/// [`SYNC_WAIT`] the cached one: a stale cache may lack a listener the old process serves), tells
/// the old process to stop accepting. Then (or at once, for a first start) offers this node's
/// sockets on `path`.
async fn take_over(shared: Arc<Shared>, handover: Option<Handover>, path: PathBuf, serving: Serving, sync: bool) {
    if let Some(handover) = handover {
        let started = tokio::time::Instant::now();
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        loop {
            if shared.stopping.load(relaxed) {
                return;
            }
            let installed = shared.installed.load().is_some();
            let synced = !sync || shared.synced.load(relaxed) || started.elapsed() >= SYNC_WAIT;
            if installed && synced {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        match tokio::task::spawn_blocking(move || handover.ready()).await {
            Ok(Ok(())) => tracing::info!("the replaced process stopped accepting; this one serves alone"),
            Ok(Err(e)) => tracing::warn!(error = %e, "the replaced process did not confirm the handover"),
            Err(e) => tracing::warn!(error = %e, "handover task failed"),
        }
    }
    let bound = tokio::task::spawn_blocking(move || upgrade::serve(&path, serving)).await;
    match bound {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "no upgrade socket: a restart will not hand over the listeners"),
        Err(e) => tracing::warn!(error = %e, "no upgrade socket"),
    }
}
