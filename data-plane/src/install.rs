//! Installing a snapshot: convert, validate, compile (off the runtime's worker threads), bind the
//! listeners it adds, swap the table in with one `ArcSwap::store`, stop the listeners it drops,
//! persist it. Any failure before the swap leaves the previous table serving, untouched.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sluice_shared::proto::v1 as pb;
use sluice_shared::{Config, Revision, ValidationError};

use crate::cache::SnapshotCache;
use crate::health::HealthCheckers;
use crate::http::sticky::StickySessions;
use crate::listeners::{BindError, Listeners};
use crate::state::{Installed, Shared};
use crate::table::{compile, CompileError, Table};
use crate::tls::{TlsConfigs, TlsError};

/// Why a snapshot was refused; the display text is the NACK message.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("invalid snapshot: {0}")]
    Invalid(#[from] ValidationError),
    #[error("cannot compile: {0}")]
    Compile(#[from] CompileError),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("internal error: {0}")]
    Internal(String),
}

pub struct Installer {
    shared: Arc<Shared>,
    listeners: Listeners,
    cache: Option<SnapshotCache>,
    /// Active health checks of the installed table's clusters.
    health: HealthCheckers,
}

impl Installer {
    pub fn new(shared: Arc<Shared>, cache: Option<SnapshotCache>) -> Installer {
        Installer { shared, listeners: Listeners::new(), cache, health: HealthCheckers::default() }
    }

    /// Boots from the cached snapshot if there is a valid one; a bad one is logged and ignored.
    pub async fn install_cached(&mut self) {
        let Some(cache) = self.cache.clone() else { return };
        let loaded = tokio::task::spawn_blocking(move || cache.load()).await;
        match loaded {
            Ok(Ok(Some(snapshot))) => {
                let revision = snapshot.revision;
                match self.install(snapshot, false).await {
                    Ok(()) => tracing::info!(revision, "serving the cached snapshot until a control plane answers"),
                    Err(e) => tracing::warn!(revision, error = %e, "ignoring the cached snapshot"),
                }
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "ignoring the snapshot cache"),
            Err(e) => tracing::warn!(error = %e, "reading the snapshot cache failed"),
        }
    }

    /// Installs a snapshot; `persist` writes it to the cache once it serves.
    pub async fn install(&mut self, snapshot: pb::Snapshot, persist: bool) -> Result<(), InstallError> {
        let revision = snapshot.revision;
        let previous = self.shared.installed.load_full();
        let keep = persist.then(|| snapshot.clone());
        let node_key = self.shared.node_sticky_key;
        let compiled = tokio::task::spawn_blocking(move || prepare(snapshot, previous.as_deref(), &node_key))
            .await
            .map_err(|e| InstallError::Internal(e.to_string()))?;
        let (table, tls, sticky) = compiled?;
        let table = table.with_revision(revision);

        let plan = self.listeners.plan(&table);
        // New listeners are bound before the swap: a port that cannot be bound refuses the whole
        // snapshot (the sockets bound so far are closed as `bound` drops).
        let bound = self.listeners.bind(&plan)?;

        let stats = self.shared.metrics.index(&table);
        let installed = Arc::new(Installed { revision, table, stats, tls, sticky });
        self.health.sync(&installed.table, &installed.tls);
        self.shared.installed.store(Some(installed));
        self.listeners.stop(&plan.remove);
        self.listeners.start(bound, &self.shared);

        let m = &self.shared.metrics;
        m.revision.store(revision, Ordering::Relaxed);
        m.config_applies.fetch_add(1, Ordering::Relaxed);
        m.ready.store(true, Ordering::Relaxed);
        tracing::info!(revision, added = plan.add.len(), removed = plan.remove.len(), "config installed");

        if let (Some(cache), Some(snapshot)) = (self.cache.clone(), keep) {
            // The table already serves: a cache that cannot be written is worth a warning, not a NACK.
            match tokio::task::spawn_blocking(move || cache.store(&snapshot)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(revision, error = %e, "cannot persist the snapshot cache"),
                Err(e) => tracing::warn!(revision, error = %e, "cannot persist the snapshot cache"),
            }
        }
        Ok(())
    }

    /// The control plane says the group's content is unchanged at a newer revision.
    pub fn advance(&self, revision: Revision) {
        self.shared.metrics.revision.fetch_max(revision, Ordering::Relaxed);
    }

    pub fn rejected(&self) {
        self.shared.metrics.config_rejects.fetch_add(1, Ordering::Relaxed);
    }

    pub async fn shutdown(&mut self, grace: Duration) {
        self.health.stop_all();
        self.listeners.shutdown(grace).await;
    }
}

/// The CPU part: proto -> model, validation, compile, TLS configs, sticky cookie ids.
fn prepare(
    mut snapshot: pb::Snapshot,
    previous: Option<&Installed>,
    node_key: &[u8],
) -> Result<(Table, TlsConfigs, StickySessions), InstallError> {
    let key = std::mem::take(&mut snapshot.sticky_key);
    let config = Config::try_from(snapshot)?;
    config.validate()?;
    let tls = TlsConfigs::build(&config, previous.map(|i| &i.tls))?;
    let table = compile(&config, previous.map(|i| &i.table))?;
    let sticky = StickySessions::new(if key.is_empty() { node_key } else { &key }, &table);
    Ok((table, tls, sticky))
}
