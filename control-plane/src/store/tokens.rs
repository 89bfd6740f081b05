//! API tokens: who may call the REST API and with which scopes. Only a SHA-256 of each secret is
//! stored. Tokens live beside the config, not in it: creating or revoking one commits no revision
//! (nodes never see tokens, so a revision would only make every node re-acknowledge nothing).
//! Every check reads the database, so a revoked token stops working at once, on every replica.

use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::db::unavailable;
use super::{Store, StoreError};
use sluice_shared::ValidationError;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Everything, tokens and the audit log included.
    Admin,
    /// Every GET of config and status (not tokens, not the audit log).
    Read,
    /// Create, replace and delete resources, and shift weights; not tokens.
    Write,
    /// Only `POST /v1/routes/{name}/weights`, on the token's `routes` when it lists any.
    Weights,
}

/// A stored token, without its secret.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub name: String,
    pub scopes: Vec<Scope>,
    /// Routes the `weights` scope is limited to; empty means every route.
    pub routes: Vec<String>,
    pub created_ms: i64,
    /// Hex SHA-256 of the secret. Never shown by the API.
    pub secret_sha256: String,
}

/// Leaves the hash out, so no log line carries it.
impl std::fmt::Debug for TokenRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenRecord")
            .field("name", &self.name)
            .field("scopes", &self.scopes)
            .field("routes", &self.routes)
            .field("created_ms", &self.created_ms)
            .finish_non_exhaustive()
    }
}

const COLUMNS: &str = "name, scopes, routes, created_ms, secret_sha256";

fn from_row(row: &sqlx::any::AnyRow) -> Result<TokenRecord, StoreError> {
    let name: String = row.try_get(0).map_err(unavailable)?;
    let json = |i: usize| -> Result<String, StoreError> { row.try_get(i).map_err(unavailable) };
    let unreadable = |e: serde_json::Error| StoreError::Unavailable(format!("stored token {name}: {e}"));
    Ok(TokenRecord {
        scopes: serde_json::from_str(&json(1)?).map_err(unreadable)?,
        routes: serde_json::from_str(&json(2)?).map_err(unreadable)?,
        created_ms: row.try_get(3).map_err(unavailable)?,
        secret_sha256: row.try_get(4).map_err(unavailable)?,
        name,
    })
}

impl Store {
    /// Stores a new token; a name already taken is a conflict (409), never a replacement.
    pub async fn create_token(&self, t: &TokenRecord) -> Result<(), StoreError> {
        let encode = |e: serde_json::Error| StoreError::Unavailable(format!("cannot encode token {}: {e}", t.name));
        let scopes = serde_json::to_string(&t.scopes).map_err(encode)?;
        let routes = serde_json::to_string(&t.routes).map_err(encode)?;
        let inserted = sqlx::query(
            "INSERT INTO tokens (name, scopes, routes, created_ms, secret_sha256) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(t.name.as_str())
        .bind(scopes)
        .bind(routes)
        .bind(t.created_ms)
        .bind(t.secret_sha256.as_str())
        .execute(&self.inner.pool)
        .await
        .map_err(unavailable)?;
        if inserted.rows_affected() == 0 {
            let message = format!("token {} already exists; delete it first to replace it", t.name);
            return Err(StoreError::Invalid(ValidationError::conflict(Some("name".into()), message)));
        }
        Ok(())
    }

    /// Every token, by name.
    pub async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM tokens ORDER BY name"))
            .fetch_all(&self.inner.pool)
            .await
            .map_err(unavailable)?;
        rows.iter().map(from_row).collect()
    }

    /// The token whose secret hashes to `secret_sha256`, if any.
    pub async fn token_by_hash(&self, secret_sha256: &str) -> Result<Option<TokenRecord>, StoreError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM tokens WHERE secret_sha256 = $1"))
            .bind(secret_sha256)
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(unavailable)?;
        row.as_ref().map(from_row).transpose()
    }

    /// Revokes a token; `false` when there was none of that name.
    pub async fn delete_token(&self, name: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM tokens WHERE name = $1")
            .bind(name)
            .execute(&self.inner.pool)
            .await
            .map_err(unavailable)?;
        Ok(done.rows_affected() > 0)
    }
}
