//! A whole control plane in one value: the store, the REST API and the config stream server, each
//! bound on its own address (port 0 picks a free one), stopped together by [`ControlPlane::shutdown`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;

use crate::api::{self, ApiState};
use crate::store::{AuditRetention, ReleaseSpec, Store, StoreError, StoreOptions};
use crate::stream::{ConfigStreamService, StreamOptions};

/// How long shutdown waits for node streams and open HTTP connections before cutting them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What [`ControlPlane::start`] needs. Build it with struct update syntax over
/// `ControlPlaneOptions::default()` so later additions (gRPC mTLS, issue 5) do not break callers.
#[derive(Clone)]
pub struct ControlPlaneOptions {
    /// `sqlite://PATH` (created if missing) or `postgres://…`.
    pub database_url: String,
    pub api_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    /// Bearer token with every right on the REST API. Must not be empty.
    pub admin_token: String,
    /// Sent in every snapshot; generated (`cp-…`) when `None`.
    pub control_plane_id: Option<String>,
    /// mTLS on the config stream (issue 5); `None`: plaintext gRPC.
    pub grpc_tls: Option<GrpcTls>,
    /// What the audit log keeps (pruned at start and every ten minutes).
    pub audit_retention: AuditRetention,
    /// Every write is released this way unless it asks otherwise (`None`: at once).
    pub default_release: Option<ReleaseSpec>,
    /// How long start-up waits for a Postgres server that is not up yet; zero: one attempt.
    pub database_wait: Duration,
}

/// The config stream's server certificate and the CA that node client certificates must chain to
/// (a node with no or another client certificate is refused during the handshake). PEM text.
#[derive(Clone)]
pub struct GrpcTls {
    pub cert_pem: String,
    pub key_pem: String,
    pub client_ca_pem: String,
}

impl std::fmt::Debug for GrpcTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcTls")
            .field("cert_pem", &format_args!("<{} bytes>", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .field("client_ca_pem", &format_args!("<{} bytes>", self.client_ca_pem.len()))
            .finish()
    }
}

impl std::fmt::Debug for ControlPlaneOptions {
    /// Secrets are never printed: the admin token, and the database URL past its scheme (it may
    /// hold a password).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = self.database_url.split("://").next().unwrap_or_default();
        f.debug_struct("ControlPlaneOptions")
            .field("database_url", &format_args!("{scheme}://<redacted>"))
            .field("api_addr", &self.api_addr)
            .field("grpc_addr", &self.grpc_addr)
            .field("admin_token", &"<redacted>")
            .field("control_plane_id", &self.control_plane_id)
            .field("grpc_tls", &self.grpc_tls)
            .field("database_wait", &self.database_wait)
            .finish()
    }
}

impl Default for ControlPlaneOptions {
    fn default() -> Self {
        Self {
            database_url: "sqlite://sluice.db".to_string(),
            api_addr: SocketAddr::from(([127, 0, 0, 1], 7070)),
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 7071)),
            admin_token: String::new(),
            control_plane_id: None,
            grpc_tls: None,
            audit_retention: AuditRetention::default(),
            default_release: None,
            database_wait: Duration::ZERO,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error("the admin token must not be empty")]
    EmptyAdminToken,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("gRPC TLS: {0}")]
    GrpcTls(String),
    #[error("cannot bind the {what} address {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A running control plane.
pub struct ControlPlane {
    store: Store,
    api_addr: SocketAddr,
    grpc_addr: SocketAddr,
    stream: ConfigStreamService,
    stop: watch::Sender<bool>,
    /// The server tasks; emptied by [`ControlPlane::shutdown`].
    tasks: Vec<(&'static str, JoinHandle<()>)>,
}

impl ControlPlane {
    /// Opens the store, binds both listeners and starts serving. Returns once both accept.
    pub async fn start(opts: ControlPlaneOptions) -> Result<ControlPlane, ControlPlaneError> {
        if opts.admin_token.is_empty() {
            return Err(ControlPlaneError::EmptyAdminToken);
        }
        // Checked before anything binds: a bad certificate or key fails the start, not each handshake.
        let mut grpc_server = tonic::transport::Server::builder();
        if let Some(tls) = &opts.grpc_tls {
            grpc_server =
                grpc_server.tls_config(server_tls(tls)?).map_err(|e| ControlPlaneError::GrpcTls(e.to_string()))?;
        }
        // Bound now, so that a taken port fails the start at once; listening only once the store
        // is open, so that while it waits for its database, clients and nodes are refused at once
        // (and try another replica) instead of hanging in the backlog.
        let api_socket = bind("REST API", opts.api_addr)?;
        let grpc_socket = bind("gRPC", opts.grpc_addr)?;
        let store_options = StoreOptions {
            default_release: opts.default_release.clone(),
            database_wait: opts.database_wait,
            ..StoreOptions::default()
        };
        let store = Store::open_with(&opts.database_url, store_options).await?;
        let (api_listener, api_addr) = listen("REST API", opts.api_addr, api_socket)?;
        let (grpc_listener, grpc_addr) = listen("gRPC", opts.grpc_addr, grpc_socket)?;

        let control_plane_id =
            opts.control_plane_id.unwrap_or_else(|| format!("cp-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]));
        let stream = ConfigStreamService::new(store.clone(), StreamOptions::new(control_plane_id.clone()));
        let (stop, stopped) = watch::channel(false);

        let app = api::app(ApiState { store: store.clone(), admin_token: Arc::from(opts.admin_token) });
        let api_task = tokio::spawn({
            let stopped = stopped.clone();
            async move {
                if let Err(e) = axum::serve(api_listener, app).with_graceful_shutdown(wait_for(stopped)).await {
                    tracing::error!(error = %e, "REST API server failed");
                }
            }
        });
        let audit_task = tokio::spawn(prune_audit(store.clone(), opts.audit_retention, stopped.clone()));
        let release_task = tokio::spawn(crate::release::run(store.clone(), stopped.clone()));
        let grpc_task = tokio::spawn({
            let service = stream.clone().into_server();
            async move {
                let incoming = TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
                let served = grpc_server
                    // Finds nodes that vanished without closing their connection.
                    .http2_keepalive_interval(Some(Duration::from_secs(10)))
                    .http2_keepalive_timeout(Some(Duration::from_secs(20)))
                    .add_service(service)
                    .serve_with_incoming_shutdown(incoming, wait_for(stopped))
                    .await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "gRPC server failed");
                }
            }
        });
        tracing::info!(%api_addr, %grpc_addr, %control_plane_id, "control plane started");
        let tasks = vec![
            ("REST API", api_task),
            ("gRPC", grpc_task),
            ("audit pruning", audit_task),
            ("releases", release_task),
        ];
        Ok(ControlPlane { store, api_addr, grpc_addr, stream, stop, tasks })
    }

    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn control_plane_id(&self) -> &str {
        self.stream.control_plane_id()
    }

    /// Ends the node streams (recording each node as disconnected), stops both servers and closes
    /// the store. Bounded: connections still open after a grace period are cut.
    pub async fn shutdown(mut self) {
        self.stream.shutdown(SHUTDOWN_GRACE).await;
        self.stop.send_replace(true);
        for (name, mut task) in std::mem::take(&mut self.tasks) {
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut task).await.is_err() {
                tracing::warn!(server = name, "server did not stop in time; aborting it");
                task.abort();
            }
        }
        self.store.close().await;
        tracing::info!("control plane stopped");
    }
}

impl Drop for ControlPlane {
    /// Dropped without [`ControlPlane::shutdown`]: still stop serving (without waiting).
    fn drop(&mut self) {
        self.stream.begin_shutdown();
        self.stop.send_replace(true);
    }
}

/// The tonic TLS settings: our identity, and client certificates required, verified against the CA.
fn server_tls(tls: &GrpcTls) -> Result<tonic::transport::ServerTlsConfig, ControlPlaneError> {
    sluice_shared::certs::ensure_default_crypto_provider();
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let invalid = |what: &str, e: sluice_shared::ValidationError| ControlPlaneError::GrpcTls(format!("{what}: {e}"));
    let cert = sluice_shared::model::Certificate { cert_pem: tls.cert_pem.clone(), key_pem: tls.key_pem.clone() };
    sluice_shared::certs::check_material(&cert).map_err(|e| invalid("server certificate", e))?;
    sluice_shared::certs::inspect(&tls.client_ca_pem).map_err(|e| invalid("client CA", e))?;
    Ok(ServerTlsConfig::new()
        .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem))
        .client_ca_root(Certificate::from_pem(&tls.client_ca_pem))
        .client_auth_optional(false)
        .timeout(Duration::from_secs(10)))
}

fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpSocket, ControlPlaneError> {
    let error = |source| ControlPlaneError::Bind { what, addr, source };
    let socket = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.map_err(error)?;
    socket.set_reuseaddr(true).map_err(error)?;
    socket.bind(addr).map_err(error)?;
    Ok(socket)
}

fn listen(
    what: &'static str,
    addr: SocketAddr,
    socket: TcpSocket,
) -> Result<(TcpListener, SocketAddr), ControlPlaneError> {
    let error = |source| ControlPlaneError::Bind { what, addr, source };
    let listener = socket.listen(1024).map_err(error)?;
    let local = listener.local_addr().map_err(error)?;
    Ok((listener, local))
}

/// Keeps the audit log within `retention` until the control plane stops. Every replica prunes;
/// the deletes are idempotent.
async fn prune_audit(store: Store, retention: AuditRetention, mut stopped: watch::Receiver<bool>) {
    const EVERY: Duration = Duration::from_secs(600);
    loop {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        match store.prune_audit(retention, now_ms).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "audit log pruned"),
            Err(e) => tracing::warn!(error = %e, "pruning the audit log failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
    }
}

async fn wait_for(mut stopped: watch::Receiver<bool>) {
    // An error means the sender is gone: the control plane was dropped, so stop as well.
    let _ = stopped.wait_for(|s| *s).await;
}
