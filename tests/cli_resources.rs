//! `sluice apply/get/delete/status` against a real `sluice control-plane` on SQLite.

use serde_json::Value;
use sluice_e2e::{cli, cli_with_env, free_addr, write_file, Sluice};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// The revision in a line like `cluster api applied (revision 3)`.
fn revision_in(line: &str) -> u64 {
    line.rsplit_once("(revision ")
        .and_then(|(_, r)| r.trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("no revision in {line:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_get_delete_status() {
    let cp = Sluice::control_plane(BIN).await;
    let api_addr = cp.api_addr.unwrap();
    let api = cp.api();
    let web = free_addr();

    // The config shape, written in reverse dependency order: apply must sort it.
    let yaml = format!(
        "routes:\n  api:\n    listener: web\n    match: {{hosts: [myshop.com], path: {{prefix: /api/}}}}\n    backends: [{{cluster: api, weight: 1}}]\n\
         listeners:\n  web: {{address: \"{web}\", protocol: http}}\n\
         clusters:\n  api:\n    endpoints: [{{address: \"127.0.0.1:9001\"}}, {{address: \"127.0.0.1:9002\", weight: 3}}]\n"
    );
    let file = write_file(cp.dir(), "shop.yaml", &yaml);
    let out = cli(BIN, api_addr, &["apply", "-f", file.to_str().unwrap()]).await;
    assert!(out.success(), "{out:?}");
    let heads: Vec<&str> = out.stdout.lines().filter(|l| !l.starts_with(' ')).collect();
    assert_eq!(
        heads,
        [
            "+ cluster api (created)",
            "+ listener web (created)",
            "+ route api (created)",
            "applied: 3 created, 0 updated, 0 deleted (revision 1)"
        ],
        "{out:?}"
    );
    assert_eq!(api.revision().await, Some(1), "one file, one revision");

    // Applying the same file again writes nothing.
    let again = cli(BIN, api_addr, &["apply", "-f", file.to_str().unwrap()]).await;
    assert_eq!(again.stdout.trim(), "unchanged (revision 1)", "{again:?}");

    let out = cli(BIN, api_addr, &["get", "routes"]).await;
    assert!(out.success(), "{out:?}");
    assert!(out.stdout.starts_with("NAME"), "{out:?}");
    let row = out.stdout.lines().find(|l| l.starts_with("api ")).unwrap_or_else(|| panic!("{out:?}"));
    assert!(row.contains("web") && row.contains("myshop.com") && row.contains("/api/*"), "{row}");

    let out = cli(BIN, api_addr, &["get", "clusters"]).await;
    assert!(out.stdout.contains("127.0.0.1:9001,127.0.0.1:9002=3"), "{out:?}");

    let out = cli(BIN, api_addr, &["get", "route", "api", "-o", "json"]).await;
    assert!(out.success(), "{out:?}");
    let route: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    assert_eq!((route["kind"].as_str(), route["name"].as_str()), (Some("route"), Some("api")));
    assert_eq!(route["spec"]["listener"], "web");
    assert_eq!(route["spec"]["backends"][0]["cluster"], "api");

    let out = cli(BIN, api_addr, &["get", "listeners", "web", "-o", "yaml"]).await;
    assert!(out.success() && out.stdout.contains("protocol: http"), "{out:?}");

    // The {kind, name, spec} list form, in JSON, with a reference the API refuses.
    let before = api.revision().await;
    let json =
        r#"[{"kind": "route", "name": "broken", "spec": {"listener": "web", "backends": [{"cluster": "nope"}]}}]"#;
    let file = write_file(cp.dir(), "broken.json", json);
    let out = cli(BIN, api_addr, &["apply", "-f", file.to_str().unwrap()]).await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("422") && out.stderr.contains("route broken: backends[0].cluster"), "{out:?}");
    assert_eq!(api.revision().await, before, "a refused apply stores nothing");
    let out = cli(BIN, api_addr, &["get", "route", "broken"]).await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("404"), "{out:?}");

    // A mistake in a file stores nothing of it.
    let file = write_file(
        cp.dir(),
        "typo.yaml",
        "clusters:\n  ok: {}\n  typo: {endpoints: [{address: \"127.0.0.1:1\", wieght: 2}]}\n",
    );
    let out = cli(BIN, api_addr, &["apply", "-f", file.to_str().unwrap()]).await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("cluster typo") && out.stderr.contains("endpoints[0]"), "{out:?}");
    assert_eq!(api.revision().await, before);
    assert_eq!(api.get("/v1/clusters/ok").await.0.as_u16(), 404);

    // Deleting a cluster a route still uses is a 409 naming the route.
    let out = cli(BIN, api_addr, &["delete", "cluster", "api"]).await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("409") && out.stderr.contains("route api"), "{out:?}");

    let out = cli(BIN, api_addr, &["delete", "route", "api"]).await;
    assert!(out.success(), "{out:?}");
    let rev = revision_in(out.stdout.trim());
    assert_eq!(api.revision().await, Some(rev));
    assert!(cli(BIN, api_addr, &["delete", "cluster", "api"]).await.success());

    let out = cli(BIN, api_addr, &["status"]).await;
    assert!(out.success(), "{out:?}");
    assert!(out.stdout.starts_with(&format!("revision {}", rev + 1)), "{out:?}");
    assert!(out.stdout.contains("no nodes"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_are_clear() {
    let cp = Sluice::control_plane(BIN).await;
    let url = format!("http://{}", cp.api_addr.unwrap());

    let out = cli_with_env(BIN, &["get", "clusters"], &[("SLUICE_API_URL", &url)]).await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("401") && out.stderr.contains("SLUICE_TOKEN"), "{out:?}");

    let out = cli_with_env(BIN, &["get", "clusters"], &[("SLUICE_API_URL", &url), ("SLUICE_TOKEN", "wrong")]).await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("401"), "{out:?}");

    let out = cli(BIN, cp.api_addr.unwrap(), &["get", "gadgets"]).await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("unknown kind"), "{out:?}");

    let nobody = free_addr();
    let out = cli(BIN, nobody, &["status"]).await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("cannot reach the Sluice API"), "{out:?}");

    let out = cli(BIN, cp.api_addr.unwrap(), &["weights", "api", "blue"]).await;
    assert_eq!(out.code, Some(2), "usage errors exit 2: {out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_refuses_to_start_without_an_admin_token() {
    let (api, grpc) = (free_addr().to_string(), free_addr().to_string());
    let out = cli_with_env(
        BIN,
        &["control-plane", "--database-url", "sqlite://./cp.db", "--api-addr", &api, "--grpc-addr", &grpc],
        &[],
    )
    .await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("SLUICE_ADMIN_TOKEN is not set"), "{out:?}");
}
