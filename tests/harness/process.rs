//! The real `sluice` binary as a child process: started on ephemeral ports in its own temp dir,
//! killed on drop (its log is printed when the test is failing), plus one-shot CLI runs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::{eventually, free_addr, Api};

/// The admin token every process started here uses.
pub const ADMIN_TOKEN: &str = "e2e-admin-token-0123456789";

/// How long a process may take to start answering (debug builds on a busy 2-core machine).
const START_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Sluice {
    pub name: String,
    child: Child,
    dir: TempDir,
    pub api_addr: Option<SocketAddr>,
    pub grpc_addr: Option<SocketAddr>,
    pub admin_addr: Option<SocketAddr>,
}

impl Sluice {
    /// Starts `sluice ARGS…` in a fresh temp dir with the admin token set and output to a log file.
    pub fn spawn(bin: &str, name: &str, args: &[String], env: &[(&str, &str)]) -> Sluice {
        let dir = tempfile::Builder::new().prefix(&format!("sluice-e2e-{name}-")).tempdir().expect("temp dir");
        let log = std::fs::File::create(dir.path().join("log")).expect("log file");
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .current_dir(dir.path())
            .env("SLUICE_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", std::env::var("E2E_RUST_LOG").unwrap_or_else(|_| "info".into()))
            .env_remove("SLUICE_TOKEN")
            .env_remove("SLUICE_API_URL")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawning {bin}: {e}"));
        Sluice { name: name.to_string(), child, dir, api_addr: None, grpc_addr: None, admin_addr: None }
    }

    /// `sluice dev` on free ports (plus `extra` arguments); returns once the dev node shows in the API.
    pub async fn dev(bin: &str, extra: &[String]) -> Sluice {
        let (api, grpc, admin) = (free_addr(), free_addr(), free_addr());
        let mut args = vec!["dev".to_string(), "--data-dir".into(), ".sluice".into()];
        args.extend(addr_args(&[("--api-addr", api), ("--grpc-addr", grpc), ("--admin-addr", admin)]));
        args.extend(extra.iter().cloned());
        let mut s = Sluice::spawn(bin, "dev", &args, &[]);
        s.api_addr = Some(api);
        s.grpc_addr = Some(grpc);
        s.admin_addr = Some(admin);
        s.wait_healthy().await;
        let api = s.api();
        eventually(START_TIMEOUT, "the dev node to show in GET /v1/nodes", || {
            let api = api.clone();
            async move { api.node("dev").await }
        })
        .await;
        s
    }

    /// `sluice control-plane` on SQLite in its temp dir; returns once /healthz answers.
    pub async fn control_plane(bin: &str) -> Sluice {
        let mut s = Sluice::spawn_control_plane(bin, "control-plane", "sqlite://./cp.db", &[]);
        s.wait_healthy().await;
        s
    }

    /// `sluice control-plane` on `database_url` and free ports, plus `extra` arguments; does not
    /// wait for it (see [`Sluice::wait_healthy`]).
    pub fn spawn_control_plane(bin: &str, name: &str, database_url: &str, extra: &[String]) -> Sluice {
        let (api, grpc) = (free_addr(), free_addr());
        let mut args = vec!["control-plane".to_string(), "--database-url".into(), database_url.into()];
        args.extend(addr_args(&[("--api-addr", api), ("--grpc-addr", grpc)]));
        args.extend(extra.iter().cloned());
        let mut s = Sluice::spawn(bin, name, &args, &[]);
        s.api_addr = Some(api);
        s.grpc_addr = Some(grpc);
        s
    }

    /// `sluice proxy` against the control plane at `grpc`; returns once its admin /healthz answers.
    pub async fn proxy(bin: &str, grpc: SocketAddr, node_id: &str) -> Sluice {
        let admin = free_addr();
        let mut args = vec![
            "proxy".to_string(),
            "--control-plane".into(),
            format!("http://{grpc}"),
            "--node-id".into(),
            node_id.into(),
            "--cache-dir".into(),
            "cache".into(),
        ];
        args.extend(addr_args(&[("--admin-addr", admin)]));
        let mut s = Sluice::spawn(bin, &format!("proxy-{node_id}"), &args, &[]);
        s.admin_addr = Some(admin);
        let client = reqwest::Client::new();
        let url = format!("http://{admin}/healthz");
        eventually(START_TIMEOUT, "the proxy's /healthz", || {
            let (client, url) = (client.clone(), url.clone());
            if let Some(status) = s.exited() {
                panic!("the proxy exited early ({status}):\n{}", s.log());
            }
            async move { matches!(client.get(&url).send().await, Ok(r) if r.status().is_success()).then_some(()) }
        })
        .await;
        s
    }

    pub fn api(&self) -> Api {
        Api::new(self.api_addr.expect("this process has no API"), ADMIN_TOKEN)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// Sends SIGTERM (what systemd, Kubernetes and `docker stop` send).
    pub fn terminate(&self) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        assert!(matches!(status, Ok(s) if s.success()), "kill -TERM {}: {status:?}", self.name);
    }

    /// The exit status if the process has ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits until the REST API answers /healthz; panics (with the log) if the process exits.
    pub async fn wait_healthy(&mut self) {
        let api = self.api();
        let name = self.name.clone();
        eventually(START_TIMEOUT, &format!("{name} to answer /healthz"), || {
            let api = api.clone();
            if let Some(status) = self.exited() {
                panic!("{name} exited early ({status}):\n{}", self.log());
            }
            async move { api.healthy().await.then_some(()) }
        })
        .await;
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("---- last lines of {} ({}):", self.name, self.dir.path().display());
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

fn addr_args(pairs: &[(&str, SocketAddr)]) -> Vec<String> {
    pairs.iter().flat_map(|(flag, addr)| [flag.to_string(), addr.to_string()]).collect()
}

/// What one CLI run printed and how it ended.
#[derive(Debug)]
pub struct CliOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Runs a client command against `api` with the admin token, from an empty temp dir, and a deadline.
pub async fn cli(bin: &str, api: SocketAddr, args: &[&str]) -> CliOutput {
    cli_with_env(bin, args, &[("SLUICE_API_URL", &format!("http://{api}")), ("SLUICE_TOKEN", ADMIN_TOKEN)]).await
}

/// Runs `sluice ARGS…` from an empty temp dir with only the given SLUICE_* variables.
pub async fn cli_with_env(bin: &str, args: &[&str], env: &[(&str, &str)]) -> CliOutput {
    let dir = tempfile::tempdir().expect("temp dir");
    cli_in(bin, dir.path(), args, env).await
}

/// Runs `sluice ARGS…` from `dir` with only the given SLUICE_* variables.
pub async fn cli_in(bin: &str, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> CliOutput {
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args(args)
        .current_dir(dir)
        .env_remove("SLUICE_TOKEN")
        .env_remove("SLUICE_API_URL")
        .env_remove("SLUICE_ADMIN_TOKEN")
        .env_remove("RUST_LOG")
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("sluice {args:?} did not finish within 120 s"))
        .unwrap_or_else(|e| panic!("running sluice {args:?}: {e}"));
    CliOutput {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A path inside `dir` holding `text` (for `apply -f`).
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("writing a test file");
    p
}
