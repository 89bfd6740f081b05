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

impl Store {
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
