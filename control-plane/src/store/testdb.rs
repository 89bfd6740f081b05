//! Test databases: every store and API test runs once on a fresh SQLite file and once on a fresh
//! Postgres schema (postgres://postgres@127.0.0.1:5432/test, or env `SLUICE_TEST_POSTGRES_URL`).
//! An unreachable Postgres skips that half with a notice, unless env `CI` is set: then it fails.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;
use sqlx::{AnyConnection, Connection, Executor};

use super::Backend;

const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Runs `test(url, backend)` on SQLite, then on Postgres. The databases are removed afterwards.
pub(crate) async fn each_backend<F, Fut>(test: F)
where
    F: Fn(String, Backend) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("sluice.db").display());
    eprintln!("--- backend: sqlite");
    test(url, Backend::Sqlite).await;

    let Some((admin, schema, url)) = postgres_schema().await else { return };
    eprintln!("--- backend: postgres (schema {schema})");
    let outcome = AssertUnwindSafe(test(url, Backend::Postgres)).catch_unwind().await;
    drop_schema(admin, &schema).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// A fresh schema and a URL whose connections use it, or `None` (skip) when Postgres is unreachable.
async fn postgres_schema() -> Option<(AnyConnection, String, String)> {
    sqlx::any::install_default_drivers();
    let base = std::env::var("SLUICE_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_string());
    let connected = tokio::time::timeout(Duration::from_secs(5), AnyConnection::connect(&base)).await;
    let mut admin = match connected {
        Ok(Ok(conn)) => conn,
        failed => {
            let why = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => "timed out".to_string(),
            };
            if std::env::var_os("CI").is_some() {
                panic!("postgres at {base} is unreachable ({why}) and CI is set: the postgres suite must run");
            }
            // Straight to stderr, past the test harness' capture, once per test binary.
            static NOTICE: std::sync::Once = std::sync::Once::new();
            NOTICE.call_once(|| {
                let line =
                    format!("NOTICE: postgres suite skipped: {base} is unreachable ({why}); set CI to fail instead\n");
                let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
            });
            return None;
        }
    };
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    admin.execute(format!("CREATE SCHEMA {schema}").as_str()).await.expect("create test schema");
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-csearch_path%3D{schema}");
    Some((admin, schema, url))
}

async fn drop_schema(mut admin: AnyConnection, schema: &str) {
    if let Err(e) = admin.execute(format!("DROP SCHEMA {schema} CASCADE").as_str()).await {
        eprintln!("could not drop test schema {schema}: {e}");
    }
    let _ = admin.close().await;
}
