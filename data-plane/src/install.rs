//! Installing a snapshot: convert, validate, compile (off the runtime's worker threads), bind the
//! listeners it adds, swap the table in with one `ArcSwap::store`, stop the listeners it drops,
//! persist it. A snapshot that is invalid as a whole leaves the previous table serving, untouched
//! (a NACK). A listener that cannot be bound on this node is left out, with its routes (or keeps
//! its previous address, when it moved), and everything else is installed: the Ack names what
//! was left out, and each later snapshot tries it again.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sluice_shared::proto::v1 as pb;
use sluice_shared::{Config, Kind, Revision, ValidationError};

use crate::cache::SnapshotCache;
use crate::dns::{self, Answers, Dns};
use crate::health::HealthCheckers;
use crate::http::sticky::StickySessions;
use crate::listeners::{BindError, Listeners};
use crate::state::{Installed, Shared};
use crate::table::{compile, CompileError, Table};
use crate::tls::{TlsConfigs, TlsError};
use crate::upgrade::{Inherited, SocketKind};

/// Why a snapshot was refused; the display text is the NACK message.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("invalid snapshot: {0}")]
    Invalid(#[from] ValidationError),
    #[error("cannot compile: {0}")]
    Compile(#[from] CompileError),
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
    /// The config the installed table was compiled from (what could not be applied left out),
    /// endpoints by name not yet expanded.
    config: Option<Config>,
    /// The sticky-cookie key the installed snapshot came with (empty: the node's own).
    sticky_key: Vec<u8>,
    dns: Arc<Dns>,
}

/// A resource of a snapshot this node could not apply (the rest serves); sent with the Ack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceError {
    pub kind: Kind,
    pub name: String,
    pub message: String,
}

impl From<ResourceError> for pb::ResourceError {
    fn from(e: ResourceError) -> Self {
        pb::ResourceError { kind: e.kind.singular().into(), name: e.name, message: e.message }
    }
}

impl Installer {
    pub fn new(shared: Arc<Shared>, cache: Option<SnapshotCache>, dns: Arc<Dns>) -> Installer {
        Installer {
            shared,
            listeners: Listeners::new(),
            cache,
            health: HealthCheckers::default(),
            config: None,
            sticky_key: Vec::new(),
            dns,
        }
    }

    /// Boots from the cached snapshot if there is a valid one; a bad one is logged and ignored.
    pub async fn install_cached(&mut self) {
        let Some(cache) = self.cache.clone() else { return };
        let loaded = tokio::task::spawn_blocking(move || cache.load()).await;
        match loaded {
            Ok(Ok(Some(snapshot))) => {
                let revision = snapshot.revision;
                match self.install(snapshot, false).await {
                    Ok(_) => tracing::info!(revision, "serving the cached snapshot until a control plane answers"),
                    Err(e) => tracing::warn!(revision, error = %e, "ignoring the cached snapshot"),
                }
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "ignoring the snapshot cache"),
            Err(e) => tracing::warn!(error = %e, "reading the snapshot cache failed"),
        }
    }

    /// Installs a snapshot; `persist` writes it to the cache once it serves. Returns the resources
    /// left out because this node could not apply them.
    pub async fn install(&mut self, snapshot: pb::Snapshot, persist: bool) -> Result<Vec<ResourceError>, InstallError> {
        let revision = snapshot.revision;
        let previous = self.shared.installed.load_full();
        let keep = persist.then(|| snapshot.clone());
        let node_key = self.shared.node_sticky_key;
        let (config, key) = decode(snapshot)?;
        self.dns.track(&dns::names(&config)).await;
        let answers = Arc::new(self.dns.answers());
        let built = build_off_runtime(config.clone(), answers.clone(), previous.clone(), key.clone(), node_key).await?;
        let (mut table, mut tls, mut sticky) = built;

        let mut plan = self.listeners.plan(&table);
        let (mut bound, failed) = self.listeners.bind(&plan);
        let mut config = config;
        let mut errors = Vec::new();
        if !failed.is_empty() {
            let (reduced, left_out) = leave_out(&config, self.config.as_ref(), &failed);
            errors = left_out;
            for e in &errors {
                tracing::warn!(revision, kind = %e.kind, name = %e.name, error = %e.message, "not applied on this node");
            }
            (table, tls, sticky) = build_off_runtime(reduced.clone(), answers, previous, key.clone(), node_key).await?;
            config = reduced;
            plan = self.listeners.plan(&table);
            // Sockets bound for what the reduced table no longer adds are closed as they drop.
            bound.retain(|b| Listeners::still_planned(&plan, b));
        }
        let table = table.with_revision(revision);
        let stats = self.shared.metrics.index(&table);
        let installed = Arc::new(Installed { revision, table, stats, tls, sticky });
        self.health.sync(&installed.table, &installed.tls);
        self.shared.installed.store(Some(installed));
        self.listeners.stop(&plan.remove);
        self.listeners.start(bound, &self.shared);
        self.listeners.forget_inherited();

        let m = &self.shared.metrics;
        m.revision.store(revision, Ordering::Relaxed);
        m.config_applies.fetch_add(1, Ordering::Relaxed);
        m.ready.store(true, Ordering::Relaxed);
        tracing::info!(revision, added = plan.add.len(), removed = plan.remove.len(), "config installed");
        self.config = Some(config);
        self.sticky_key = key;

        if let (Some(cache), Some(snapshot)) = (self.cache.clone(), keep) {
            // The table already serves: a cache that cannot be written is worth a warning, not a NACK.
            match tokio::task::spawn_blocking(move || cache.store(&snapshot)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(revision, error = %e, "cannot persist the snapshot cache"),
                Err(e) => tracing::warn!(revision, error = %e, "cannot persist the snapshot cache"),
            }
        }
        Ok(errors)
    }

    /// Recompiles the installed config with the names' current answers (same revision, same
    /// listeners): what a changed DNS answer calls. A failure keeps the table serving.
    pub async fn refresh_endpoints(&mut self) {
        let (Some(config), Some(previous)) = (self.config.clone(), self.shared.installed.load_full()) else { return };
        let revision = previous.revision;
        let answers = Arc::new(self.dns.answers());
        let key = self.sticky_key.clone();
        match build_off_runtime(config, answers, Some(previous.clone()), key, self.shared.node_sticky_key).await {
            Ok((table, tls, sticky)) => {
                let table = table.with_revision(revision);
                let stats = self.shared.metrics.index(&table);
                let installed = Arc::new(Installed { revision, table, stats, tls, sticky });
                self.health.sync(&installed.table, &installed.tls);
                self.shared.installed.store(Some(installed));
                tracing::info!(revision, "endpoints by name re-resolved: table updated");
            }
            Err(e) => tracing::warn!(revision, error = %e, "cannot apply the new DNS answers; the table keeps serving"),
        }
    }

    /// The control plane says the group's content is unchanged at a newer revision.
    pub fn advance(&self, revision: Revision) {
        self.shared.metrics.revision.fetch_max(revision, Ordering::Relaxed);
    }

    pub fn rejected(&self) {
        self.shared.metrics.config_rejects.fetch_add(1, Ordering::Relaxed);
    }

    /// Sockets handed over by the process this one replaces (see `upgrade.rs`).
    pub fn inherit(&mut self, inherited: Inherited) {
        self.listeners.inherit(inherited);
    }

    /// Duplicates of every listening socket, for a process taking over.
    pub fn listening_sockets(&self) -> Vec<(std::net::SocketAddr, SocketKind, Vec<std::os::fd::OwnedFd>)> {
        self.listeners.sockets()
    }

    /// Stops health checks and listeners; open connections get `grace` (`None`: each listener's
    /// drain time) to finish.
    pub async fn shutdown(&mut self, grace: Option<Duration>) {
        self.health.stop_all();
        self.listeners.shutdown(grace).await;
    }
}

/// proto -> model, validated as a whole (a NACK otherwise), and the snapshot's sticky key.
fn decode(mut snapshot: pb::Snapshot) -> Result<(Config, Vec<u8>), InstallError> {
    let key = std::mem::take(&mut snapshot.sticky_key);
    let config = Config::try_from(snapshot)?;
    config.validate()?;
    Ok((config, key.to_vec()))
}

/// [`build`] on a blocking thread: compiling a large table must not stall the runtime.
async fn build_off_runtime(
    config: Config,
    answers: Arc<Answers>,
    previous: Option<Arc<Installed>>,
    key: Vec<u8>,
    node_key: [u8; 32],
) -> Result<(Table, TlsConfigs, StickySessions), InstallError> {
    tokio::task::spawn_blocking(move || {
        let config = dns::expand(&config, &answers);
        build(&config, previous.as_deref(), if key.is_empty() { &node_key } else { &key })
    })
    .await
    .map_err(|e| InstallError::Internal(e.to_string()))?
}

/// The CPU part: compile, TLS configs, sticky cookie ids.
fn build(
    config: &Config,
    previous: Option<&Installed>,
    sticky_key: &[u8],
) -> Result<(Table, TlsConfigs, StickySessions), InstallError> {
    let tls = TlsConfigs::build(config, previous.map(|i| &i.tls))?;
    let table = compile(config, previous.map(|i| &i.table))?;
    let sticky = StickySessions::new(sticky_key, &table);
    Ok((table, tls, sticky))
}

/// `config` without the listeners that could not be bound: a listener that moved keeps its
/// previous spec (it is still bound and serving), a new one is left out with its routes.
fn leave_out(config: &Config, installed: Option<&Config>, failed: &[BindError]) -> (Config, Vec<ResourceError>) {
    let mut reduced = config.clone();
    let mut errors = Vec::new();
    for f in failed {
        let name = &f.listener;
        let message = format!("cannot bind {}: {}", f.address, f.source);
        if let Some(old) = installed.and_then(|c| c.listeners.get(name)) {
            let mut kept = reduced.clone();
            kept.listeners.insert(name.clone(), old.clone());
            if kept.validate().is_ok() {
                reduced = kept;
                errors.push(ResourceError {
                    kind: Kind::Listener,
                    name: name.clone(),
                    message: format!("{message}; still serving its previous address {}", old.address),
                });
                continue;
            }
        }
        reduced.listeners.remove(name);
        let routes: Vec<String> =
            reduced.routes.iter().filter(|(_, r)| &r.listener == name).map(|(n, _)| n.clone()).collect();
        for r in routes {
            reduced.routes.remove(&r);
            errors.push(ResourceError {
                kind: Kind::Route,
                name: r,
                message: format!("not applied: its listener {name} could not be applied"),
            });
        }
        errors.push(ResourceError { kind: Kind::Listener, name: name.clone(), message });
    }
    errors.sort_by_key(|e| (Kind::DEPENDENCY_ORDER.iter().position(|k| *k == e.kind), e.name.clone()));
    (reduced, errors)
}
