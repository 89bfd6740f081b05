//! The command line (DESIGN.md §2), parsed with clap's derive API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Sluice: a load balancer with a control plane and a fleet of data-plane proxies.
#[derive(Debug, Parser)]
#[command(
    name = "sluice",
    version,
    propagate_version = true,
    after_help = "Client commands (apply, get, delete, export, revisions, diff, rollback, weights, status) \
                  read SLUICE_API_URL (default http://127.0.0.1:7070) and SLUICE_TOKEN; without SLUICE_TOKEN, \
                  and only for the default API URL, they use ./.sluice/admin-token, the token `sluice dev` \
                  writes. RUST_LOG sets the log level (servers default to info)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Control plane on SQLite plus one in-process proxy node, for trying Sluice on one machine.
    ///
    /// The admin token comes from SLUICE_ADMIN_TOKEN; when unset, the token stored in
    /// <data-dir>/admin-token is reused, or a new one is generated, printed and written there.
    /// Client commands run from the same directory find that file when SLUICE_TOKEN is unset.
    Dev(DevArgs),
    /// Run a control plane: REST API and the config stream for proxy nodes.
    ///
    /// Requires the admin token in SLUICE_ADMIN_TOKEN and refuses to start without it.
    ControlPlane(ControlPlaneArgs),
    /// Run a data-plane proxy node that takes its config from the control plane(s).
    Proxy(ProxyArgs),
    /// Create or replace resources from YAML or JSON files, all in one revision (or none).
    ///
    /// Each file holds either the config shape `{clusters: {NAME: SPEC}, listeners: {...}, routes:
    /// {...}, certificates: {...}}` (what `export` writes) or a list (or YAML documents) of `{kind,
    /// name, spec}` (what `get -o yaml` prints). A directory means every .yaml, .yml and .json file
    /// under it. The whole set is one write: nothing is applied unless all of it is valid, and a
    /// set equal to what is stored writes nothing.
    Apply(ApplyArgs),
    /// Show resources: a table of all of a kind, or one resource; -o yaml or json prints documents
    /// that `apply` takes back unchanged.
    Get(GetArgs),
    /// Delete resources: one by kind and name, or those a file names.
    Delete(DeleteArgs),
    /// Write the whole config in the shape `apply` takes (certificates without their keys unless
    /// --include-keys, which needs the admin token).
    Export(ExportArgs),
    /// The revision history: number, time, who, what changed.
    Revisions(RevisionsArgs),
    /// What changed between two revisions (the second defaults to the current one).
    Diff(DiffArgs),
    /// Write one new revision whose config equals an earlier revision's.
    ///
    /// Certificates go back with the keys they had then; tokens are not config and stay as they are.
    Rollback(RollbackArgs),
    /// Staged releases: status, promote, abort.
    #[command(subcommand)]
    Release(ReleaseCommand),
    /// Shift the weights of a route's backends in one revision.
    ///
    /// With --wait, returns once every connected node has acknowledged the new revision; exits 3 when a
    /// node rejected it (NACK) and 4 on timeout.
    Weights(WeightsArgs),
    /// Fleet status: the current revision and every node with its acknowledged revision and last NACK.
    Status,
    /// Exit 0 when URL answers 2xx in time, 1 otherwise: a health check for containers whose
    /// image has no curl (e.g. `sluice probe http://127.0.0.1:7072/readyz`).
    Probe(ProbeArgs),
    /// One of the demo's backends on its own (for the compose example): an HTTP server that
    /// answers every request with `NAME\n`, or with --tcp an echo server that greets with it.
    #[command(hide = true)]
    DemoBackend(DemoBackendArgs),
}

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Also start built-in demo backends and register the example config (host myshop.com).
    #[arg(long)]
    pub demo: bool,
    /// Where the SQLite database, the admin token and the node's snapshot cache live.
    #[arg(long, default_value = "./.sluice")]
    pub data_dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub api_addr: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:7071")]
    pub grpc_addr: SocketAddr,
    /// The in-process node's admin endpoint (/healthz, /readyz, /metrics).
    #[arg(long, default_value = "127.0.0.1:7072")]
    pub admin_addr: SocketAddr,
    /// Address of the demo's HTTP listener.
    #[arg(long, default_value = "127.0.0.1:8080", requires = "demo")]
    pub demo_http_addr: SocketAddr,
    /// Address of the demo's TCP echo listener.
    #[arg(long, default_value = "127.0.0.1:15432", requires = "demo")]
    pub demo_tcp_addr: SocketAddr,
    #[command(flatten)]
    pub audit: AuditArgs,
    /// Log one line per request and per L4 connection of the in-process node (see `sluice proxy
    /// --help`).
    #[arg(long)]
    pub access_log: bool,
}

#[derive(Debug, Args)]
pub struct ControlPlaneArgs {
    /// `sqlite://PATH` (created if missing) or `postgres://...`.
    #[arg(long, env = "SLUICE_DATABASE_URL", default_value = "sqlite://./.sluice/sluice.db")]
    pub database_url: String,
    /// How many seconds start-up waits for a Postgres server that is not up yet (connection
    /// refused, server starting, database not created yet), retrying with backoff from 200 ms to
    /// 5 s; 0: fail at once. A malformed URL or a refused login fails at once either way.
    #[arg(long, env = "SLUICE_DATABASE_WAIT_S", default_value_t = 300, value_name = "SECONDS")]
    pub database_wait_s: u64,
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub api_addr: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:7071")]
    pub grpc_addr: SocketAddr,
    /// Server certificate (PEM) for mTLS on the config stream.
    #[arg(long, requires_all = ["grpc_tls_key", "grpc_client_ca"])]
    pub grpc_tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --grpc-tls-cert.
    #[arg(long, requires = "grpc_tls_cert")]
    pub grpc_tls_key: Option<PathBuf>,
    /// CA (PEM) that node client certificates must chain to.
    #[arg(long, requires = "grpc_tls_cert")]
    pub grpc_client_ca: Option<PathBuf>,
    #[command(flatten)]
    pub audit: AuditArgs,
    /// Release every write to this group's nodes first (a write may ask otherwise).
    #[arg(long, conflicts_with = "release_canary_percent")]
    pub release_canary_group: Option<String>,
    /// Release every write to this share of the connected nodes first.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=99))]
    pub release_canary_percent: Option<u8>,
    /// The bake of the default release.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub release_bake: Duration,
    /// The error rate that fails the default release.
    #[arg(long, default_value_t = 0.01)]
    pub release_max_error_rate: f64,
}

/// What the audit log keeps (refused calls are recorded too, so it is bounded by count as well).
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Audit entries older than this many days are deleted (0: kept whatever their age).
    #[arg(long, default_value_t = 90)]
    pub audit_retention_days: u64,
    /// Only the newest this many audit entries are kept (0: no limit).
    #[arg(long, default_value_t = 1_000_000)]
    pub audit_max_entries: u64,
}

impl AuditArgs {
    pub fn retention(&self) -> sluice_control_plane::AuditRetention {
        sluice_control_plane::AuditRetention {
            max_age: (self.audit_retention_days > 0)
                .then(|| std::time::Duration::from_secs(self.audit_retention_days.saturating_mul(24 * 3600))),
            max_entries: (self.audit_max_entries > 0).then_some(self.audit_max_entries),
        }
    }
}

#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// Control plane config-stream URL, e.g. http://127.0.0.1:7071; repeat to fail over between replicas.
    #[arg(long = "control-plane", required = true, value_name = "URL")]
    pub control_planes: Vec<String>,
    /// This node's id (default: the host name).
    #[arg(long)]
    pub node_id: Option<String>,
    /// The group whose listeners this node serves.
    #[arg(long, default_value = "default")]
    pub group: String,
    /// Admin endpoint: /healthz, /readyz, /metrics.
    #[arg(long, default_value = "127.0.0.1:7072")]
    pub admin_addr: SocketAddr,
    /// Directory for the last good snapshot, used at boot when no control plane answers.
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// CA (PEM) to verify the control plane with (mTLS).
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS to the control plane.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Log one line per request (target `sluice::access`: listener, client, method, host, target,
    /// status, route, cluster, endpoint, tries, request id, ms) and one per tcp or tls-passthrough
    /// connection when it ends (listener, client, sni, cluster, endpoint, received, sent, end,
    /// ms), with the other logs on stderr.
    #[arg(long)]
    pub access_log: bool,
    /// DNS server (IP:port) for endpoints given by name; repeatable. Default: the system's
    /// (/etc/resolv.conf with its search domains, and /etc/hosts).
    #[arg(long = "resolver", value_name = "IP:PORT")]
    pub resolvers: Vec<SocketAddr>,
    /// The longest an answer for an endpoint name is used before it is looked up again, whatever
    /// its TTL (seconds).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub dns_max_ttl_s: u64,
    /// Unix socket for restarts and upgrades that drop nothing: a proxy started with the path of
    /// a running one takes its listening sockets over, and the old one drains and exits.
    #[arg(long, value_name = "PATH")]
    pub upgrade_socket: Option<PathBuf>,
    /// On SIGTERM or Ctrl-C, how long /readyz fails while the proxy still serves, before it
    /// drains (so load balancers and Kubernetes in front of it stop sending first).
    #[arg(long, default_value_t = 0, value_name = "SECONDS")]
    pub shutdown_grace_s: u64,
    /// How long open connections may take to finish once the proxy stops accepting (default:
    /// each listener's drain_ms, 30 s unless set). A second signal stops at once.
    #[arg(long, value_name = "SECONDS")]
    pub drain_s: Option<u64>,
}

impl ProxyArgs {
    pub fn dns(&self) -> sluice_data_plane::DnsOptions {
        let defaults = sluice_data_plane::DnsOptions::default();
        let max_ttl = std::time::Duration::from_secs(self.dns_max_ttl_s);
        sluice_data_plane::DnsOptions {
            servers: self.resolvers.clone(),
            min_ttl: defaults.min_ttl.min(max_ttl),
            max_ttl,
            ..defaults
        }
    }
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// YAML or JSON file, or a directory of them; `-` for stdin. Repeatable.
    #[arg(short = 'f', long = "file", required = true)]
    pub files: Vec<PathBuf>,
    /// Validate on the server and show the diff; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also delete stored resources the files do not name, among those whose names start with
    /// --prefix (so that a prune never reaches another team's resources).
    #[arg(long, requires = "prefix")]
    pub prune: bool,
    /// The name prefix --prune is limited to.
    #[arg(long, requires = "prune")]
    pub prefix: Option<String>,
    /// Routes that exist keep their current backend weights: weights belong to whoever shifts
    /// them at run time (`sluice weights`, a rollout), not to the file.
    #[arg(long)]
    pub keep_weights: bool,
    #[command(flatten)]
    pub release: ReleaseArgs,
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// Releasing a write to a canary share of the fleet first.
#[derive(Debug, Args)]
pub struct ReleaseArgs {
    /// Release to the nodes of this group first; the others keep the previous revision until
    /// the canary nodes applied it cleanly and their error rate held for --bake.
    #[arg(long, conflicts_with = "canary_percent")]
    pub canary_group: Option<String>,
    /// Release to this share of the connected nodes first (at least one).
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=99))]
    pub canary_percent: Option<u8>,
    /// How long the canary nodes' error rate must hold (e.g. 60s, 5m).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub bake: Duration,
    /// The canary nodes' share of 5xx responses over the bake that fails the release.
    #[arg(long, default_value_t = 0.01)]
    pub max_error_rate: f64,
    /// Release at once, even when the control plane stages writes by default.
    #[arg(long, conflicts_with_all = ["canary_group", "canary_percent"])]
    pub immediate: bool,
}

/// Waiting for the fleet after a write.
#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Wait until every connected node has acknowledged the new revision (exit 3 when a node
    /// rejects it, 4 on timeout).
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits (e.g. 60s, 2m, 500ms).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Include certificates' private keys (admin token only).
    #[arg(long)]
    pub include_keys: bool,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Yaml)]
    pub output: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Json,
    Yaml,
}

#[derive(Debug, Args)]
pub struct RevisionsArgs {
    /// How many of the newest revisions to show.
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    pub from: u64,
    /// Defaults to the current revision.
    pub to: Option<u64>,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The revision whose config to restore.
    pub revision: u64,
    /// Show what the rollback would change; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub release: ReleaseArgs,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// An http:// URL, e.g. http://127.0.0.1:7070/healthz.
    pub url: String,
    /// How long the answer may take (e.g. 2s, 500ms).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
pub struct DemoBackendArgs {
    /// Where to listen, e.g. 0.0.0.0:9000.
    #[arg(long)]
    pub addr: SocketAddr,
    /// What it answers (HTTP) or greets with (--tcp), so that you can see which backend served.
    #[arg(long)]
    pub name: String,
    /// A TCP echo server instead of HTTP.
    #[arg(long)]
    pub tcp: bool,
}

#[derive(Debug, Subcommand)]
pub enum ReleaseCommand {
    /// The newest staged release: its state, canary nodes, bake, and why it failed.
    Status,
    /// End the bake now: every node gets the release.
    Promote,
    /// Stop the release: the canary nodes go back to the stable config.
    Abort,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// clusters, listeners, routes or certificates (singular works too).
    pub kind: String,
    /// One resource's name; without it, all of the kind.
    pub name: Option<String>,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// clusters, listeners, routes or certificates (singular works too).
    #[arg(required_unless_present = "files", requires = "name", conflicts_with = "files")]
    pub kind: Option<String>,
    pub name: Option<String>,
    /// Delete every resource these files (or directories) name, in one revision.
    #[arg(short = 'f', long = "file")]
    pub files: Vec<PathBuf>,
    /// Also delete what refers to them (routes of a listener, …); shows the list first.
    #[arg(long)]
    pub cascade: bool,
    /// Do not ask before a cascade (needed when stdin is not a terminal).
    #[arg(long, short = 'y')]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub struct WeightsArgs {
    /// The route's name.
    pub route: String,
    /// New weights as CLUSTER=WEIGHT; clusters not named keep their weight.
    #[arg(required = true, value_name = "CLUSTER=WEIGHT", value_parser = parse_weight)]
    pub weights: Vec<(String, u32)>,
    #[command(flatten)]
    pub wait: WaitArgs,
}

fn parse_weight(s: &str) -> Result<(String, u32), String> {
    let (cluster, weight) = s.split_once('=').ok_or_else(|| format!("{s:?} is not CLUSTER=WEIGHT"))?;
    let weight =
        weight.trim().parse::<u32>().map_err(|_| format!("{weight:?} is not a non-negative integer weight"))?;
    if cluster.is_empty() {
        return Err(format!("{s:?} names no cluster"));
    }
    Ok((cluster.to_string(), weight))
}

/// `90s`, `2m`, `500ms`, `1h`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a duration like 60s, 2m or 500ms"))?;
    let d = match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    };
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn weights() {
        assert_eq!(parse_weight("api-blue=90"), Ok(("api-blue".to_string(), 90)));
        assert!(parse_weight("api-blue").is_err());
        assert!(parse_weight("=3").is_err());
        assert!(parse_weight("a=-1").is_err());
    }

    #[test]
    fn weights_command_parses() {
        let cli = Cli::try_parse_from(["sluice", "weights", "api", "blue=0", "green=100", "--wait", "--timeout", "5s"])
            .unwrap();
        match cli.command {
            Command::Weights(w) => {
                assert_eq!(w.route, "api");
                assert_eq!(w.weights.len(), 2);
                assert!(w.wait.wait);
                assert_eq!(w.wait.timeout, Duration::from_secs(5));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
