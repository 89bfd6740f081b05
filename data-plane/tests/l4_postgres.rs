//! A real database through a tcp listener: `psql` against the local Postgres (127.0.0.1:5432, or
//! `SLUICE_TEST_POSTGRES_ADDR`), then two "replicas" (that one plus a second Postgres started here
//! with initdb on an ephemeral port) balanced round robin, each answering queries; then that second
//! one as a primary with the local one as its standby (`backup`), stopped and started again.
//!
//! Skipped with a notice when Postgres or psql is missing, unless `CI` is set (then it fails).

mod l4_support;
mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use l4_support::node_with;
use serde_json::json;
use support::{config, free_addr};
use tokio::process::Command;

fn local_postgres() -> SocketAddr {
    std::env::var("SLUICE_TEST_POSTGRES_ADDR")
        .ok()
        .and_then(|a| a.parse().ok())
        .unwrap_or(([127, 0, 0, 1], 5432).into())
}

/// `None` (after a notice) when the test cannot run here; panics instead under `CI`.
fn skip<T>(why: &str) -> Option<T> {
    if std::env::var_os("CI").is_some() {
        panic!("postgres test cannot run: {why}");
    }
    eprintln!("SKIPPED: {why}");
    None
}

/// Runs `psql -Atc query` against `addr` (user postgres), bounded in time; its trimmed output.
async fn psql(addr: SocketAddr, db: &str, query: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string(), "-U", "postgres", "-Atc", query, db])
        .env("PGCONNECT_TIMEOUT", "5")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(20), out).await {
        Ok(Ok(o)) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).trim().to_string()),
        Ok(Ok(o)) => Err(String::from_utf8_lossy(&o.stderr).into_owned()),
        Ok(Err(e)) => Err(format!("cannot run psql: {e}")),
        Err(_) => Err("psql timed out".into()),
    }
}

fn tcp_listener_config(listener: SocketAddr, endpoints: &[SocketAddr]) -> sluice_shared::Config {
    let eps: Vec<_> = endpoints.iter().map(|e| json!({"address": e.to_string()})).collect();
    config(json!({
        "clusters": {"db": {"lb_policy": "round_robin", "endpoints": eps}},
        "listeners": {"pg": {"address": listener.to_string(), "protocol": "tcp", "cluster": "db", "idle_timeout_ms": 60000}},
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_through_a_tcp_listener() {
    let pg = local_postgres();
    if let Err(e) = psql(pg, "test", "select 1").await {
        let _: Option<()> = skip(&format!("no Postgres at {pg}: {e}"));
        return;
    }
    let addr = free_addr();
    let (_cp, _node) = node_with(&tcp_listener_config(addr, &[pg])).await;
    assert_eq!(psql(addr, "test", "select 1").await.unwrap(), "1");
    // A bigger result both ways (many packets, the query and rows spliced through).
    let sum = psql(addr, "test", "select sum(length(repeat('x', g))) from generate_series(1, 2000) g").await;
    assert_eq!(sum.unwrap(), "2001000");
}

/// A throwaway Postgres cluster run as the `postgres` user; stopped and removed on drop.
struct TempPostgres {
    dir: PathBuf,
    bin: PathBuf,
    addr: SocketAddr,
}

/// `pg_ctl` of a [`TempPostgres`]: stop and start it again on the same port.
impl TempPostgres {
    async fn pg_ctl(&self, args: &[&str]) -> Result<(), String> {
        let (pg_ctl, data, log) = (self.bin.join("pg_ctl"), self.dir.join("data"), self.dir.join("log"));
        let mut all = vec!["-D", path(&data), "-l", path(&log), "-w", "-t", "30"];
        all.extend_from_slice(args);
        as_postgres(path(&pg_ctl), &all, &self.dir).await
    }

    async fn start_server(&self) -> Result<(), String> {
        let opts = format!("-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off", self.addr.port(), path(&self.dir));
        self.pg_ctl(&["-o", &opts, "start"]).await
    }

    async fn stop_server(&self) -> Result<(), String> {
        self.pg_ctl(&["-m", "fast", "stop"]).await
    }
}

impl TempPostgres {
    async fn start() -> Result<TempPostgres, String> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .map_err(|e| format!("no /usr/lib/postgresql: {e}"))?
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .find(|b| b.join("initdb").exists())
            .ok_or("no initdb")?;
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let dir = std::env::temp_dir().join(format!("sluice-l4-pg-{}-{nanos}", std::process::id()));
        let addr = free_addr();
        let pg = TempPostgres { dir, bin, addr };
        let data = pg.dir.join("data");
        std::fs::create_dir_all(&pg.dir).map_err(|e| e.to_string())?;
        // Postgres refuses to run as root: hand the directory to the postgres user.
        let chown = Command::new("chown").args(["-R", "postgres:postgres"]).arg(&pg.dir).status().await;
        if !chown.map(|s| s.success()).unwrap_or(false) {
            return Err("cannot chown the data directory to postgres".into());
        }
        let initdb = pg.bin.join("initdb");
        let args = ["-D", path(&data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"];
        as_postgres(path(&initdb), &args, &pg.dir).await?;
        pg.start_server().await?;
        Ok(pg)
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        let pg_ctl = self.bin.join("pg_ctl");
        let data = self.dir.join("data");
        let _ = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--", path(&pg_ctl), "-D", path(&data), "-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

/// Runs a program as the postgres user (via runuser: needs root), bounded in time.
async fn as_postgres(program: &str, args: &[&str], cwd: &Path) -> Result<(), String> {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--", program])
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(60), out).await {
        Ok(Ok(o)) if o.status.success() => Ok(()),
        Ok(Ok(o)) => Err(format!("{program} failed: {}", String::from_utf8_lossy(&o.stderr))),
        Ok(Err(e)) => Err(format!("cannot run {program}: {e}")),
        Err(_) => Err(format!("{program} timed out")),
    }
}

/// The local Postgres and a second one started here; `None` (after [`skip`]) when either is missing.
async fn local_and_second() -> Option<(SocketAddr, TempPostgres)> {
    let local = local_postgres();
    if let Err(e) = psql(local, "postgres", "select 1").await {
        return skip(&format!("no Postgres at {local}: {e}"));
    }
    match TempPostgres::start().await {
        Ok(pg) => Some((local, pg)),
        Err(e) => skip(&format!("cannot start a second Postgres: {e}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_postgres_replicas_are_balanced() {
    let Some((local, second)) = local_and_second().await else { return };
    let port_of = |a: SocketAddr| a.port().to_string();
    assert_eq!(psql(second.addr, "postgres", "select current_setting('port')").await.unwrap(), port_of(second.addr));

    let addr = free_addr();
    let (_cp, _node) = node_with(&tcp_listener_config(addr, &[local, second.addr])).await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(psql(addr, "postgres", "select current_setting('port')").await.unwrap());
    }
    // Round robin over the two replicas, each answering its own queries.
    let local_port = psql(local, "postgres", "select current_setting('port')").await.unwrap();
    let count = |p: &str| seen.iter().filter(|s| *s == p).count();
    assert_eq!((count(&local_port), count(&port_of(second.addr))), (2, 2), "{seen:?}");
    assert_eq!(psql(addr, "postgres", "select 40 + 2").await.unwrap(), "42");
}

/// A `psql` session held open through the proxy, fed queries on its standard input.
struct HeldPsql {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl HeldPsql {
    fn open(addr: SocketAddr) -> HeldPsql {
        let mut child = Command::new("psql")
            .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string(), "-U", "postgres", "-At", "postgres"])
            .env("PGCONNECT_TIMEOUT", "5")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("psql runs");
        let stdin = child.stdin.take().unwrap();
        let stdout = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stdout.take().unwrap()));
        HeldPsql { child, stdin, stdout }
    }

    /// Sends one query and reads its one-line answer; `None` if psql answers nothing (it lost its
    /// connection and quit).
    async fn query(&mut self, q: &str) -> Option<String> {
        use tokio::io::AsyncWriteExt;
        self.stdin.write_all(format!("{q};\n").as_bytes()).await.ok()?;
        tokio::time::timeout(Duration::from_secs(20), self.stdout.next_line()).await.ok()?.ok()?
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_serves_while_the_primary_is_down_and_hands_clients_back() {
    let Some((standby, primary)) = local_and_second().await else { return };
    let addr = free_addr();
    let check = json!({"tcp": {}, "interval_ms": 200, "healthy_threshold": 1, "unhealthy_threshold": 1});
    let cfg = config(json!({
        "clusters": {"db": {"endpoints": [{"address": primary.addr.to_string()}, {"address": standby.to_string(), "backup": true}],
                            "health_check": check, "close_connections_on_health_change": true}},
        "listeners": {"pg": {"address": addr.to_string(), "protocol": "tcp", "cluster": "db"}},
    }));
    let (_cp, node) = node_with(&cfg).await;
    let port = "select current_setting('port')";
    let standby_port = psql(standby, "postgres", port).await.unwrap();
    let primary_port = primary.addr.port().to_string();
    for _ in 0..3 {
        assert_eq!(psql(addr, "postgres", port).await.unwrap(), primary_port, "the primary serves while it is up");
    }
    // The primary goes down: clients land on the standby (a refused connect fails over at once).
    primary.stop_server().await.unwrap();
    assert_eq!(psql(addr, "postgres", port).await.unwrap(), standby_port);
    let mut held = HeldPsql::open(addr);
    assert_eq!(held.query(port).await.as_deref(), Some(standby_port.as_str()));
    // It comes back: new clients go to it, and the session held on the standby is closed, so its
    // pool would reconnect to the primary too (psql without a terminal quits instead).
    primary.start_server().await.unwrap();
    // A Postgres server restarting on a loaded machine may take longer than most waits.
    support::eventually_within(Duration::from_secs(30), "clients back on the primary", || async {
        (psql(addr, "postgres", port).await.ok()? == primary_port).then_some(())
    })
    .await;
    // (At least the held session; a one-shot psql caught on the standby at that moment counts too.)
    let closes = || l4_support::metric(&node, "sluice_l4_health_closes_total{listener=\"pg\"}");
    support::eventually("the standby's session closed", || async { (closes().await >= 1.0).then_some(()) }).await;
    assert_eq!(held.query(port).await, None, "the session on the standby stayed open");
    let status = tokio::time::timeout(Duration::from_secs(20), held.child.wait()).await.unwrap().unwrap();
    assert!(!status.success(), "psql lost its connection and says so");
}
