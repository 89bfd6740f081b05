//! h2spec's cases (RFC 9113, HPACK) and the HTTP/2 flood defences, reproduced by a raw-frame
//! client in Python (`h2_conformance.py`, on the `h2`/`hpack`/`hyperframe` packages: h2spec is a
//! Go program this machine's registries do not carry), against an h2c and an h2 (TLS) listener.

mod support;

use std::process::Command;

use serde_json::json;
use sluice_e2e::tls::self_signed;
use support::*;

/// Whether Python with the `h2` package is here; CI installs it (`.ci/run`) and must run this.
fn python_h2() -> bool {
    let ok = Command::new("python3").args(["-c", "import h2, hpack, hyperframe"]).status().is_ok_and(|s| s.success());
    assert!(ok || std::env::var_os("CI").is_none(), "python3 with h2 is missing (pip install h2)");
    if !ok {
        eprintln!("skipped: python3 with the h2 package is not installed (pip install h2)");
    }
    ok
}

fn run(addr: std::net::SocketAddr, tls: bool) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/h2_conformance.py");
    let mut cmd = Command::new("python3");
    cmd.args([script, "--addr", &addr.to_string(), "--authority", "conformance.test"]);
    if tls {
        cmd.arg("--tls");
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = stdout.lines().rev().find(|l| l.ends_with(" failed")).unwrap_or("no summary");
    println!("{} (tls: {tls}): {summary}", env!("CARGO_PKG_NAME"));
    assert!(
        out.status.success(),
        "conformance failures (tls: {tls}):\n{}\n{}",
        stdout.lines().filter(|l| l.starts_with("FAIL")).collect::<Vec<_>>().join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(summary.ends_with(" 0 failed"), "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2spec_cases_and_floods_on_h2c_and_h2() {
    if !python_h2() {
        return;
    }
    let backend = Backend::start("app").await;
    let cert = self_signed(&["conformance.test"]);
    let (plain, tls) = (free_addr(), free_addr());
    let cfg = config(json!({
        "certificates": {"site": cert.json()},
        "clusters": {"app": {"endpoints": [{"address": backend.addr.to_string()}]}},
        "listeners": {
            "plain": {"address": plain.to_string(), "protocol": "http"},
            "tls": {"address": tls.to_string(), "protocol": "https", "certificates": ["site"]}
        },
        "routes": {
            "plain": {"listener": "plain", "backends": [{"cluster": "app"}]},
            "tls": {"listener": "tls", "backends": [{"cluster": "app"}]}
        }
    }));
    let cp = ControlPlane::start(Some(snapshot(&cfg, 1))).await;
    let _node = start_node(vec![cp.url()], None).await;
    cp.expect_ack(1).await;
    eventually("listener up", || async { try_get(plain, "conformance.test", "/").await }).await;
    // The script is blocking: off the runtime, one listener after the other.
    tokio::task::spawn_blocking(move || {
        run(plain, false);
        run(tls, true);
    })
    .await
    .unwrap();
}
