//! The SQL half of the store: connecting, migrations, and the few statements it runs.
//! Runtime-checked queries with `$1, $2, …` placeholders, which SQLite and Postgres both accept.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sluice_shared::changes::ResourceChange;
use sluice_shared::validate::parse_json;
use sluice_shared::{Config, Kind, Revision};
use sqlx::any::AnyRow;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{Any, AnyConnection, AnyPool, Connection, Executor, Row, Transaction};

use super::change::spec_json;
use super::wait;
use super::{RevisionRecord, State, StoreError};
use crate::nodes::NodeRecord;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/postgres");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub(super) fn unavailable(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Connects to `url`; a Postgres server that is not up yet is waited for, up to `wait`.
pub(super) async fn connect(
    url: &str,
    acquire_timeout: Duration,
    wait: Duration,
) -> Result<(AnyPool, Backend), StoreError> {
    sqlx::any::install_default_drivers();

    let (url, backend) = if url.starts_with("sqlite:") {
        (sqlite_url(url)?, Backend::Sqlite)
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        (url.to_string(), Backend::Postgres)
    } else {
        return Err(StoreError::Unavailable(format!(
            "unsupported database URL {:?}: use sqlite://PATH or postgres://…",
            redact(url)
        )));
    };
    let options = AnyConnectOptions::from_str(&url)
        .map_err(|e| StoreError::Unavailable(format!("invalid database URL {:?}: {e}", redact(&url))))?;
    let mut pool = AnyPoolOptions::new().acquire_timeout(acquire_timeout);
    pool = match backend {
        Backend::Sqlite => {
            let in_memory = url.contains(":memory:") || url.contains("mode=memory");
            // An in-memory database lives and dies with its one connection.
            let pool = if in_memory {
                pool.max_connections(1).idle_timeout(None).max_lifetime(None)
            } else {
                pool.max_connections(4)
            };
            pool.after_connect(|conn, _| {
                Box::pin(async move {
                    // busy_timeout first: switching to WAL may have to wait for another process.
                    conn.execute("PRAGMA busy_timeout = 5000").await?;
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA synchronous = NORMAL").await?;
                    Ok(())
                })
            })
        }
        Backend::Postgres => pool.max_connections(8),
    };
    let pool = match backend {
        Backend::Sqlite => pool.connect_with(options).await.map_err(unavailable)?,
        Backend::Postgres => {
            let what = format!("the database {}", redact(&url));
            wait::until_up(&what, wait, || postgres_attempt(&pool, &options)).await?
        }
    };
    Ok((pool, backend))
}

/// One try at Postgres. A single connection first: the pool retries refused connections by itself
/// and reports only that it timed out, while this one says why it failed.
async fn postgres_attempt(pool: &AnyPoolOptions, options: &AnyConnectOptions) -> Result<AnyPool, wait::Failed> {
    let timed_out = || wait::Failed::Retry(format!("no answer within {} s", wait::ATTEMPT_TIMEOUT.as_secs()));
    let probe = tokio::time::timeout(wait::ATTEMPT_TIMEOUT, AnyConnection::connect_with(options))
        .await
        .map_err(|_| timed_out())??;
    let _ = probe.close().await;
    Ok(pool.clone().connect_with(options.clone()).await?)
}

/// `sqlite://PATH` with `mode=rwc` added (create if missing) and the parent directory created.
fn sqlite_url(url: &str) -> Result<String, StoreError> {
    let rest = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if query.contains("mode=") || path.is_empty() || path == ":memory:" {
        return Ok(url.to_string());
    }
    if let Some(parent) = Path::new(path).parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| StoreError::Unavailable(format!("cannot create {}: {e}", parent.display())))?;
    }
    // The database holds private keys, token hashes and the sticky-cookie key: a new file is the
    // owner's only (SQLite gives its -wal and -shm files the same permissions).
    let mut create = std::fs::OpenOptions::new();
    create.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut create, 0o600);
    match create.open(path) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(StoreError::Unavailable(format!("cannot create {path}: {e}"))),
    }
    let sep = if query.is_empty() { "?" } else { "&" };
    Ok(format!("{url}{sep}mode=rwc"))
}

/// The URL without its password, for error messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***{}", &url[..s], &url[at..]),
        _ => url.to_string(),
    }
}

pub(super) async fn migrate(pool: &AnyPool, backend: Backend) -> Result<(), StoreError> {
    let migrator = match backend {
        Backend::Sqlite => &SQLITE_MIGRATIONS,
        Backend::Postgres => &POSTGRES_MIGRATIONS,
    };
    migrator.run(pool).await.map_err(|e| StoreError::Unavailable(format!("migrations failed: {e}")))
}

/// The fleet's sticky-cookie key: created by the first replica to open the database, then read
/// by every replica (a racing second insert does nothing).
pub(super) async fn sticky_key(pool: &AnyPool) -> Result<Vec<u8>, StoreError> {
    let fresh: [u8; 32] = rand::random();
    let hex: String = fresh.iter().map(|b| format!("{b:02x}")).collect();
    sqlx::query("INSERT INTO settings (name, value) VALUES ('sticky_key', $1) ON CONFLICT (name) DO NOTHING")
        .bind(hex)
        .execute(pool)
        .await
        .map_err(unavailable)?;
    let stored: String = sqlx::query_scalar("SELECT value FROM settings WHERE name = 'sticky_key'")
        .fetch_one(pool)
        .await
        .map_err(unavailable)?;
    (0..stored.len())
        .step_by(2)
        .map(|i| stored.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect::<Option<Vec<u8>>>()
        .filter(|k| k.len() == 32)
        .ok_or_else(|| StoreError::Unavailable("the stored sticky_key is not 64 hex digits".into()))
}

pub(super) async fn read_revision<'e>(ex: impl Executor<'e, Database = Any>) -> Result<Revision, StoreError> {
    let rev: i64 =
        sqlx::query_scalar("SELECT revision FROM revision WHERE id = 1").fetch_one(ex).await.map_err(unavailable)?;
    to_revision(rev)
}

pub(super) fn to_revision(v: i64) -> Result<Revision, StoreError> {
    Revision::try_from(v).map_err(|_| StoreError::Unavailable(format!("stored revision {v} is negative")))
}

pub(super) fn to_db(rev: Revision) -> Result<i64, StoreError> {
    i64::try_from(rev).map_err(|_| StoreError::Unavailable(format!("revision {rev} does not fit the database")))
}

/// Bumps the revision row and returns the new revision. Locks the row until the transaction ends.
pub(super) async fn bump_revision(tx: &mut Transaction<'static, Any>) -> Result<Revision, StoreError> {
    let rev: i64 = sqlx::query_scalar("UPDATE revision SET revision = revision + 1 WHERE id = 1 RETURNING revision")
        .fetch_one(&mut **tx)
        .await
        .map_err(unavailable)?;
    to_revision(rev)
}

pub(super) async fn rollback(tx: Transaction<'static, Any>) {
    if let Err(e) = tx.rollback().await {
        // The connection is discarded either way; nothing was committed.
        tracing::debug!(error = %e, "rollback failed");
    }
}

/// A consistent (snapshot) read of the revision and every resource.
pub(super) async fn load_state(pool: &AnyPool, backend: Backend) -> Result<State, StoreError> {
    let mut tx = pool.begin().await.map_err(unavailable)?;
    if backend == Backend::Postgres {
        // Postgres' default isolation reads each statement at a different point in time.
        tx.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ").await.map_err(unavailable)?;
    }
    let revision = read_revision(&mut *tx).await?;
    let config = load_config(&mut tx).await?;
    tx.commit().await.map_err(unavailable)?;
    Ok(State { revision, config })
}

pub(super) async fn load_config(tx: &mut Transaction<'static, Any>) -> Result<Config, StoreError> {
    let rows = sqlx::query("SELECT kind, name, spec FROM resources").fetch_all(&mut **tx).await.map_err(unavailable)?;
    config_of(rows)
}

/// A config from `(kind, name, spec)` rows.
fn config_of(rows: Vec<AnyRow>) -> Result<Config, StoreError> {
    let mut config = Config::default();
    for row in rows {
        let kind: String = row.try_get(0).map_err(unavailable)?;
        let name: String = row.try_get(1).map_err(unavailable)?;
        let spec: String = row.try_get(2).map_err(unavailable)?;
        let unreadable = |e: &dyn std::fmt::Display| StoreError::Unavailable(format!("stored {kind} {name}: {e}"));
        let spec = spec.as_bytes();
        match Kind::parse(&kind) {
            Some(Kind::Cluster) => {
                config.clusters.insert(name.clone(), parse_json(spec).map_err(|e| unreadable(&e))?).map(drop)
            }
            Some(Kind::Listener) => {
                config.listeners.insert(name.clone(), parse_json(spec).map_err(|e| unreadable(&e))?).map(drop)
            }
            Some(Kind::Route) => {
                config.routes.insert(name.clone(), parse_json(spec).map_err(|e| unreadable(&e))?).map(drop)
            }
            Some(Kind::Certificate) => {
                config.certificates.insert(name.clone(), parse_json(spec).map_err(|e| unreadable(&e))?).map(drop)
            }
            None => return Err(unreadable(&"unknown kind")),
        };
    }
    Ok(config)
}

/// Writes what `changes` say `config` now holds: each resource's row and its history row.
pub(super) async fn write_changes(
    tx: &mut Transaction<'static, Any>,
    config: &Config,
    changes: &[ResourceChange],
    revision: Revision,
) -> Result<(), StoreError> {
    let rev = to_db(revision)?;
    for c in changes {
        let spec = spec_json(config, c.kind, &c.name)?;
        let query = match &spec {
            Some(spec) => sqlx::query(
                "INSERT INTO resources (kind, name, spec, revision) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (kind, name) DO UPDATE SET spec = excluded.spec, revision = excluded.revision",
            )
            .bind(c.kind.singular())
            .bind(c.name.as_str())
            .bind(spec.as_str())
            .bind(rev),
            None => sqlx::query("DELETE FROM resources WHERE kind = $1 AND name = $2")
                .bind(c.kind.singular())
                .bind(c.name.as_str()),
        };
        query.execute(&mut **tx).await.map_err(unavailable)?;
        sqlx::query("INSERT INTO resource_history (revision, kind, name, spec) VALUES ($1, $2, $3, $4)")
            .bind(rev)
            .bind(c.kind.singular())
            .bind(c.name.as_str())
            .bind(spec)
            .execute(&mut **tx)
            .await
            .map_err(unavailable)?;
    }
    Ok(())
}

pub(super) async fn record_revision(
    tx: &mut Transaction<'static, Any>,
    record: &RevisionRecord,
) -> Result<(), StoreError> {
    let summary = serde_json::json!({ "changes": record.changes, "note": record.note }).to_string();
    sqlx::query("INSERT INTO revisions (revision, at_ms, who, summary) VALUES ($1, $2, $3, $4)")
        .bind(to_db(record.revision)?)
        .bind(record.at_ms)
        .bind(record.who.as_str())
        .bind(summary)
        .execute(&mut **tx)
        .await
        .map_err(unavailable)?;
    Ok(())
}

/// The newest `limit` recorded revisions at or below `below`, newest first.
pub(super) async fn revisions(pool: &AnyPool, limit: u32, below: Revision) -> Result<Vec<RevisionRecord>, StoreError> {
    let rows = sqlx::query(
        "SELECT revision, at_ms, who, summary FROM revisions WHERE revision <= $1 ORDER BY revision DESC LIMIT $2",
    )
    .bind(to_db(below)?)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await
    .map_err(unavailable)?;
    rows.iter().map(revision_record).collect()
}

pub(super) async fn revision(pool: &AnyPool, revision: Revision) -> Result<Option<RevisionRecord>, StoreError> {
    let row = sqlx::query("SELECT revision, at_ms, who, summary FROM revisions WHERE revision = $1")
        .bind(to_db(revision)?)
        .fetch_optional(pool)
        .await
        .map_err(unavailable)?;
    row.as_ref().map(revision_record).transpose()
}

fn revision_record(row: &AnyRow) -> Result<RevisionRecord, StoreError> {
    #[derive(serde::Deserialize)]
    struct Summary {
        #[serde(default)]
        changes: Vec<ResourceChange>,
        #[serde(default)]
        note: Option<String>,
    }
    let revision = to_revision(row.try_get(0).map_err(unavailable)?)?;
    let summary: String = row.try_get(3).map_err(unavailable)?;
    let summary: Summary = serde_json::from_str(&summary)
        .map_err(|e| StoreError::Unavailable(format!("stored summary of revision {revision}: {e}")))?;
    Ok(RevisionRecord {
        revision,
        at_ms: row.try_get(1).map_err(unavailable)?,
        who: row.try_get(2).map_err(unavailable)?,
        changes: summary.changes,
        note: summary.note,
    })
}

/// The first revision whose whole config the history can rebuild.
pub(super) async fn history_since(pool: &AnyPool) -> Result<Revision, StoreError> {
    let value: Option<String> = sqlx::query_scalar("SELECT value FROM settings WHERE name = 'history_since'")
        .fetch_optional(pool)
        .await
        .map_err(unavailable)?;
    Ok(value.and_then(|v| v.parse().ok()).unwrap_or(0))
}

/// The whole config as it was at `revision`: each resource's newest history row at or below it.
pub(super) async fn config_at(pool: &AnyPool, revision: Revision) -> Result<Config, StoreError> {
    let rows = sqlx::query(
        "SELECT h.kind, h.name, h.spec FROM resource_history h \
         WHERE h.spec IS NOT NULL AND h.revision = (SELECT MAX(o.revision) FROM resource_history o \
         WHERE o.kind = h.kind AND o.name = h.name AND o.revision <= $1)",
    )
    .bind(to_db(revision)?)
    .fetch_all(pool)
    .await
    .map_err(unavailable)?;
    config_of(rows)
}

pub(super) async fn upsert_node(pool: &AnyPool, n: &NodeRecord) -> Result<(), StoreError> {
    let (nack_revision, nack_message) = match &n.last_nack {
        Some((rev, msg)) => (Some(to_db(*rev)?), Some(msg.as_str())),
        None => (None, None),
    };
    let resource_errors = serde_json::to_string(&n.resource_errors)
        .map_err(|e| StoreError::Unavailable(format!("cannot encode the errors of node {}: {e}", n.id)))?;
    sqlx::query(
        "INSERT INTO nodes (id, node_group, acked_revision, nack_revision, nack_message, last_seen_ms, connected, \
         resource_errors) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (id) DO UPDATE SET node_group = excluded.node_group, acked_revision = excluded.acked_revision, \
         nack_revision = excluded.nack_revision, nack_message = excluded.nack_message, \
         last_seen_ms = excluded.last_seen_ms, connected = excluded.connected, \
         resource_errors = excluded.resource_errors",
    )
    .bind(n.id.as_str())
    .bind(n.group.as_str())
    .bind(to_db(n.acked_revision)?)
    .bind(nack_revision)
    .bind(nack_message)
    .bind(n.last_seen_ms)
    .bind(i64::from(n.connected))
    .bind(resource_errors)
    .execute(pool)
    .await
    .map_err(unavailable)?;
    Ok(())
}

pub(super) async fn nodes(pool: &AnyPool) -> Result<Vec<NodeRecord>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, node_group, acked_revision, nack_revision, nack_message, last_seen_ms, connected, \
         resource_errors FROM nodes ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .map_err(unavailable)?;
    rows.iter()
        .map(|row| {
            let nack_revision: Option<i64> = row.try_get(3).map_err(unavailable)?;
            let nack_message: Option<String> = row.try_get(4).map_err(unavailable)?;
            let last_nack = match nack_revision {
                Some(rev) => Some((to_revision(rev)?, nack_message.unwrap_or_default())),
                None => None,
            };
            Ok(NodeRecord {
                id: row.try_get(0).map_err(unavailable)?,
                group: row.try_get(1).map_err(unavailable)?,
                acked_revision: to_revision(row.try_get(2).map_err(unavailable)?)?,
                last_nack,
                last_seen_ms: row.try_get(5).map_err(unavailable)?,
                connected: row.try_get::<i64, _>(6).map_err(unavailable)? != 0,
                resource_errors: serde_json::from_str(&row.try_get::<String, _>(7).map_err(unavailable)?)
                    .map_err(|e| StoreError::Unavailable(format!("stored resource errors: {e}")))?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_create_the_file() {
        let dir = std::env::temp_dir().join(format!("sluice-url-{}", std::process::id()));
        let url = format!("sqlite://{}/a/b.db", dir.display());
        assert_eq!(sqlite_url(&url).unwrap(), format!("{url}?mode=rwc"));
        assert!(dir.join("a").is_dir());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join("a/b.db")).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "the database is the owner's only");
        }
        // An existing database is opened as it is.
        assert_eq!(sqlite_url(&url).unwrap(), format!("{url}?mode=rwc"));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(sqlite_url("sqlite::memory:").unwrap(), "sqlite::memory:");
        assert_eq!(sqlite_url("sqlite://x.db?mode=ro").unwrap(), "sqlite://x.db?mode=ro");
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://***@h/db");
    }
}
