//! The control plane's persistent store: every resource and the single global revision, in SQLite
//! (default) or Postgres, through sqlx's `Any` driver.
//!
//! Writes go through [`Store::apply`]: one transaction that bumps the revision row (which also
//! serializes writers across replicas), re-validates the changed config, writes one row and commits.
//! Each committed [`State`] is published on a watch channel; readers never touch the database.
//!
//! Beside the config, and outside its revisions: API tokens (`tokens`, read on every request so a
//! revocation holds at once), the audit log (`audit`) and the endpoint health nodes report (`health`).

mod audit;
mod batch;
mod change;
mod db;
mod health;
mod release;
#[cfg(test)]
pub(crate) mod testdb;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_access;
#[cfg(test)]
mod tests_release;
mod tokens;
mod wait;

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use sluice_shared::changes::{diff, Op, ResourceChange};
use sluice_shared::clock::unix_now_ms;
use sluice_shared::model::{Certificate, Cluster, Listener, Route};
use sluice_shared::{Config, Kind, Revision, ValidationError};
use sqlx::AnyPool;
use tokio::sync::{watch, Mutex};

use crate::nodes::NodeRecord;

pub use audit::{AuditEntry, AuditRetention};
pub use batch::{all_conflicts, Batch, Problem, MAX_PROBLEMS};
pub use db::Backend;
pub use health::{EndpointHealth, HealthUpdate};
pub use release::{
    pick_share, ActiveRelease, Canary, CanarySet, Move, NodeTraffic, Release, ReleaseSpec, ReleaseState, Staging,
};
pub use tokens::{Scope, TokenRecord};

/// One committed revision of the whole config. Immutable; shared as `Arc<State>`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub revision: Revision,
    pub config: Config,
}

/// A named resource with its spec, as a `PUT` carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    Cluster(String, Cluster),
    Listener(String, Listener),
    Route(String, Route),
    Certificate(String, Certificate),
}

impl Resource {
    pub fn kind(&self) -> Kind {
        match self {
            Resource::Cluster(..) => Kind::Cluster,
            Resource::Listener(..) => Kind::Listener,
            Resource::Route(..) => Kind::Route,
            Resource::Certificate(..) => Kind::Certificate,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Resource::Cluster(n, _)
            | Resource::Listener(n, _)
            | Resource::Route(n, _)
            | Resource::Certificate(n, _) => n,
        }
    }

    /// The resource's own rules, before any reference to others is looked at.
    pub fn validate_alone(&self) -> Result<(), ValidationError> {
        match self.problems().into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Every problem with its own rules (each independent part of it), name included.
    pub fn problems(&self) -> Vec<ValidationError> {
        let mut out: Vec<ValidationError> =
            sluice_shared::validate::name("name", self.name()).err().into_iter().collect();
        match self {
            Resource::Cluster(_, c) => out.extend(c.problems()),
            Resource::Listener(_, l) => out.extend(l.problems()),
            Resource::Route(_, r) => out.extend(r.problems()),
            Resource::Certificate(_, c) => out.extend(c.validate().err()),
        }
        out
    }

    /// Creates or replaces it in `config`.
    pub fn insert_into(self, config: &mut Config) {
        match self {
            Resource::Cluster(n, c) => config.clusters.insert(n, c).map(drop),
            Resource::Listener(n, l) => config.listeners.insert(n, l).map(drop),
            Resource::Route(n, r) => config.routes.insert(n, r).map(drop),
            Resource::Certificate(n, c) => config.certificates.insert(n, c).map(drop),
        };
    }
}

/// One write. Each successful one commits exactly one new revision.
// Writes are rare and short-lived; boxing the resource would only burden every caller.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Create or replace.
    Put(Resource),
    Delete(Kind, String),
    /// Changes only the weights of some of a route's backends; the others keep theirs.
    SetWeights {
        route: String,
        weights: BTreeMap<String, u32>,
    },
    /// Many resources at once: one revision when anything changed, none when nothing did.
    Batch(Batch),
    /// Makes the config equal to `config`, the config as of `revision` (a rollback).
    Restore {
        revision: Revision,
        config: Config,
    },
}

impl Change {
    /// What the revision history says of it beside the resources it changed.
    fn note(&self) -> Option<String> {
        match self {
            Change::Restore { revision, .. } => Some(format!("rollback to revision {revision}")),
            Change::SetWeights { route, .. } => Some(format!("weights of route {route}")),
            _ => None,
        }
    }
}

/// One revision as the history records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevisionRecord {
    pub revision: Revision,
    pub at_ms: i64,
    /// The caller that wrote it (a token's name, `admin`).
    pub who: String,
    pub changes: Vec<ResourceChange>,
    pub note: Option<String>,
}

/// The outcome of [`Store::write`] or [`Store::plan`].
#[derive(Debug, Clone)]
pub struct Written {
    /// After the write (or, for a plan, the config it would make at the current revision).
    pub state: Arc<State>,
    /// The config it was based on.
    pub before: Arc<State>,
    pub changes: Vec<ResourceChange>,
    /// False when nothing was written: a plan, or a batch equal to what is stored.
    pub committed: bool,
    /// Routes the write leaves that can never match, and why.
    pub warnings: Vec<Problem>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The change would make the config invalid (REST 422, or 409 when `kind` is `Conflict`).
    #[error("{0}")]
    Invalid(ValidationError),
    /// Every problem of a write of many resources (REST 422, or 409 when each is a conflict).
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Problems(Vec<Problem>),
    #[error("{kind} {name} does not exist")]
    NotFound { kind: Kind, name: String },
    #[error("{kind} {name} is still used by {}", by.join(", "))]
    InUse { kind: Kind, name: String, by: Vec<String> },
    /// A revision the history cannot show (REST 404).
    #[error("{0}")]
    NoHistory(String),
    #[error("revision is {current}, not {expected}")]
    RevisionMismatch { expected: Revision, current: Revision },
    /// The database cannot be reached or failed (REST 503). The text is for logs and operators.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

impl From<ValidationError> for StoreError {
    fn from(e: ValidationError) -> Self {
        StoreError::Invalid(e)
    }
}

/// Tuning for [`Store::open_with`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// How often to look for revisions committed by another control-plane replica.
    pub poll_interval: Duration,
    /// How long a request waits for a database connection before the store counts as unavailable.
    pub acquire_timeout: Duration,
    /// Every write is released this way unless it asks otherwise (`None`: at once).
    pub default_release: Option<ReleaseSpec>,
    /// How long opening waits for a Postgres server that is not up yet (refused, starting, its
    /// database not created yet), retrying with backoff; zero: one attempt.
    pub database_wait: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_millis(500),
            acquire_timeout: Duration::from_secs(5),
            default_release: None,
            database_wait: Duration::ZERO,
        }
    }
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    pool: AnyPool,
    backend: Backend,
    /// Serializes this process's writers (and reloads), so each sees the state the last one left.
    write_lock: Mutex<()>,
    published: watch::Sender<Arc<State>>,
    /// The staged release in progress, with the state its held nodes keep.
    release: watch::Sender<Option<Arc<ActiveRelease>>>,
    default_release: Option<ReleaseSpec>,
    /// Signs sticky cookies fleet-wide; sent in every snapshot.
    sticky_key: prost::bytes::Bytes,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("backend", &self.inner.backend).field("revision", &self.state().revision).finish()
    }
}

impl Store {
    /// Opens `sqlite://PATH` (the file is created if missing) or `postgres://…`, runs the
    /// migrations and loads the current state. Starts the poller for other replicas' writes.
    pub async fn open(database_url: &str) -> Result<Store, StoreError> {
        Self::open_with(database_url, StoreOptions::default()).await
    }

    pub async fn open_with(database_url: &str, opts: StoreOptions) -> Result<Store, StoreError> {
        let (pool, backend) = db::connect(database_url, opts.acquire_timeout, opts.database_wait).await?;
        db::migrate(&pool, backend).await?;
        let sticky_key = db::sticky_key(&pool).await?.into();
        let state = db::load_state(&pool, backend).await?;
        tracing::info!(?backend, revision = state.revision, "store opened");
        let (published, _) = watch::channel(Arc::new(state));
        let (release, _) = watch::channel(None);
        let inner = Arc::new(Inner {
            pool,
            backend,
            write_lock: Mutex::new(()),
            published,
            release,
            default_release: opts.default_release,
            sticky_key,
        });
        tokio::spawn(poll_other_replicas(Arc::downgrade(&inner), opts.poll_interval));
        let store = Store { inner };
        store.refresh_release().await?;
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        self.inner.backend
    }

    /// The key nodes sign sticky cookies with: the same on every replica of this database.
    pub fn sticky_key(&self) -> &prost::bytes::Bytes {
        &self.inner.sticky_key
    }

    /// The newest state this process knows (its own writes at once, other replicas' within a poll).
    pub fn state(&self) -> Arc<State> {
        self.inner.published.borrow().clone()
    }

    /// Every state this process commits or loads is published here, in revision order.
    pub fn subscribe(&self) -> watch::Receiver<Arc<State>> {
        self.inner.published.subscribe()
    }

    /// Applies one change in one transaction, written by `internal` (tests, the demo).
    pub async fn apply(&self, change: Change, if_match: Option<Revision>) -> Result<Arc<State>, StoreError> {
        Ok(self.write(change, if_match, "internal").await?.state)
    }

    /// [`Store::write_staged`] released as the control plane's default says.
    pub async fn write(&self, change: Change, if_match: Option<Revision>, who: &str) -> Result<Written, StoreError> {
        self.write_staged(change, if_match, who, &Staging::Default).await
    }

    /// Applies one change in one transaction, recording `who` in the revision history, and starts
    /// or joins a staged release as `staging` says. `if_match`: the revision the caller based it
    /// on. A rejected change stores nothing and bumps nothing; so does a batch that changes
    /// nothing.
    pub async fn write_staged(
        &self,
        change: Change,
        if_match: Option<Revision>,
        who: &str,
        staging: &Staging,
    ) -> Result<Written, StoreError> {
        let inner = &self.inner;
        let _guard = inner.write_lock.lock().await;
        let mut tx = inner.pool.begin().await.map_err(db::unavailable)?;
        // Taking the row first serializes us against other replicas until commit.
        let next = db::bump_revision(&mut tx).await?;
        let current = next - 1;
        let mut base = self.state();
        if base.revision != current {
            // Another replica wrote since we last looked: build on what the database holds.
            let config = db::load_config(&mut tx).await?;
            base = Arc::new(State { revision: current, config });
            inner.publish(base.clone());
        }
        if let Some(expected) = if_match.filter(|&e| e != current) {
            db::rollback(tx).await;
            return Err(StoreError::RevisionMismatch { expected, current });
        }
        let note = change.note();
        let planned = match plan_on(&base, change) {
            Ok(p) => p,
            Err(e) => {
                db::rollback(tx).await;
                return Err(e);
            }
        };
        let (always_commit, mut written) = planned;
        if written.changes.is_empty() && !always_commit {
            db::rollback(tx).await;
            return Ok(written);
        }
        db::write_changes(&mut tx, &written.state.config, &written.changes, next).await?;
        let record = RevisionRecord {
            revision: next,
            at_ms: unix_now_ms(),
            who: who.to_string(),
            changes: written.changes.clone(),
            note,
        };
        db::record_revision(&mut tx, &record).await?;
        if !written.changes.is_empty() {
            release::stage_write(&mut tx, staging, inner.default_release.as_ref(), next).await?;
        }
        tx.commit().await.map_err(db::unavailable)?;
        // The planned state is this write's alone: its config moves into the committed one.
        let config =
            Arc::try_unwrap(std::mem::take(&mut written.state)).map_or_else(|s| s.config.clone(), |s| s.config);
        let state = Arc::new(State { revision: next, config });
        // The release first: a session woken by the new state must already see who it holds back.
        if let Err(e) = self.refresh_release().await {
            tracing::warn!(error = %e, "reading the release after a write failed");
        }
        inner.publish(state.clone());
        tracing::debug!(revision = next, "committed");
        written.state = state;
        written.committed = true;
        Ok(written)
    }

    /// What `change` would do to the current config, without writing anything (a dry run).
    pub fn plan(&self, change: Change, if_match: Option<Revision>) -> Result<Written, StoreError> {
        let base = self.state();
        if let Some(expected) = if_match.filter(|&e| e != base.revision) {
            return Err(StoreError::RevisionMismatch { expected, current: base.revision });
        }
        Ok(plan_on(&base, change)?.1)
    }

    /// Recorded revisions, newest first: at most `limit`, none newer than `below`.
    pub async fn revisions(&self, limit: u32, below: Revision) -> Result<Vec<RevisionRecord>, StoreError> {
        db::revisions(&self.inner.pool, limit, below).await
    }

    pub async fn revision_record(&self, revision: Revision) -> Result<Option<RevisionRecord>, StoreError> {
        db::revision(&self.inner.pool, revision).await
    }

    /// The whole config as of `revision`; `NotFound` for revisions the history cannot rebuild
    /// (newer than the current one, or older than the history's start).
    pub async fn config_at(&self, revision: Revision) -> Result<Config, StoreError> {
        let since = db::history_since(&self.inner.pool).await?;
        let current = self.state().revision;
        if revision < since || revision > current {
            let why = if revision > current {
                format!("revision {revision} is newer than the current revision {current}")
            } else {
                format!("revision {revision} predates the recorded history, which starts at revision {since}")
            };
            return Err(StoreError::NoHistory(why));
        }
        db::config_at(&self.inner.pool, revision).await
    }

    /// Re-reads the state from the database now (as the poller does) and publishes it if newer.
    pub async fn refresh(&self) -> Result<Arc<State>, StoreError> {
        self.inner.refresh().await?;
        Ok(self.state())
    }

    pub async fn upsert_node(&self, n: &NodeRecord) -> Result<(), StoreError> {
        db::upsert_node(&self.inner.pool, n).await
    }

    pub async fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        db::nodes(&self.inner.pool).await
    }

    /// Closes the connection pool: later writes fail with `Unavailable`; the poller stops.
    pub async fn close(&self) {
        self.inner.pool.close().await;
    }

    /// Whether the database answers a trivial query within `timeout` (readiness).
    pub async fn ping(&self, timeout: Duration) -> Result<(), StoreError> {
        let query = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&self.inner.pool);
        match tokio::time::timeout(timeout, query).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(db::unavailable(e)),
            Err(_) => Err(StoreError::Unavailable(format!("no answer within {} ms", timeout.as_millis()))),
        }
    }
}

/// Applies `change` to `base` in memory: whether it commits a revision even unchanged, and what a
/// write of it reports (its state holds the new config, at the base's revision).
fn plan_on(base: &Arc<State>, change: Change) -> Result<(bool, Written), StoreError> {
    let applied = change::apply(&base.config, change)?;
    let changes = diff(&base.config, &applied.config);
    let touched = changes.iter().filter(|c| c.kind == Kind::Route && c.op != Op::Delete).map(|c| c.name.as_str());
    let warnings = sluice_shared::shadow::shadowed_routes(&applied.config, touched)
        .into_iter()
        .map(|(route, error)| Problem { resource: Some(format!("route {route}")), error })
        .collect();
    let planned = Written {
        state: Arc::new(State { revision: base.revision, config: applied.config }),
        before: base.clone(),
        changes,
        committed: false,
        warnings,
    };
    Ok((applied.always_commit, planned))
}

impl Inner {
    /// Publishes `state` unless something at least as new is already out.
    fn publish(&self, state: Arc<State>) {
        self.published.send_if_modified(|cur| {
            if state.revision > cur.revision {
                *cur = state;
                true
            } else {
                false
            }
        });
    }

    async fn refresh(&self) -> Result<(), StoreError> {
        let _guard = self.write_lock.lock().await;
        let state = db::load_state(&self.pool, self.backend).await?;
        self.publish(Arc::new(state));
        Ok(())
    }
}

/// Reloads when the database's revision moved without us (another control-plane replica wrote).
/// Ends when the store is dropped or closed.
async fn poll_other_replicas(inner: Weak<Inner>, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.pool.is_closed() {
            return;
        }
        match db::read_revision(&inner.pool).await {
            Ok(rev) if rev > inner.published.borrow().revision => {
                if let Err(e) = inner.refresh().await {
                    tracing::warn!(error = %e, "reloading the store failed");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "polling the store failed"),
        }
    }
}
