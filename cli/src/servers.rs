//! The long-running commands: `sluice control-plane`, `sluice proxy` and `sluice dev`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use sluice_control_plane::server::{ControlPlane, ControlPlaneOptions, GrpcTls};
use sluice_control_plane::store::{Canary, ReleaseSpec};
use sluice_data_plane::{ControlPlaneTls, Node, NodeOptions};

use crate::args::{ControlPlaneArgs, DemoBackendArgs, DevArgs, ProxyArgs};
use crate::client::{read_token_file, Client, DEV_URL_FILE_NAME};
use crate::demo;

const ADMIN_TOKEN_ENV: &str = "SLUICE_ADMIN_TOKEN";

fn admin_token_from_env() -> Option<String> {
    std::env::var(ADMIN_TOKEN_ENV).ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty())
}

pub async fn control_plane(args: ControlPlaneArgs) -> anyhow::Result<()> {
    // clap makes the three flags come together.
    let grpc_tls = match (&args.grpc_tls_cert, &args.grpc_tls_key, &args.grpc_client_ca) {
        (Some(cert), Some(key), Some(ca)) => {
            Some(GrpcTls { cert_pem: read_pem(cert)?, key_pem: read_pem(key)?, client_ca_pem: read_pem(ca)? })
        }
        _ => None,
    };
    // A production control plane must not invent a secret nobody knows; refusing is the clear choice.
    let Some(token) = admin_token_from_env() else {
        bail!("{ADMIN_TOKEN_ENV} is not set: the control plane needs an admin token for its REST API (e.g. `export {ADMIN_TOKEN_ENV}=$(openssl rand -hex 24)`)");
    };
    create_sqlite_parent(&args.database_url)?;
    let cp = ControlPlane::start(ControlPlaneOptions {
        database_url: args.database_url.clone(),
        api_addr: args.api_addr,
        grpc_addr: args.grpc_addr,
        admin_token: token,
        control_plane_id: None,
        grpc_tls,
        audit_retention: args.audit.retention(),
        default_release: default_release(&args),
        database_wait: std::time::Duration::from_secs(args.database_wait_s),
    })
    .await
    .map_err(|e| anyhow::anyhow!("starting the control plane: {e}"))?;
    tracing::info!(api = %cp.api_addr(), grpc = %cp.grpc_addr(), "control plane running");
    shutdown_signal().await;
    tracing::info!("shutting down");
    cp.shutdown().await;
    Ok(())
}

/// The release every write gets unless it asks otherwise, from the control plane's flags.
fn default_release(args: &ControlPlaneArgs) -> Option<ReleaseSpec> {
    let canary = match (&args.release_canary_group, args.release_canary_percent) {
        (Some(g), _) => Canary::Group(g.clone()),
        (None, Some(p)) => Canary::Percent(p),
        (None, None) => return None,
    };
    Some(ReleaseSpec { canary, bake: args.release_bake, max_error_rate: args.release_max_error_rate })
}

pub async fn proxy(args: ProxyArgs) -> anyhow::Result<()> {
    let control_plane_tls = match (&args.tls_ca, &args.tls_cert, &args.tls_key) {
        (None, None, _) => None,
        (None, Some(_), _) => bail!("--tls-cert needs --tls-ca (the CA that signed the control plane's certificate)"),
        (Some(ca), cert, key) => {
            let client = match (cert, key) {
                (Some(cert), Some(key)) => Some((read_pem(cert)?, read_pem(key)?)),
                _ => None,
            };
            Some(ControlPlaneTls { ca_pem: read_pem(ca)?, client })
        }
    };
    let dns = args.dns();
    let node_id = match args.node_id {
        Some(id) => id,
        None => default_node_id(),
    };
    let node = Node::start(NodeOptions {
        control_planes: args.control_planes,
        node_id: node_id.clone(),
        group: args.group,
        admin_addr: args.admin_addr,
        cache_dir: args.cache_dir,
        control_plane_tls,
        dns,
        upgrade_socket: args.upgrade_socket,
        shutdown_drain: args.drain_s.map(Duration::from_secs),
    })
    .await
    .map_err(|e| anyhow::anyhow!("starting the proxy: {e}"))?;
    tracing::info!(node = %node_id, admin = %node.admin_addr(), "proxy running");
    tokio::select! {
        _ = shutdown_signal() => {
            // Readiness fails first; serving goes on while whatever balances over the nodes
            // notices, then the listeners drain.
            node.stop_being_ready();
            let grace = Duration::from_secs(args.shutdown_grace_s);
            tracing::info!(?grace, "shutting down: /readyz fails, still serving for the grace period");
            tokio::select! {
                _ = tokio::time::sleep(grace) => {}
                _ = shutdown_signal() => tracing::info!("second signal: draining now"),
            }
        }
        _ = node.handed_over() => tracing::info!("a new process serves the listeners now: draining"),
    }
    tokio::select! {
        _ = node.shutdown() => {}
        _ = shutdown_signal() => tracing::info!("another signal: stopping without waiting for open connections"),
    }
    Ok(())
}

pub async fn dev(args: DevArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("creating {}", args.data_dir.display()))?;
    let token = dev_admin_token(&args.data_dir)?;
    let backends = match args.demo {
        true => Some(demo::start_backends().await?),
        false => None,
    };
    let database_url = format!("sqlite://{}", args.data_dir.join("sluice.db").display());
    let cp = ControlPlane::start(ControlPlaneOptions {
        database_url,
        api_addr: args.api_addr,
        grpc_addr: args.grpc_addr,
        admin_token: token.value.clone(),
        control_plane_id: None,
        grpc_tls: None,
        audit_retention: args.audit.retention(),
        default_release: None,
        database_wait: std::time::Duration::ZERO,
    })
    .await
    .map_err(|e| anyhow::anyhow!("starting the control plane: {e}"))?;
    let node = Node::start(NodeOptions {
        control_planes: vec![format!("http://{}", cp.grpc_addr())],
        node_id: "dev".to_string(),
        group: "default".to_string(),
        admin_addr: args.admin_addr,
        cache_dir: Some(args.data_dir.join("cache")),
        control_plane_tls: None,
        dns: Default::default(),
        upgrade_socket: None,
        shutdown_drain: Some(Duration::from_secs(5)),
    })
    .await
    .map_err(|e| anyhow::anyhow!("starting the in-process proxy node: {e}"))?;

    let api_url = format!("http://{}", cp.api_addr());
    // Client commands send the token file's token only to the API that wrote it.
    let url_file = args.data_dir.join(DEV_URL_FILE_NAME);
    std::fs::write(&url_file, format!("{api_url}\n")).with_context(|| format!("writing {}", url_file.display()))?;
    let mut banner = format!(
        "Sluice dev is running.\n  REST API:     {api_url}\n  config gRPC:  http://{}\n  node admin:   http://{}/metrics\n",
        cp.grpc_addr(),
        node.admin_addr()
    );
    // A token the user set is not echoed; one we generated is, since nobody knows it yet.
    let (shown, export) = match &token.source {
        TokenSource::Env => (format!("from {ADMIN_TOKEN_ENV}"), format!("\"${ADMIN_TOKEN_ENV}\"")),
        TokenSource::File(p) => (format!("{} (in {})", token.value, p.display()), token.value.clone()),
    };
    banner.push_str(&format!("  admin token:  {shown}\n  export SLUICE_API_URL={api_url} SLUICE_TOKEN={export}\n"));
    if let Some(b) = &backends {
        let client = Client::new(&api_url, Some(token.value.clone()))?;
        let seed = demo::seed(b, args.demo_http_addr, args.demo_tcp_addr);
        let revision = demo::register(&client, &seed).await?;
        banner.push_str(&format!("Demo config registered (revision {revision}).\n"));
        banner.push_str(&demo::instructions(args.demo_http_addr, args.demo_tcp_addr));
    }
    println!("{banner}");
    shutdown_signal().await;
    tracing::info!("shutting down");
    node.shutdown().await;
    cp.shutdown().await;
    drop(backends);
    Ok(())
}

/// `sluice demo-backend`: one of the demo's backends, until Ctrl-C or SIGTERM.
pub async fn demo_backend(args: DemoBackendArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.addr).await.with_context(|| format!("binding {}", args.addr))?;
    let kind = if args.tcp { "tcp echo" } else { "http" };
    tracing::info!(name = %args.name, addr = %listener.local_addr()?, kind, "demo backend running");
    let served = demo::serve(listener, &args.name, args.tcp);
    tokio::select! {
        () = served => {}
        () = shutdown_signal() => tracing::info!("shutting down"),
    }
    Ok(())
}

enum TokenSource {
    Env,
    File(PathBuf),
}

struct AdminToken {
    value: String,
    source: TokenSource,
}

/// SLUICE_ADMIN_TOKEN, else the token a previous `sluice dev` stored in the data dir, else a new one
/// (written there with owner-only permissions).
fn dev_admin_token(data_dir: &Path) -> anyhow::Result<AdminToken> {
    if let Some(value) = admin_token_from_env() {
        return Ok(AdminToken { value, source: TokenSource::Env });
    }
    let path = data_dir.join("admin-token");
    if let Some(value) = read_token_file(&path) {
        return Ok(AdminToken { value, source: TokenSource::File(path) });
    }
    let value = generate_token();
    write_secret(&path, &value).with_context(|| format!("writing {}", path.display()))?;
    Ok(AdminToken { value, source: TokenSource::File(path) })
}

fn generate_token() -> String {
    use rand::Rng;
    let bytes: [u8; 24] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn write_secret(path: &Path, value: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(format!("{value}\n").as_bytes())
}

/// A PEM file named by a TLS flag.
fn read_pem(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// SQLite creates the database file but not its directory.
fn create_sqlite_parent(database_url: &str) -> anyhow::Result<()> {
    let Some(rest) = database_url.strip_prefix("sqlite://").or_else(|| database_url.strip_prefix("sqlite:")) else {
        return Ok(());
    };
    let path = Path::new(rest.split('?').next().unwrap_or(rest));
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    Ok(())
}

/// The host name, made into a valid node id (lower case, `[a-z0-9-]`).
fn default_node_id() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    node_id_from_hostname(&raw)
}

fn node_id_from_hostname(raw: &str) -> String {
    let id: String = raw
        .trim()
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() { c } else { '-' })
        .take(63)
        .collect();
    let id = id.trim_matches('-').to_string();
    if id.is_empty() {
        "node".to_string()
    } else {
        id
    }
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids() {
        assert_eq!(node_id_from_hostname("Web-01.example.com\n"), "web-01-example-com");
        assert_eq!(node_id_from_hostname(""), "node");
    }

    #[test]
    fn token_is_generated_once_and_reused() {
        if admin_token_from_env().is_some() {
            return; // the environment decides; nothing to check here
        }
        let dir = std::env::temp_dir().join(format!("sluice-token-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = dev_admin_token(&dir).unwrap();
        let b = dev_admin_token(&dir).unwrap();
        assert_eq!(a.value, b.value);
        assert_eq!(a.value.len(), 48);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sqlite_parent_dir() {
        let dir = std::env::temp_dir().join(format!("sluice-sqlite-test-{}", std::process::id()));
        create_sqlite_parent(&format!("sqlite://{}/x/y.db", dir.display())).unwrap();
        assert!(dir.join("x").is_dir());
        create_sqlite_parent("postgres://localhost/db").unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
