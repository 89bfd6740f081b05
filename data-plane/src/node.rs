//! A data-plane node: admin server, config stream client, listeners and proxies, started together
//! on the caller's tokio runtime.

use std::net::SocketAddr;
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

/// How long `shutdown` lets open connections finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

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
}

pub struct Node {
    admin_addr: SocketAddr,
    shared: Arc<Shared>,
    installer: Arc<Mutex<Installer>>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
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
        let admin = crate::admin::bind(opts.admin_addr)
            .await
            .map_err(|source| NodeError::AdminBind { addr: opts.admin_addr, source })?;
        let admin_addr = admin.local_addr().map_err(|source| NodeError::AdminBind { addr: opts.admin_addr, source })?;

        let shared = Arc::new(Shared::new());
        let cache = opts.cache_dir.as_deref().map(|d| SnapshotCache::new(d, &opts.group));
        let dns = Arc::new(Dns::new(opts.dns.clone()));
        let mut installer = Installer::new(shared.clone(), cache, dns.clone());
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
        tracing::info!(node_id = %opts.node_id, group = %opts.group, %admin_addr, "data-plane node started");
        Ok(Node { admin_addr, shared, installer, stop, tasks })
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

    /// Stops the stream client and the admin server, closes every listener and gives open
    /// connections a few seconds to finish.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        self.installer.lock().await.shutdown(SHUTDOWN_GRACE).await;
        tracing::info!("data-plane node stopped");
    }
}
