//! `sluice`: the one binary users install — control plane, proxy, dev mode and the client commands.
//!
//! Exit codes: 0 success, 1 error (the API's error code, message and field are printed), 2 usage,
//! 3 `--wait` (weights, apply, rollback) saw a node reject the revision (NACK), 4 `--wait` timed out.

mod apply;
mod args;
mod client;
mod demo;
mod history;
mod probe;
mod release;
mod render;
mod resources;
mod servers;
mod status;
mod table;
mod wait;
mod weights;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command};
use crate::client::Client;

/// glibc malloc showed in the proxy's profile (allocation, free, and arena grow/trim syscalls with
/// their page faults); mimalloc's per-thread heaps suit the per-request allocations of the proxy.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Outcomes with their own exit codes.
#[derive(Debug)]
pub enum Failure {
    Nack(String),
    Timeout(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Nack(m) | Failure::Timeout(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Failure {}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let server =
        matches!(cli.command, Command::Dev(_) | Command::ControlPlane(_) | Command::Proxy(_) | Command::DemoBackend(_));
    let access_log = match &cli.command {
        Command::Dev(a) => a.access_log,
        Command::Proxy(a) => a.access_log,
        _ => false,
    };
    init_tracing(server, access_log);
    let runtime = if server {
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()
    } else {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            match e.downcast_ref::<Failure>() {
                Some(Failure::Nack(_)) => ExitCode::from(3),
                Some(Failure::Timeout(_)) => ExitCode::from(4),
                None => ExitCode::FAILURE,
            }
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Dev(a) => servers::dev(a).await,
        Command::ControlPlane(a) => servers::control_plane(a).await,
        Command::Proxy(a) => servers::proxy(a).await,
        Command::Apply(a) => apply::run(&Client::from_env()?, &a).await,
        Command::Get(a) => resources::get(&Client::from_env()?, &a).await,
        Command::Delete(a) => resources::delete(&Client::from_env()?, &a).await,
        Command::Weights(a) => weights::run(&Client::from_env()?, &a).await,
        Command::Status => status::run(&Client::from_env()?).await,
        Command::Export(a) => history::export(&Client::from_env()?, &a).await,
        Command::Revisions(a) => history::revisions(&Client::from_env()?, &a).await,
        Command::Diff(a) => history::diff(&Client::from_env()?, &a).await,
        Command::Rollback(a) => history::rollback(&Client::from_env()?, &a).await,
        Command::Release(c) => release::run(&Client::from_env()?, &c).await,
        Command::Probe(a) => probe::run(&a).await,
        Command::DemoBackend(a) => servers::demo_backend(a).await,
    }
}

/// RUST_LOG decides; the default is `info` for the servers and `warn` for the client commands.
/// The access log (target `sluice::access`) is off unless `--access-log` asks for it or RUST_LOG
/// names that target.
fn init_tracing(server: bool, access_log: bool) {
    let spec = std::env::var("RUST_LOG").ok().filter(|s| !s.trim().is_empty());
    let names_access = spec.as_deref().is_some_and(|s| s.contains("sluice::access"));
    let spec = spec.unwrap_or_else(|| if server { "info" } else { "warn" }.to_string());
    let mut filter = tracing_subscriber::EnvFilter::try_new(&spec)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(if server { "info" } else { "warn" }));
    let access = match (access_log, names_access) {
        (true, _) => Some("sluice::access=info"),
        (false, false) => Some("sluice::access=off"),
        (false, true) => None,
    };
    if let Some(directive) = access.and_then(|d| d.parse().ok()) {
        filter = filter.add_directive(directive);
    }
    // Colours only on a terminal: a log file or journald must not get escape codes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    // One JSON object per line for log pipelines.
    let _ = if std::env::var("SLUICE_LOG_FORMAT").is_ok_and(|f| f == "json") {
        fmt.json().flatten_event(true).try_init()
    } else {
        fmt.try_init()
    };
}
