//! Config as code with the real binary (`sluice dev`: control plane plus one node): a directory
//! applied as one revision or not at all, dry runs with their exact diff, prune within a prefix,
//! `get`/`export` output that applies back unchanged, weights kept for the pipeline, and a
//! rollback under load with no failed request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sluice_e2e::l7::spawn_load;
use sluice_e2e::{cli, cli_in, eventually, free_addr, http_get, write_file, HttpBackend, Sluice};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_dry_run_prune_round_trip_and_rollback() {
    let dev = Sluice::dev(BIN, &[]).await;
    let (api, addr) = (dev.api(), dev.api_addr.unwrap());
    let (blue, green) = (HttpBackend::start("blue").await, HttpBackend::start("green").await);
    let web = free_addr();
    let dir = dev.dir().join("config");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.to_str().unwrap().to_string();
    write_file(
        &dir,
        "10-clusters.yaml",
        &format!(
            "clusters:\n  a-blue: {{endpoints: [{{address: \"{}\"}}]}}\n  a-green: {{endpoints: [{{address: \"{}\"}}]}}\n",
            blue.address, green.address
        ),
    );
    write_file(
        &dir,
        "20-listeners.yaml",
        &format!("- {{kind: listener, name: a-web, spec: {{address: \"{web}\", protocol: http}}}}\n"),
    );
    // Two mistakes in the last file: the whole directory writes nothing, and both are reported.
    write_file(
        &dir,
        "30-routes.yaml",
        "routes:\n  a-api: {listener: a-web, match: {path: /}, backends: [{cluster: a-blue}]}\n  a-old: {listener: a-nope, backends: [{cluster: a-blue}]}\n",
    );
    let before = api.revision().await;
    let out = cli(BIN, addr, &["apply", "-f", &path]).await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("2 problem(s)"), "{out:?}");
    assert!(
        out.stderr
            .contains(r#"route a-api: match.path: expected an object such as {"prefix": "/"}, not the string "/""#),
        "{out:?}"
    );
    assert!(out.stderr.contains("route a-old: listener: listener a-nope does not exist"), "{out:?}");
    assert_eq!(api.revision().await, before, "a refused apply writes nothing");
    assert_eq!(api.get("/v1/clusters/a-blue").await.0.as_u16(), 404);

    write_file(
        &dir,
        "30-routes.yaml",
        "routes:\n  a-api:\n    listener: a-web\n    match: {path: {prefix: /}}\n    backends: [{cluster: a-blue, weight: 100}, {cluster: a-green, weight: 0}]\n",
    );
    let out = cli(BIN, addr, &["apply", "-f", &path, "--dry-run"]).await;
    assert!(out.success(), "{out:?}");
    // Every field as stored, defaults included, keys in name order.
    let expected = format!(
        "+ cluster a-blue (created)\n  + endpoints:\n  + - address: {}\n  +   weight: 1\n  + lb_policy: round_robin\n\
         + cluster a-green (created)\n  + endpoints:\n  + - address: {}\n  +   weight: 1\n  + lb_policy: round_robin\n\
         + listener a-web (created)\n  + address: {web}\n  + group: default\n  + protocol: http\n\
         + route a-api (created)\n  + backends:\n  + - cluster: a-blue\n  +   weight: 100\n  + - cluster: a-green\n\
         \x20 +   weight: 0\n  + listener: a-web\n  + match:\n  +   path:\n  +     prefix: /\n  + priority: 0\n\
         dry run: would have 4 created, 0 updated, 0 deleted; nothing written (revision {})\n",
        blue.address,
        green.address,
        before.unwrap()
    );
    assert_eq!(out.stdout, expected);
    assert_eq!(api.revision().await, before, "a dry run writes nothing");

    let out = cli(BIN, addr, &["apply", "-f", &path, "--wait", "--timeout", "30s"]).await;
    assert!(out.success(), "{out:?}");
    let r1 = api.revision().await.unwrap();
    assert_eq!(r1, before.unwrap() + 1, "one directory, one revision");
    assert!(out.stdout.contains(&format!("revision {r1} acknowledged by 1 node(s): dev")), "{out:?}");
    assert_eq!(http_get(web, "example.com", "/").await, Some((200, "blue\n".to_string())));

    // What get and export print applies back unchanged.
    let got = cli(BIN, addr, &["get", "route", "a-api", "-o", "yaml"]).await;
    let file = write_file(dev.dir(), "r.yaml", &got.stdout);
    let out = cli(BIN, addr, &["apply", "-f", file.to_str().unwrap()]).await;
    assert_eq!(out.stdout.trim(), format!("unchanged (revision {r1})"), "{out:?} from {got:?}");
    let all = cli(BIN, addr, &["get", "clusters", "-o", "json"]).await;
    let file = write_file(dev.dir(), "c.json", &all.stdout);
    assert_eq!(
        cli(BIN, addr, &["apply", "-f", file.to_str().unwrap()]).await.stdout.trim(),
        format!("unchanged (revision {r1})")
    );
    let export = cli(BIN, addr, &["export"]).await;
    assert!(export.success() && !export.stdout.contains("key_pem"), "{export:?}");
    let file = write_file(dev.dir(), "all.yaml", &export.stdout);
    assert_eq!(
        cli(BIN, addr, &["apply", "-f", file.to_str().unwrap()]).await.stdout.trim(),
        format!("unchanged (revision {r1})")
    );

    // A pipeline shifted the weights; re-applying with --keep-weights leaves them.
    assert!(cli(BIN, addr, &["weights", "a-api", "a-blue=0", "a-green=100"]).await.success());
    let r2 = api.revision().await.unwrap();
    let out = cli(BIN, addr, &["apply", "-f", &path, "--keep-weights"]).await;
    assert_eq!(out.stdout.trim(), format!("unchanged (revision {r2})"), "{out:?}");

    // Prune stays within its prefix.
    api.put("clusters", "b-other", serde_json::json!({"endpoints": []})).await;
    api.put("clusters", "a-spare", serde_json::json!({"endpoints": []})).await;
    let out = cli(BIN, addr, &["apply", "-f", &path, "--keep-weights", "--prune", "--prefix", "a-"]).await;
    assert!(
        out.stdout.contains("- cluster a-spare (deleted)")
            && out.stdout.contains("applied: 0 created, 0 updated, 1 deleted"),
        "{out:?}"
    );
    assert_eq!(api.get("/v1/clusters/b-other").await.0.as_u16(), 200);

    // The history shows each write; a rollback to r1 under load fails no request.
    let out = cli(BIN, addr, &["revisions", "--limit", "3"]).await;
    assert!(out.stdout.contains("-cluster a-spare") && out.stdout.contains("admin"), "{out:?}");
    let out = cli(BIN, addr, &["diff", &r1.to_string(), &r2.to_string()]).await;
    assert!(out.stdout.contains("~ route a-api (updated)") && out.stdout.contains("  -   weight: 100"), "{out:?}");
    eventually(Duration::from_secs(30), "green to answer", || async move {
        (http_get(web, "example.com", "/").await? == (200, "green\n".to_string())).then_some(())
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = spawn_load(&[web], "example.com", "/", 4, 5_000, Duration::from_secs(60), stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = cli(BIN, addr, &["rollback", &r1.to_string(), "--wait", "--timeout", "30s"]).await;
    assert!(out.success() && out.stdout.contains("~ route a-api (updated)"), "{out:?}");
    assert_eq!(http_get(web, "example.com", "/").await, Some((200, "blue\n".to_string())));
    stop.store(true, Ordering::Relaxed);
    let report = load.await.unwrap();
    assert_eq!(report.failed, 0, "{:?}", report.failures);
    assert!(report.count("green") > 0 && report.count("blue") > 0, "{:?}", report.bodies);
    let listed = api.get("/v1/revisions?limit=1").await.1;
    assert_eq!(listed[0]["note"], format!("rollback to revision {r1}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_by_file_and_cascade_and_token_sources() {
    let cp = Sluice::control_plane(BIN).await;
    let (api, addr) = (cp.api(), cp.api_addr.unwrap());
    let web = free_addr();
    let yaml = format!(
        "clusters: {{c: {{}}}}\nlisteners: {{web: {{address: \"{web}\", protocol: http}}}}\nroutes: {{r: {{listener: web, backends: [{{cluster: c}}]}}}}\n"
    );
    let file = write_file(cp.dir(), "all.yaml", &yaml);
    assert!(cli(BIN, addr, &["apply", "-f", file.to_str().unwrap()]).await.success());
    // A cascade needs a yes when nobody can be asked.
    let out = cli(BIN, addr, &["delete", "listener", "web", "--cascade"]).await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stdout.contains("- listener web") && out.stdout.contains("- route r"), "shown first: {out:?}");
    assert!(out.stderr.contains("--yes"), "{out:?}");
    let out = cli(BIN, addr, &["delete", "listener", "web", "--cascade", "--yes"]).await;
    assert!(out.success() && out.stdout.contains("0 created, 0 updated, 2 deleted"), "{out:?}");
    let out = cli(BIN, addr, &["delete", "-f", file.to_str().unwrap()]).await;
    assert_eq!(out.code, Some(1), "what no longer exists is named: {out:?}");
    assert!(out.stderr.contains("listener web: does not exist"), "{out:?}");
    assert!(cli(BIN, addr, &["apply", "-f", file.to_str().unwrap()]).await.success());
    let out = cli(BIN, addr, &["delete", "-f", file.to_str().unwrap()]).await;
    assert!(out.success() && out.stdout.contains("3 deleted"), "{out:?}");
    assert_eq!(api.get("/v1/clusters/c").await.0.as_u16(), 404);

    // The dev token file is used for the default API URL only, and a 401 says where the token came from.
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir.path().join(".sluice").tap_mkdir(), "admin-token", "sluice_from_the_dev_file");
    let url = format!("http://{addr}");
    let out = cli_in(BIN, dir.path(), &["get", "clusters"], &[("SLUICE_API_URL", &url)]).await;
    assert!(out.stderr.contains("401") && out.stderr.contains("no token was sent"), "{out:?}");
    let out =
        cli_in(BIN, dir.path(), &["get", "clusters"], &[("SLUICE_API_URL", &url), ("SLUICE_TOKEN", "wrong")]).await;
    assert!(out.stderr.contains("the token came from SLUICE_TOKEN"), "{out:?}");
}

trait Mkdir {
    fn tap_mkdir(self) -> Self;
}

impl Mkdir for std::path::PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}
