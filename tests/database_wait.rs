//! A control plane started before its database exists waits for it (retrying with backoff and
//! saying why in its log), then serves; and one whose login is refused fails at once.

use std::time::{Duration, Instant};

use serde_json::json;
use sluice_e2e::{eventually, Sluice, TempDatabase};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_waits_for_a_database_created_after_it_started() {
    let Some(db) = TempDatabase::reserve("sluice_wait").await else { return };
    let wait = ["--database-wait-s".to_string(), "120".into()];
    let mut cp = Sluice::spawn_control_plane(BIN, "control-plane", &db.url, &wait);
    eventually(WAIT, "the control plane to log that it retries", || {
        if let Some(status) = cp.exited() {
            panic!("the control plane exited instead of waiting ({status}):\n{}", cp.log());
        }
        let log = cp.log();
        async move { log.contains("not available yet; retrying").then_some(()) }
    })
    .await;
    let log = cp.log();
    assert!(log.contains(&format!("database \"{}\" does not exist", db.name)), "the reason is logged:\n{log}");
    assert!(cp.exited().is_none(), "still waiting:\n{log}");
    // Its ports are taken but refuse connections until it serves: health checks fail fast.
    let refused = Instant::now();
    assert!(!cp.api().healthy().await, "not serving before its database exists");
    assert!(refused.elapsed() < Duration::from_secs(5), "refused, not left hanging: {:?}", refused.elapsed());

    db.create().await;
    let created = Instant::now();
    cp.wait_healthy().await;
    let up_after = created.elapsed();
    let api = cp.api();
    let (status, body) = api.get("/readyz").await;
    assert_eq!(status.as_u16(), 200, "{body}");
    let revision = api.put("clusters", "app", json!({"endpoints": [{"address": "127.0.0.1:9001"}]})).await;
    assert_eq!(revision, 1);
    let attempts = cp.log().matches("not available yet; retrying").count();
    eprintln!("serving {up_after:?} after the database was created; failed attempts logged: {attempts}");
    assert!(up_after < Duration::from_secs(10), "backoff is capped at 5 s: {up_after:?}");
    drop(cp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_that_waiting_cannot_fix_fail_at_once() {
    let Some(db) = TempDatabase::create_new("sluice_fatal").await else { return };
    let wait = ["--database-wait-s".to_string(), "120".into()];
    let unknown_user = db.url.replacen("postgres@", "no_such_role_sluice@", 1);
    let started = Instant::now();
    let mut cp = Sluice::spawn_control_plane(BIN, "control-plane", &unknown_user, &wait);
    let status = eventually(WAIT, "the control plane to exit", || {
        let status = cp.exited();
        async move { status }
    })
    .await;
    assert!(!status.success());
    assert!(started.elapsed() < Duration::from_secs(30), "no waiting: {:?}", started.elapsed());
    let log = cp.log();
    assert!(log.contains("no_such_role_sluice") && log.contains("(not retried)"), "a clear reason:\n{log}");
}
