//! Restarts that drop nothing, through the real binary: a node replaced in place by a new process
//! (`--upgrade-socket`) under keep-alive and new-connection load, with a TCP session open across
//! the handover; and SIGTERM, which fails readiness first and serves through the grace period.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use sluice_e2e::l7::{admin_status, control_plane_at, spawn_load, tempdir, wait_acked, Backend, KeepAlive};
use sluice_e2e::{eventually, free_addr, Api, Sluice, TcpEcho};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const WAIT: Duration = Duration::from_secs(60);

/// `sluice proxy` with the given extra flags; returns once its admin /healthz answers.
async fn proxy(name: &str, grpc: SocketAddr, admin: SocketAddr, cache: &Path, extra: &[&str]) -> Sluice {
    let mut args: Vec<String> = ["proxy", "--control-plane", &format!("http://{grpc}"), "--node-id", "node"]
        .into_iter()
        .map(String::from)
        .collect();
    args.extend(["--admin-addr".into(), admin.to_string(), "--cache-dir".into(), cache.display().to_string()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut s = Sluice::spawn(BIN, name, &args, &[]);
    s.admin_addr = Some(admin);
    eventually(WAIT, &format!("{name}'s /healthz"), || {
        if let Some(status) = s.exited() {
            panic!("{name} exited early ({status}):\n{}", s.log());
        }
        async move { (admin_status(admin, "/healthz").await == Some(200)).then_some(()) }
    })
    .await;
    s
}

/// An http listener routing to `backend` and a tcp listener to `echo`; returns their addresses.
async fn configure(api: &Api, backend: &Backend, echo: &TcpEcho) -> (SocketAddr, SocketAddr) {
    let (web, db) = (free_addr(), free_addr());
    api.put("clusters", "web", json!({"endpoints": [{"address": backend.address.to_string()}]})).await;
    api.put("clusters", "db", json!({"endpoints": [{"address": echo.address.to_string()}]})).await;
    api.put("listeners", "web", json!({"address": web.to_string(), "protocol": "http"})).await;
    api.put("listeners", "db", json!({"address": db.to_string(), "protocol": "tcp", "cluster": "db"})).await;
    api.put("routes", "web", json!({"listener": "web", "backends": [{"cluster": "web"}]})).await;
    (web, db)
}

/// A TCP session through the tcp listener, past the backend's greeting.
async fn tcp_session(db: SocketAddr) -> BufReader<TcpStream> {
    let mut conn = BufReader::new(TcpStream::connect(db).await.expect("connect to the tcp listener"));
    let mut greeting = String::new();
    conn.read_line(&mut greeting).await.expect("the backend's greeting");
    assert_eq!(greeting, "db\n");
    conn
}

async fn echo(conn: &mut BufReader<TcpStream>, msg: &str) -> String {
    conn.get_mut().write_all(format!("{msg}\n").as_bytes()).await.expect("writing on the session");
    let mut line = String::new();
    let read = tokio::time::timeout(Duration::from_secs(5), conn.read_line(&mut line)).await;
    assert!(matches!(read, Ok(Ok(n)) if n > 0), "the session ended: {read:?}");
    line.trim_end().to_string()
}

/// New connections in a loop (one request each) until `stop`: (answered 200, failed, first errors).
fn spawn_new_connections(addr: SocketAddr, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(u64, u64, Vec<String>)> {
    tokio::spawn(async move {
        let (mut ok, mut failed, mut errors) = (0, 0, Vec::new());
        let deadline = Instant::now() + Duration::from_secs(90);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            match KeepAlive::new(addr).request("GET", "web", "/", &[("connection", "close")]).await {
                Ok((200, _)) => ok += 1,
                other => {
                    failed += 1;
                    if errors.len() < 10 {
                        errors.push(format!("{other:?}"));
                    }
                }
            }
        }
        (ok, failed, errors)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_replaced_in_place_under_load_drops_nothing() {
    let root = tempdir();
    let (api_addr, grpc, admin) = (free_addr(), free_addr(), free_addr());
    let cp = control_plane_at(BIN, &root.path().join("cp.db"), api_addr, grpc).await;
    let api = cp.api();
    let (backend, echo_backend) = (Backend::start("web").await, TcpEcho::start("db").await);
    let (cache, socket) = (root.path().join("cache"), root.path().join("upgrade.sock"));
    let upgrade = ["--upgrade-socket", socket.to_str().unwrap(), "--drain-s", "20"];
    let mut old = proxy("proxy-old", grpc, admin, &cache, &upgrade).await;
    let (web, db) = configure(&api, &backend, &echo_backend).await;
    wait_acked(&api, &["node"], api.revision().await.unwrap()).await;
    eventually(WAIT, "the upgrade socket", || async { socket.exists().then_some(()) }).await;

    let mut session = tcp_session(db).await;
    assert_eq!(echo(&mut session, "before").await, "before");
    let stop = Arc::new(AtomicBool::new(false));
    let load = spawn_load(&[web], "web", "/", 6, 1_000_000, Duration::from_secs(90), stop.clone());
    let fresh = spawn_new_connections(web, stop.clone());
    let hits = backend.hits();
    eventually(WAIT, "load through the old process", || async { (backend.hits() > hits + 200).then_some(()) }).await;

    // The new process takes the sockets over; the old one stops accepting and drains.
    let started = Instant::now();
    let new = proxy("proxy-new", grpc, admin, &cache, &upgrade).await;
    eventually(WAIT, "the old process to hand over", || async {
        old.log().contains("a new process took over the listeners").then_some(())
    })
    .await;
    let handed_over_after = started.elapsed();
    // The session opened before the handover is still served by the old process ...
    assert_eq!(echo(&mut session, "during the drain").await, "during the drain");
    assert!(old.exited().is_none(), "the old process waits for its open session");
    // ... while new connections reach the new one.
    let mut later = tcp_session(db).await;
    assert_eq!(echo(&mut later, "new").await, "new");
    let before_close = backend.hits();
    eventually(WAIT, "load through the new process", || async { (backend.hits() > before_close + 200).then_some(()) })
        .await;
    drop(session);
    let exited = eventually(WAIT, "the old process to exit once drained", || std::future::ready(old.exited())).await;
    assert!(exited.success(), "{exited:?}\n{}", old.log());

    // A little more load with the new process alone, then the tally.
    let after = backend.hits();
    eventually(WAIT, "load after the old process left", || async { (backend.hits() > after + 100).then_some(()) })
        .await;
    stop.store(true, Ordering::Relaxed);
    let report = load.await.unwrap();
    let (fresh_ok, fresh_failed, fresh_errors) = fresh.await.unwrap();
    println!(
        "handover: {handed_over_after:?} from the new process's start; keep-alive {} ok, {} failed ({} connects); \
         new connections {fresh_ok} ok, {fresh_failed} failed",
        report.ok, report.failed, report.connects
    );
    assert_eq!(report.failed, 0, "{:?}", report.failures);
    assert_eq!(fresh_failed, 0, "{fresh_errors:?}");
    assert!(report.ok > 500 && fresh_ok > 50, "{} / {fresh_ok}", report.ok);
    assert_eq!(admin_status(admin, "/readyz").await, Some(200), "the new process answers on the admin address");
    assert!(new.log().contains("took the listening sockets of the running process"), "{}", new.log());
    drop(new);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_fails_readiness_first_and_serves_through_the_grace_period() {
    let root = tempdir();
    let (api_addr, grpc, admin) = (free_addr(), free_addr(), free_addr());
    let cp = control_plane_at(BIN, &root.path().join("cp.db"), api_addr, grpc).await;
    let api = cp.api();
    let (backend, echo_backend) = (Backend::start("web").await, TcpEcho::start("db").await);
    let mut node = proxy("proxy", grpc, admin, &root.path().join("cache"), &["--shutdown-grace-s", "2"]).await;
    let (web, _) = configure(&api, &backend, &echo_backend).await;
    wait_acked(&api, &["node"], api.revision().await.unwrap()).await;
    assert_eq!(admin_status(admin, "/readyz").await, Some(200));
    let mut client = KeepAlive::new(web);
    assert_eq!(client.get("web", "/").await, (200, "web".to_string()));

    let signalled = Instant::now();
    node.terminate();
    eventually(WAIT, "/readyz to fail", || async { (admin_status(admin, "/readyz").await == Some(503)).then_some(()) })
        .await;
    let unready_after = signalled.elapsed();
    // Serving goes on, on open and on new connections, until the grace period is over.
    let mut served = 0;
    while signalled.elapsed() < Duration::from_millis(1_500) {
        assert_eq!(client.get("web", "/").await, (200, "web".to_string()));
        assert_eq!(KeepAlive::new(web).get("web", "/").await, (200, "web".to_string()));
        served += 2;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let exited = eventually(WAIT, "the node to exit", || std::future::ready(node.exited())).await;
    let stopped_after = signalled.elapsed();
    println!(
        "SIGTERM: /readyz failing after {unready_after:?}, {served} requests served, exit after {stopped_after:?}"
    );
    assert!(exited.success(), "{exited:?}");
    assert!(unready_after < Duration::from_secs(1), "{unready_after:?}");
    assert!(stopped_after >= Duration::from_secs(2), "the grace period was kept: {stopped_after:?}");
    assert!(stopped_after < Duration::from_secs(10), "{stopped_after:?}");
    assert!(TcpStream::connect(web).await.is_err(), "the listener is closed");
}
