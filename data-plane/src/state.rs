//! What every task of a node shares: the installed table, metrics, the upstream client.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use sluice_shared::Revision;

use crate::http::sticky::StickySessions;
use crate::http::upstream::{self, UpstreamClient};
use crate::metrics::{Metrics, StatsIndex};
use crate::table::{HttpOptions, Table};
use crate::tls::TlsConfigs;

/// One installed revision: the compiled table plus the request path's handles to its counters.
pub struct Installed {
    pub revision: Revision,
    pub table: Table,
    pub stats: StatsIndex,
    /// TLS settings of the https listeners and TLS clusters, per revision (see `tls`).
    pub tls: TlsConfigs,
    /// Signing and reading sticky cookies for this revision's sticky routes.
    pub sticky: StickySessions,
}

pub struct Shared {
    /// `None` until the first valid table is installed (readyz 503). Swapped with one `store`.
    pub installed: ArcSwapOption<Installed>,
    pub metrics: Metrics,
    pub client: UpstreamClient,
    /// Signs sticky cookies when the control plane sends no fleet-wide key (an older one).
    pub node_sticky_key: [u8; 32],
    /// The node is shutting down: `/readyz` fails so that what sends traffic here stops.
    pub stopping: std::sync::atomic::AtomicBool,
    /// Connected nodes of this node's group, as the control plane counts them: what a
    /// fleet-wide rate limit is shared among (1 until told).
    pub group_nodes: std::sync::atomic::AtomicU32,
    /// A control plane has brought the node up to date (a snapshot, an advance, or its word that
    /// the cached revision is current), not only the cache.
    pub synced: std::sync::atomic::AtomicBool,
}

impl Shared {
    pub fn new() -> Shared {
        Shared {
            installed: ArcSwapOption::empty(),
            metrics: Metrics::default(),
            client: upstream::client(),
            node_sticky_key: rand::random(),
            stopping: std::sync::atomic::AtomicBool::new(false),
            group_nodes: std::sync::atomic::AtomicU32::new(1),
            synced: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

/// Per downstream connection: which listener accepted it and from whom.
pub struct ConnCtx {
    pub listener: Arc<str>,
    pub peer: SocketAddr,
    /// `x-forwarded-proto`.
    pub scheme: &'static str,
    pub shared: Arc<Shared>,
}

impl ConnCtx {
    /// The listener's HTTP versions and HTTP/2 limits as installed now (the defaults when the
    /// listener is not in the installed table).
    pub fn http_options(&self) -> HttpOptions {
        let installed = self.shared.installed.load();
        installed.as_ref().and_then(|i| i.table.listener(&self.listener)).map(|l| *l.http()).unwrap_or_default()
    }
}
