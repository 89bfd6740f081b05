//! The audit log: one row per mutating API call, allowed or refused. It holds who, what (method and
//! path), the revision before and after, and the status; never a request body, so no secret.

use sluice_shared::Revision;
use sqlx::Row;

use super::db::{to_db, to_revision, unavailable};
use super::{Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Assigned by the database (ascending); ignored when recording.
    pub id: i64,
    pub at_ms: i64,
    /// Token name, `admin` for the admin token, `anonymous` or `invalid-token` otherwise.
    pub who: String,
    pub method: String,
    pub path: String,
    pub revision_before: Revision,
    /// Equals `revision_before` unless the call committed a revision.
    pub revision_after: Revision,
    pub status: u16,
}

/// How much of the audit log to keep. Anyone can add entries (refused calls are recorded too), so
/// the log needs a bound on its size as well as on its age.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditRetention {
    /// Entries older than this go; `None`: no age limit.
    pub max_age: Option<std::time::Duration>,
    /// Only the newest this many stay; `None`: no count limit.
    pub max_entries: Option<u64>,
}

impl Default for AuditRetention {
    fn default() -> Self {
        AuditRetention { max_age: Some(std::time::Duration::from_secs(90 * 24 * 3600)), max_entries: Some(1_000_000) }
    }
}

impl Store {
    /// Deletes what `retention` does not keep, as of `now_ms`; returns how many entries went.
    pub async fn prune_audit(&self, retention: AuditRetention, now_ms: i64) -> Result<u64, StoreError> {
        let mut deleted = 0;
        if let Some(age) = retention.max_age {
            let cutoff = now_ms.saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX));
            let done = sqlx::query("DELETE FROM audit WHERE at_ms < $1")
                .bind(cutoff)
                .execute(&self.inner.pool)
                .await
                .map_err(unavailable)?;
            deleted += done.rows_affected();
        }
        if let Some(max) = retention.max_entries {
            // Ids ascend with insertion, so the newest `max` are the ids above MAX(id) - max.
            let done = sqlx::query("DELETE FROM audit WHERE id <= (SELECT MAX(id) FROM audit) - $1")
                .bind(i64::try_from(max).unwrap_or(i64::MAX))
                .execute(&self.inner.pool)
                .await
                .map_err(unavailable)?;
            deleted += done.rows_affected();
        }
        Ok(deleted)
    }

    pub async fn record_audit(&self, e: &AuditEntry) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit (at_ms, who, method, path, revision_before, revision_after, status) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(e.at_ms)
        .bind(e.who.as_str())
        .bind(e.method.as_str())
        .bind(e.path.as_str())
        .bind(to_db(e.revision_before)?)
        .bind(to_db(e.revision_after)?)
        .bind(i64::from(e.status))
        .execute(&self.inner.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    /// The newest `limit` entries, newest first.
    pub async fn audit(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at_ms, who, method, path, revision_before, revision_after, status \
             FROM audit ORDER BY id DESC LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.inner.pool)
        .await
        .map_err(unavailable)?;
        rows.iter()
            .map(|row| {
                let status: i64 = row.try_get(7).map_err(unavailable)?;
                Ok(AuditEntry {
                    id: row.try_get(0).map_err(unavailable)?,
                    at_ms: row.try_get(1).map_err(unavailable)?,
                    who: row.try_get(2).map_err(unavailable)?,
                    method: row.try_get(3).map_err(unavailable)?,
                    path: row.try_get(4).map_err(unavailable)?,
                    revision_before: to_revision(row.try_get(5).map_err(unavailable)?)?,
                    revision_after: to_revision(row.try_get(6).map_err(unavailable)?)?,
                    status: u16::try_from(status).unwrap_or(0),
                })
            })
            .collect()
    }
}
