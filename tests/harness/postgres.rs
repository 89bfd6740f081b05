//! Databases of their own on the local Postgres server (127.0.0.1:5432, trust auth, user
//! `postgres`; `SLUICE_TEST_POSTGRES_URL` names another server's maintenance database). A test
//! that needs one skips with a notice when no server answers, and fails instead under `CI`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::{Connection, Executor, PgConnection};

const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A uniquely named database, created now or later, dropped (with its connections) on drop.
pub struct TempDatabase {
    pub name: String,
    /// The URL a control plane is given.
    pub url: String,
    admin_url: String,
}

impl TempDatabase {
    /// A fresh name starting with `prefix`, not created yet; `None` (after a notice) when no
    /// Postgres answers and `CI` is unset.
    pub async fn reserve(prefix: &str) -> Option<TempDatabase> {
        let admin_url = std::env::var("SLUICE_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_string());
        if let Err(why) = connect(&admin_url).await {
            if std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false") {
                panic!("postgres at {admin_url} is unreachable ({why}) and CI is set: this test must run");
            }
            eprintln!("NOTICE: skipped: postgres at {admin_url} is unreachable ({why}); set CI=true to fail instead");
            return None;
        }
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let name = format!("{prefix}_{}_{nanos}", std::process::id());
        let base = admin_url.rsplit_once('/').map_or(admin_url.as_str(), |(base, _)| base);
        let url = format!("{base}/{name}");
        Some(TempDatabase { name, url, admin_url })
    }

    /// A fresh database, created at once.
    pub async fn create_new(prefix: &str) -> Option<TempDatabase> {
        let db = Self::reserve(prefix).await?;
        db.create().await;
        Some(db)
    }

    pub async fn create(&self) {
        let mut admin = connect(&self.admin_url).await.expect("connecting to postgres");
        admin.execute(format!("CREATE DATABASE \"{}\"", self.name).as_str()).await.expect("CREATE DATABASE");
        let _ = admin.close().await;
    }
}

async fn connect(url: &str) -> Result<PgConnection, String> {
    match tokio::time::timeout(Duration::from_secs(5), PgConnection::connect(url)).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".to_string()),
    }
}

impl Drop for TempDatabase {
    /// On a thread of its own: drop may run inside an async test, whose runtime must not block.
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async {
                let mut admin = connect(&admin_url).await?;
                // FORCE: a killed control plane's connections may not have closed yet.
                let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                admin.execute(sql.as_str()).await.map_err(|e| e.to_string())?;
                let _ = admin.close().await;
                Ok::<(), String>(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}: {dropped:?}", self.name);
        }
    }
}
