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
mod change;
mod db;
mod health;
#[cfg(test)]
pub(crate) mod testdb;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_access;
mod tokens;

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use sluice_shared::model::{Certificate, Cluster, Listener, Route};
use sluice_shared::{Config, Kind, Revision, ValidationError};
use sqlx::AnyPool;
use tokio::sync::{watch, Mutex};

use crate::nodes::NodeRecord;

pub use audit::{AuditEntry, AuditRetention};
pub use db::Backend;
pub use health::{EndpointHealth, HealthUpdate};
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
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The change would make the config invalid (REST 422, or 409 when `kind` is `Conflict`).
    #[error("{0}")]
    Invalid(ValidationError),
    #[error("{kind} {name} does not exist")]
    NotFound { kind: Kind, name: String },
    #[error("{kind} {name} is still used by {}", by.join(", "))]
    InUse { kind: Kind, name: String, by: Vec<String> },
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
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self { poll_interval: Duration::from_millis(500), acquire_timeout: Duration::from_secs(5) }
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
        let (pool, backend) = db::connect(database_url, opts.acquire_timeout).await?;
        db::migrate(&pool, backend).await?;
        let sticky_key = db::sticky_key(&pool).await?.into();
        let state = db::load_state(&pool, backend).await?;
        tracing::info!(?backend, revision = state.revision, "store opened");
        let (published, _) = watch::channel(Arc::new(state));
        let inner = Arc::new(Inner { pool, backend, write_lock: Mutex::new(()), published, sticky_key });
        tokio::spawn(poll_other_replicas(Arc::downgrade(&inner), opts.poll_interval));
        Ok(Store { inner })
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

    /// Applies one change in one transaction. `if_match`: the revision the caller based it on.
    /// A rejected change stores nothing and bumps nothing.
    pub async fn apply(&self, change: Change, if_match: Option<Revision>) -> Result<Arc<State>, StoreError> {
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
        let (config, write) = match change::apply(&base.config, change) {
            Ok(ok) => ok,
            Err(e) => {
                db::rollback(tx).await;
                return Err(e);
            }
        };
        db::write_row(&mut tx, &write, next).await?;
        tx.commit().await.map_err(db::unavailable)?;
        let state = Arc::new(State { revision: next, config });
        inner.publish(state.clone());
        tracing::debug!(revision = next, "committed");
        Ok(state)
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
