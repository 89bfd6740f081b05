//! Staged releases in the store: the `releases` rows, the release a write starts or joins (in the
//! write's own transaction), the active one published for the stream sessions with the config its
//! held nodes keep, and the nodes' traffic counts the canary is judged by.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sluice_shared::clock::unix_now_ms;
use sluice_shared::Revision;
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use super::db::{to_db, to_revision, unavailable};
use super::{State, Store, StoreError};

/// Which nodes take a release first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Canary {
    /// Every node of this group.
    Group(String),
    /// This share of the connected nodes (at least one), chosen when the release starts.
    Percent(u8),
}

/// How a write is released: to the canary nodes first, then, once they applied it cleanly and
/// their error rate held for `bake`, to every node.
#[derive(Debug, Clone, PartialEq)]
pub struct ReleaseSpec {
    pub canary: Canary,
    pub bake: Duration,
    /// Over the bake, 5xx responses over all responses of the canary nodes above this fail it.
    pub max_error_rate: f64,
}

/// How a write reaches the fleet.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Staging {
    /// The control plane's default release, if it has one; a write during a release joins it.
    #[default]
    Default,
    /// A release of its own (or joining the one in progress).
    Release(ReleaseSpec),
    /// At once, leaving a release in progress as it is (a failed release's revert).
    Immediate,
}

/// The canary nodes as the release row holds them: a group, or the ids chosen at the start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum CanarySet {
    Group(String),
    Nodes(Vec<String>),
}

impl CanarySet {
    pub fn includes(&self, node_id: &str, group: &str) -> bool {
        match self {
            CanarySet::Group(g) => g == group,
            CanarySet::Nodes(ids) => ids.iter().any(|n| n == node_id),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseState {
    /// Waiting for the canary nodes to apply the newest revision cleanly.
    Applying,
    /// Every canary node applied it; its error rate is watched for the bake time.
    Baking,
    /// Every node has it.
    Released,
    /// A canary node refused it or erred too often: reverted, stopped.
    Failed,
}

impl ReleaseState {
    fn as_str(self) -> &'static str {
        match self {
            ReleaseState::Applying => "applying",
            ReleaseState::Baking => "baking",
            ReleaseState::Released => "released",
            ReleaseState::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "applying" => ReleaseState::Applying,
            "baking" => ReleaseState::Baking,
            "released" => ReleaseState::Released,
            "failed" => ReleaseState::Failed,
            _ => return None,
        })
    }

    pub fn is_active(self) -> bool {
        matches!(self, ReleaseState::Applying | ReleaseState::Baking)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Release {
    /// The write that started it.
    pub revision: Revision,
    /// What the other nodes keep meanwhile.
    pub stable_revision: Revision,
    pub canary: CanarySet,
    pub bake_ms: u64,
    pub max_error_rate: f64,
    pub state: ReleaseState,
    pub reason: Option<String>,
    pub started_ms: i64,
    /// Since when the canary nodes have to apply the newest revision (reset by each joining write).
    pub applying_since_ms: i64,
    pub baking_since_ms: Option<i64>,
    /// The canary nodes' (requests, errors) when the bake started.
    pub baseline: BTreeMap<String, (u64, u64)>,
    /// The revision that restored the stable config when it failed.
    pub reverted_revision: Option<Revision>,
    pub updated_ms: i64,
}

/// What moving a release records beside its new state.
#[derive(Debug, Default)]
pub struct Move<'a> {
    pub reason: Option<&'a str>,
    /// The canary nodes' counts when the bake starts.
    pub baseline: Option<&'a BTreeMap<String, (u64, u64)>>,
    pub reverted_revision: Option<Revision>,
}

/// A release in progress and the state its held nodes keep.
#[derive(Debug)]
pub struct ActiveRelease {
    pub release: Release,
    pub stable: Arc<State>,
}

/// A node's response counts since it started, as it last reported them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeTraffic {
    pub revision: Revision,
    pub requests: u64,
    pub errors: u64,
}

/// The release in progress (at most one), newest first should there ever be more.
const ACTIVE: &str = "WHERE state IN ('applying', 'baking') ORDER BY revision DESC LIMIT 1";

const COLUMNS: &str = "revision, stable_revision, canary, bake_ms, max_error_rate, state, reason, started_ms, \
                       applying_since_ms, baking_since_ms, baseline, updated_ms, reverted_revision";

fn bad(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("stored release {what}: {e}"))
}

fn release_of(row: &AnyRow) -> Result<Release, StoreError> {
    let canary: String = row.try_get(2).map_err(unavailable)?;
    let state: String = row.try_get(5).map_err(unavailable)?;
    let baseline: String = row.try_get(10).map_err(unavailable)?;
    Ok(Release {
        revision: to_revision(row.try_get(0).map_err(unavailable)?)?,
        stable_revision: to_revision(row.try_get(1).map_err(unavailable)?)?,
        canary: serde_json::from_str(&canary).map_err(|e| bad("canary", e))?,
        bake_ms: u64::try_from(row.try_get::<i64, _>(3).map_err(unavailable)?).unwrap_or(0),
        max_error_rate: row.try_get(4).map_err(unavailable)?,
        state: ReleaseState::parse(&state).ok_or_else(|| bad("state", &state))?,
        reason: row.try_get(6).map_err(unavailable)?,
        started_ms: row.try_get(7).map_err(unavailable)?,
        applying_since_ms: row.try_get(8).map_err(unavailable)?,
        baking_since_ms: row.try_get(9).map_err(unavailable)?,
        baseline: serde_json::from_str(&baseline).map_err(|e| bad("baseline", e))?,
        updated_ms: row.try_get(11).map_err(unavailable)?,
        reverted_revision: row.try_get::<Option<i64>, _>(12).map_err(unavailable)?.map(to_revision).transpose()?,
    })
}

/// The release in progress, if any (inside a write's transaction).
pub(super) async fn active_in(tx: &mut Transaction<'static, Any>) -> Result<Option<Release>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM releases {ACTIVE}");
    let row = sqlx::query(&sql).fetch_optional(&mut **tx).await.map_err(unavailable)?;
    row.as_ref().map(release_of).transpose()
}

/// Starts a release of `revision` (about to commit) or makes it join the one in progress, as
/// `staging` and the default ask. Runs inside the write's transaction.
pub(super) async fn stage_write(
    tx: &mut Transaction<'static, Any>,
    staging: &Staging,
    default: Option<&ReleaseSpec>,
    revision: Revision,
) -> Result<(), StoreError> {
    if *staging == Staging::Immediate {
        return Ok(());
    }
    let now = unix_now_ms();
    if let Some(active) = active_in(tx).await? {
        // The canary nodes now have to apply this revision too, and bake it from the start.
        sqlx::query(
            "UPDATE releases SET state = 'applying', applying_since_ms = $1, baking_since_ms = NULL, \
             baseline = '{}', updated_ms = $1 WHERE revision = $2",
        )
        .bind(now)
        .bind(to_db(active.revision)?)
        .execute(&mut **tx)
        .await
        .map_err(unavailable)?;
        return Ok(());
    }
    let spec = match staging {
        Staging::Release(spec) => spec,
        _ => match default {
            Some(spec) => spec,
            None => return Ok(()),
        },
    };
    let canary = match &spec.canary {
        Canary::Group(g) => CanarySet::Group(g.clone()),
        Canary::Percent(p) => CanarySet::Nodes(pick_share(&connected_nodes(tx).await?, *p, revision)),
    };
    let canary = serde_json::to_string(&canary).map_err(|e| bad("canary", e))?;
    let sql = format!("INSERT INTO releases ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, 'applying', NULL, $6, $6, NULL, '{{}}', $6, NULL)");
    sqlx::query(&sql)
        .bind(to_db(revision)?)
        .bind(to_db(revision - 1)?)
        .bind(canary)
        .bind(i64::try_from(spec.bake.as_millis()).unwrap_or(i64::MAX))
        .bind(spec.max_error_rate)
        .bind(now)
        .execute(&mut **tx)
        .await
        .map_err(unavailable)?;
    Ok(())
}

async fn connected_nodes(tx: &mut Transaction<'static, Any>) -> Result<Vec<String>, StoreError> {
    let rows = sqlx::query("SELECT id FROM nodes WHERE connected = 1 ORDER BY id")
        .fetch_all(&mut **tx)
        .await
        .map_err(unavailable)?;
    rows.iter().map(|r| r.try_get::<String, _>(0).map_err(unavailable)).collect()
}

/// `percent` of `nodes` (at least one, when there are any), chosen by a hash of the release and
/// the node id: every replica picks the same, and successive releases pick different nodes.
pub fn pick_share(nodes: &[String], percent: u8, release: Revision) -> Vec<String> {
    use std::hash::{Hash, Hasher};
    let mut ranked: Vec<(u64, &String)> = nodes
        .iter()
        .map(|n| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (release, n).hash(&mut h);
            (h.finish(), n)
        })
        .collect();
    ranked.sort();
    let want = (nodes.len() * usize::from(percent.min(100))).div_ceil(100).max(1).min(nodes.len());
    let mut picked: Vec<String> = ranked.into_iter().take(want).map(|(_, n)| n.clone()).collect();
    picked.sort();
    picked
}

impl Store {
    /// The release in progress and the state its held nodes keep, as last published.
    pub fn active_release(&self) -> Option<Arc<ActiveRelease>> {
        self.inner.release.borrow().clone()
    }

    pub fn subscribe_release(&self) -> tokio::sync::watch::Receiver<Option<Arc<ActiveRelease>>> {
        self.inner.release.subscribe()
    }

    /// Re-reads the release in progress and publishes it (another replica may have moved it).
    pub async fn refresh_release(&self) -> Result<Option<Arc<ActiveRelease>>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM releases {ACTIVE}");
        let row = sqlx::query(&sql).fetch_optional(&self.inner.pool).await.map_err(unavailable)?;
        let release = row.as_ref().map(release_of).transpose()?;
        let current = self.active_release();
        let next = match release {
            None => None,
            Some(r) if current.as_ref().is_some_and(|c| c.release == r) => current.clone(),
            Some(r) => {
                let stable = match current.as_ref().filter(|c| c.stable.revision == r.stable_revision) {
                    Some(c) => c.stable.clone(),
                    None => Arc::new(State {
                        revision: r.stable_revision,
                        config: self.config_at(r.stable_revision).await?,
                    }),
                };
                Some(Arc::new(ActiveRelease { release: r, stable }))
            }
        };
        let changed = match (&current, &next) {
            (Some(a), Some(b)) => !Arc::ptr_eq(a, b),
            (None, None) => false,
            _ => true,
        };
        if changed {
            self.inner.release.send_replace(next.clone());
        }
        Ok(next)
    }

    /// The newest release, whatever its state.
    pub async fn latest_release(&self) -> Result<Option<Release>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM releases ORDER BY revision DESC LIMIT 1");
        let row = sqlx::query(&sql).fetch_optional(&self.inner.pool).await.map_err(unavailable)?;
        row.as_ref().map(release_of).transpose()
    }

    /// Moves release `revision` from `from` to `to`, recording what `m` holds; false when it was
    /// no longer in `from` (another replica moved it first).
    pub async fn move_release(
        &self,
        revision: Revision,
        from: ReleaseState,
        to: ReleaseState,
        m: Move<'_>,
    ) -> Result<bool, StoreError> {
        let now = unix_now_ms();
        let baseline = m.baseline.map(serde_json::to_string).transpose().map_err(|e| bad("baseline", e))?;
        let reverted = m.reverted_revision.map(to_db).transpose()?;
        let done = sqlx::query(
            "UPDATE releases SET state = $1, reason = COALESCE($2, reason), \
             baking_since_ms = CASE WHEN $1 = 'baking' THEN $3 ELSE baking_since_ms END, \
             baseline = COALESCE($4, baseline), reverted_revision = COALESCE($7, reverted_revision), \
             updated_ms = $3 WHERE revision = $5 AND state = $6",
        )
        .bind(to.as_str())
        .bind(m.reason)
        .bind(now)
        .bind(baseline)
        .bind(to_db(revision)?)
        .bind(from.as_str())
        .bind(reverted)
        .execute(&self.inner.pool)
        .await
        .map_err(unavailable)?
        .rows_affected()
            == 1;
        self.refresh_release().await?;
        Ok(done)
    }

    pub async fn record_traffic(&self, node_id: &str, t: NodeTraffic) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO node_traffic (node_id, revision, requests, errors, updated_ms) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (node_id) DO UPDATE SET revision = excluded.revision, requests = excluded.requests, \
             errors = excluded.errors, updated_ms = excluded.updated_ms",
        )
        .bind(node_id)
        .bind(to_db(t.revision)?)
        .bind(i64::try_from(t.requests).unwrap_or(i64::MAX))
        .bind(i64::try_from(t.errors).unwrap_or(i64::MAX))
        .bind(unix_now_ms())
        .execute(&self.inner.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    pub async fn node_traffic(&self) -> Result<BTreeMap<String, NodeTraffic>, StoreError> {
        let rows = sqlx::query("SELECT node_id, revision, requests, errors FROM node_traffic")
            .fetch_all(&self.inner.pool)
            .await
            .map_err(unavailable)?;
        let count = |v: i64| u64::try_from(v).unwrap_or(0);
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get::<String, _>(0).map_err(unavailable)?,
                    NodeTraffic {
                        revision: to_revision(r.try_get(1).map_err(unavailable)?)?,
                        requests: count(r.try_get(2).map_err(unavailable)?),
                        errors: count(r.try_get(3).map_err(unavailable)?),
                    },
                ))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_is_at_least_one_node_and_the_same_on_every_replica() {
        let nodes: Vec<String> = (0..10).map(|i| format!("n{i}")).collect();
        assert_eq!(pick_share(&nodes, 10, 7).len(), 1);
        assert_eq!(pick_share(&nodes, 25, 7).len(), 3);
        assert_eq!(pick_share(&nodes, 100, 7).len(), 10);
        assert_eq!(pick_share(&nodes, 1, 7).len(), 1);
        assert_eq!(pick_share(&nodes, 30, 7), pick_share(&nodes, 30, 7));
        assert!(pick_share(&[], 50, 7).is_empty());
        let firsts: std::collections::BTreeSet<_> = (0..20).map(|r| pick_share(&nodes, 10, r)).collect();
        assert!(firsts.len() > 1, "releases spread over the fleet");
    }

    #[test]
    fn canary_sets() {
        assert!(CanarySet::Group("edge".into()).includes("any", "edge"));
        assert!(!CanarySet::Group("edge".into()).includes("any", "core"));
        assert!(CanarySet::Nodes(vec!["a".into()]).includes("a", "core"));
    }
}
