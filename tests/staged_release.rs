//! Staged releases with real processes: a control plane and two proxies in two groups that share
//! a cluster. A release to the canary group that breaks it (every request there fails) is
//! reverted and never reaches the other node; a good one reaches it once baked. `--wait` follows
//! both to their end.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sluice_e2e::l7::{proxy_in_group, spawn_load, tempdir, wait_acked, wait_connected, Backend};
use sluice_e2e::{cli, eventually, free_addr, write_file, Sluice};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_release_stays_on_the_canary_and_a_good_one_reaches_everyone() {
    let cp = Sluice::control_plane(BIN).await;
    let (api, addr) = (cp.api(), cp.api_addr.unwrap());
    let cache = tempdir();
    let grpc = [cp.grpc_addr.unwrap()];
    let _canary = proxy_in_group(BIN, &grpc, "canary-1", "canary", &cache.path().join("c")).await;
    let _main = proxy_in_group(BIN, &grpc, "main-1", "main", &cache.path().join("m")).await;
    wait_connected(&api, "canary-1").await;
    wait_connected(&api, "main-1").await;
    let (blue, green) = (Backend::start("blue").await, Backend::start("green").await);
    let (web_c, web_m) = (free_addr(), free_addr());
    let config = |endpoint: String| {
        format!(
            "clusters: {{api: {{endpoints: [{{address: \"{endpoint}\"}}]}}}}\n\
             listeners:\n  web-c: {{address: \"{web_c}\", protocol: http, group: canary}}\n  web-m: {{address: \"{web_m}\", protocol: http, group: main}}\n\
             routes:\n  api-c: {{listener: web-c, backends: [{{cluster: api}}]}}\n  api-m: {{listener: web-m, backends: [{{cluster: api}}]}}\n"
        )
    };
    let file = write_file(cp.dir(), "shop.yaml", &config(blue.address.to_string()));
    let path = file.to_str().unwrap().to_string();
    assert!(cli(BIN, addr, &["apply", "-f", &path, "--wait", "--timeout", "30s"]).await.success());
    let stable = api.revision().await.unwrap();

    // Load on both nodes for the whole test: the main node must never fail a request.
    let stop = Arc::new(AtomicBool::new(false));
    let main_load = spawn_load(&[web_m], "shop.test", "/", 2, 100_000, Duration::from_secs(120), stop.clone());
    let canary_load = spawn_load(&[web_c], "shop.test", "/", 2, 100_000, Duration::from_secs(120), stop.clone());

    // An endpoint nothing listens on: every request on the canary fails (502).
    let nowhere = free_addr();
    std::fs::write(&file, config(nowhere.to_string())).unwrap();
    let release = ["--canary-group", "canary", "--bake", "3s", "--max-error-rate", "0.05"];
    let out = cli(BIN, addr, &[&["apply", "-f", &path, "--wait", "--timeout", "60s"][..], &release[..]].concat()).await;
    assert_eq!(out.code, Some(3), "{out:?}");
    assert!(out.stdout.contains("release of revision"), "{out:?}");
    assert!(out.stderr.contains(": failed (canary error rate"), "{out:?}");
    let r = api.get("/v1/release").await.1;
    assert_eq!(r["state"], "failed", "{r}");
    let bad = r["revision"].as_u64().unwrap();
    let reverted = r["reverted_revision"].as_u64().unwrap();
    assert!(r["reason"].as_str().unwrap().contains(&format!("reverted to revision {stable}")), "{r}");
    // The revert restored the stable config, and the main node never held the bad revision.
    assert_eq!(
        api.get(&format!("/v1/revisions/{reverted}")).await.1["config"],
        api.get(&format!("/v1/revisions/{stable}")).await.1["config"]
    );
    wait_acked(&api, &["canary-1", "main-1"], reverted).await;
    let main = api.node("main-1").await.unwrap();
    assert_eq!(main["release"]["role"], "held", "{main}");
    let out = cli(BIN, addr, &["status"]).await;
    assert!(out.stdout.contains(&format!("release of revision {bad}")) && out.stdout.contains("failed"), "{out:?}");

    // A good release: the main node is held at the stable revision until the bake is over.
    std::fs::write(&file, config(green.address.to_string())).unwrap();
    let release = ["--canary-group", "canary", "--bake", "3s"];
    let apply = cli(BIN, addr, &[&["apply", "-f", &path][..], &release[..]].concat()).await;
    assert!(apply.success() && apply.stdout.contains("applying"), "{apply:?}");
    let good = api.revision().await.unwrap();
    let held: Value = eventually(Duration::from_secs(30), "the main node to show as held", || {
        let api = api.clone();
        async move { api.node("main-1").await.filter(|n| n["state"] == "held") }
    })
    .await;
    assert!(held["acked_revision"].as_u64().unwrap() < good, "{held}");
    let out = cli(BIN, addr, &["weights", "api-m", "api=1", "--wait", "--timeout", "60s"]).await;
    assert!(out.success(), "a write during the release joins it and waits for its end: {out:?}");
    assert_eq!(api.get("/v1/release").await.1["state"], "released");
    wait_acked(&api, &["canary-1", "main-1"], good).await;
    eventually(Duration::from_secs(30), "green to answer on the main node", || async move {
        let mut c = sluice_e2e::l7::KeepAlive::new(web_m);
        (c.get("shop.test", "/").await == (200, "green".to_string())).then_some(())
    })
    .await;

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let main_report = main_load.await.unwrap();
    assert_eq!(main_report.failed, 0, "the main node never served the broken release: {:?}", main_report.failures);
    assert!(main_report.count("blue") > 0 && main_report.count("green") > 0, "{:?}", main_report.bodies);
    let canary_report = canary_load.await.unwrap();
    assert!(canary_report.failed > 0, "the canary took the broken release");
}
