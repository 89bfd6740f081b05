//! deploy/compose.yaml as written, on one machine without a container runtime: every sluice
//! service's command runs as a process (host names and container addresses replaced by loopback
//! ones, named volumes by temp dirs), the `postgres` service is a fresh database on the local
//! server, and the compose health checks are run as written. Then: the example config applied by
//! the one-shot service reaches both nodes, traffic flows through both, one control plane dies,
//! and a write on the other still reaches both nodes while traffic keeps flowing.
//!
//! Both nodes listen on one loopback address (their listeners use SO_REUSEPORT, so the kernel
//! spreads connections over them); each node's own request counters tell that it served.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sluice_e2e::compose::{ComposeFile, Network, Service};
use sluice_e2e::{cli_in, eventually, http_get, Sluice, TempDatabase, ADMIN_TOKEN};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const WAIT: Duration = Duration::from_secs(60);
/// Requests per round of traffic: enough that each of two nodes gets some (each connection goes
/// to one of the listening sockets by a hash of its source port).
const ROUND: usize = 40;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// The compose file's variables, as deploy/.env would set them.
fn vars(name: &str) -> Option<String> {
    (name == "SLUICE_ADMIN_TOKEN").then(|| ADMIN_TOKEN.to_string())
}

/// A running stand-in for the compose project.
struct Project {
    compose: ComposeFile,
    net: Network,
    db: TempDatabase,
    files: tempfile::TempDir,
}

impl Project {
    /// The service's command and environment as it would run: addresses rewritten, the database
    /// URL pointed at the test database, volume targets replaced by local paths.
    fn localize(&self, s: &Service) -> (Vec<String>, Vec<(String, String)>) {
        let mounts: Vec<(String, String)> =
            s.volumes.iter().map(|(source, target)| (target.clone(), self.volume(s, source))).collect();
        let args = s
            .command
            .iter()
            .map(|a| {
                let a = self.net.rewrite_in(&s.name, a);
                mounts.iter().find(|(target, _)| *target == a).map_or(a, |(_, local)| local.clone())
            })
            .collect();
        let env = s
            .environment
            .iter()
            .map(|(k, v)| {
                let v = if v.starts_with("postgres://") && v.contains("@postgres:") {
                    self.db.url.clone()
                } else {
                    self.net.rewrite_in(&s.name, v)
                };
                (k.clone(), v)
            })
            .collect();
        (args, env)
    }

    /// A named volume is a temp dir of its own; a file next to the compose file is copied with
    /// its addresses rewritten (what the service reads is what the network makes of it).
    fn volume(&self, s: &Service, source: &str) -> String {
        let local = self.files.path().join(format!("{}-{}", s.name, source.trim_start_matches("./")));
        if let Some(file) = source.strip_prefix("./") {
            let text = std::fs::read_to_string(deploy_dir().join(file)).expect("a file the compose file mounts");
            std::fs::write(&local, self.rewrite_config(&text)).expect("writing the localized file");
        } else {
            std::fs::create_dir_all(&local).expect("a volume dir");
        }
        local.display().to_string()
    }

    /// Config files: backends by their fixed addresses, and `0.0.0.0:PORT` listeners of the nodes
    /// on one loopback address per port (see the module comment).
    fn rewrite_config(&self, text: &str) -> String {
        let mut out = self.net.rewrite(text);
        while let Some(at) = out.find("0.0.0.0:") {
            let port: String = out[at + 8..].chars().take_while(char::is_ascii_digit).collect();
            let addr = listener_addr(port.parse().expect("a port"));
            out = out.replace(&format!("0.0.0.0:{port}"), &addr.to_string());
        }
        out
    }

    fn start(&self, name: &str) -> Sluice {
        let s = self.compose.service(name);
        let (args, env) = self.localize(s);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Sluice::spawn(BIN, name, &args, &env)
    }

    /// Runs the service's compose health check until it passes.
    async fn healthy(&self, name: &str, process: &mut Sluice) {
        let s = self.compose.service(name);
        let check = s.healthcheck.as_ref().unwrap_or_else(|| panic!("{name} has no health check"));
        assert_eq!(check[0], "/usr/local/bin/sluice", "{name}'s health check runs the image's binary");
        let args: Vec<String> = check[1..].iter().map(|a| self.net.rewrite_in(name, a)).collect();
        eventually(WAIT, &format!("{name}'s health check {args:?}"), || {
            if let Some(status) = process.exited() {
                panic!("{name} exited ({status}):\n{}", process.log());
            }
            let args = args.clone();
            let dir = self.files.path().to_path_buf();
            async move {
                let argv: Vec<&str> = args.iter().map(String::as_str).collect();
                cli_in(BIN, &dir, &argv, &[]).await.success().then_some(())
            }
        })
        .await;
    }
}

/// One loopback address per listener port of the example config, the same for every node.
fn listener_addr(port: u16) -> SocketAddr {
    use std::sync::{Mutex, OnceLock};
    static ADDRS: OnceLock<Mutex<BTreeMap<u16, SocketAddr>>> = OnceLock::new();
    let mut addrs = ADDRS.get_or_init(Default::default).lock().unwrap();
    *addrs.entry(port).or_insert_with(sluice_e2e::free_addr)
}

/// Responses per cluster that the node at `admin` counts for route `app` (2xx).
async fn served(admin: SocketAddr) -> BTreeMap<String, u64> {
    let text = reqwest::get(format!("http://{admin}/metrics")).await.unwrap().text().await.unwrap();
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("sluice_requests_total{route=\"app\"")) {
        let (labels, n) = line.rsplit_once(' ').unwrap();
        let cluster = labels.split("cluster=\"").nth(1).and_then(|c| c.split('"').next()).unwrap().to_string();
        if labels.contains("class=\"2xx\"") {
            *out.entry(cluster).or_insert(0) += n.parse::<u64>().unwrap();
        }
    }
    out
}

fn total(counts: &BTreeMap<String, u64>) -> u64 {
    counts.values().sum()
}

/// `ROUND` requests on fresh connections; every one must succeed. Returns the bodies seen.
async fn round(listener: SocketAddr) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..ROUND {
        let (status, body) = http_get(listener, "demo.example", "/").await.expect("an answer");
        assert_eq!(status, 200, "{body}");
        *seen.entry(body.trim().to_string()).or_insert(0) += 1;
    }
    seen
}

/// Sends rounds until each node's counters grew past `before` (both served); bounded.
async fn both_serve(listener: SocketAddr, admins: &[SocketAddr; 2], what: &str) -> BTreeMap<String, usize> {
    let before = [served(admins[0]).await, served(admins[1]).await];
    let mut seen = BTreeMap::new();
    for _ in 0..10 {
        for (body, n) in round(listener).await {
            *seen.entry(body).or_insert(0) += n;
        }
        let grew =
            [total(&served(admins[0]).await) > total(&before[0]), total(&served(admins[1]).await) > total(&before[1])];
        if grew == [true, true] {
            return seen;
        }
    }
    panic!("{what}: not both nodes served in 10 rounds of {ROUND} requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_topology_serves_through_both_nodes_and_survives_a_control_plane() {
    let started = Instant::now();
    let compose = ComposeFile::load(&deploy_dir().join("compose.yaml"), &vars);
    let names: Vec<&str> = compose.services.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "apply-example",
            "control-plane-1",
            "control-plane-2",
            "demo-blue",
            "demo-green",
            "postgres",
            "proxy-a",
            "proxy-b"
        ]
    );
    for cp in ["control-plane-1", "control-plane-2"] {
        assert_eq!(compose.service(cp).depends_on, ["postgres"]);
    }
    for s in compose.services.values() {
        assert!(s.restart.is_some(), "{} has a restart policy", s.name);
        assert!(s.healthcheck.is_some() || s.name == "apply-example", "{} has a health check", s.name);
        // Reachable through the compose network and published ports: no loopback-only address.
        for pair in s.command.windows(2).filter(|w| w[0].ends_with("-addr") || w[0] == "--addr") {
            assert!(pair[1].starts_with("0.0.0.0:"), "{} {} {}", s.name, pair[0], pair[1]);
        }
    }
    let Some(db) = TempDatabase::create_new("sluice_compose").await else { return };
    let net = Network::plan(&compose);
    let files = tempfile::tempdir().unwrap();
    let p = Project { compose, net, db, files };

    // Both control planes at once, on one fresh database (both run the migrations).
    let mut cps: BTreeMap<&str, Sluice> = BTreeMap::new();
    for name in ["control-plane-1", "control-plane-2"] {
        let mut cp = p.start(name);
        cp.api_addr = Some(p.net.addr(name, 7070));
        cps.insert(name, cp);
    }
    for (name, cp) in cps.iter_mut() {
        p.healthy(name, cp).await;
    }
    let mut others = Vec::new();
    for name in ["demo-blue", "demo-green"] {
        let mut backend = p.start(name);
        p.healthy(name, &mut backend).await;
        others.push(backend);
    }
    let admins = [p.net.addr("proxy-a", 7072), p.net.addr("proxy-b", 7072)];
    let mut proxies = Vec::new();
    for name in ["proxy-a", "proxy-b"] {
        proxies.push((name, p.start(name)));
    }

    // The one-shot service, as compose runs it once control-plane-1 is healthy.
    let apply = p.compose.service("apply-example");
    assert_eq!(apply.depends_on, ["control-plane-1"]);
    let (args, env) = p.localize(apply);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let applied = cli_in(BIN, p.files.path(), &argv, &env).await;
    assert!(applied.success(), "{applied:?}");
    for (name, proxy) in proxies.iter_mut() {
        p.healthy(name, proxy).await;
    }
    // Ready means a table is installed, maybe an empty one: wait for the example on both nodes
    // (proxy-b hears of it from control-plane-2, which picks up control-plane-1's write).
    let api1 = cps["control-plane-1"].api();
    let applied_revision = api1.revision().await.unwrap();
    sluice_e2e::l7::wait_acked(&api1, &["proxy-a", "proxy-b"], applied_revision).await;
    let ready = started.elapsed();

    let listener = listener_addr(8080);
    let seen = both_serve(listener, &admins, "after the example was applied").await;
    assert_eq!(seen.keys().map(String::as_str).collect::<Vec<_>>(), ["blue", "green"], "weights 50/50: {seen:?}");

    // One control plane goes away; the nodes keep serving and fail over to the other.
    let killed = Instant::now();
    drop(cps.remove("control-plane-1"));
    both_serve(listener, &admins, "after control-plane-1 died").await;

    let cp2 = cps.get("control-plane-2").unwrap();
    let api2 = cp2.api();
    let url = format!("http://{}", p.net.addr("control-plane-2", 7070));
    let shifted = cli_in(
        BIN,
        p.files.path(),
        &["weights", "app", "blue=0", "green=100"],
        &[("SLUICE_API_URL", &url), ("SLUICE_TOKEN", ADMIN_TOKEN)],
    )
    .await;
    assert!(shifted.success(), "a write on the surviving control plane: {shifted:?}");
    let revision = api2.revision().await.unwrap();
    sluice_e2e::l7::wait_acked(&api2, &["proxy-a", "proxy-b"], revision).await;
    let failed_over = killed.elapsed();
    // The change is in force on both nodes: only green answers, and both count green answers.
    let green_before = [served(admins[0]).await, served(admins[1]).await];
    eventually(WAIT, "both nodes to send everything to green", || async {
        let seen = both_serve(listener, &admins, "after the weight shift").await;
        let counts = [served(admins[0]).await, served(admins[1]).await];
        let green_grew = (0..2).all(|i| counts[i].get("green") > green_before[i].get("green"));
        (seen.keys().eq(["green"]) && green_grew).then_some(())
    })
    .await;
    eprintln!(
        "compose topology: serving {ready:?} after start; both nodes acked a write on control-plane-2 \
         {failed_over:?} after control-plane-1 was killed; {:?} in all",
        started.elapsed()
    );
    drop((proxies, others, cps));
}
