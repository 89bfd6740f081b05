//! The config stream server (DESIGN.md §4): one bidirectional gRPC stream per data-plane node.
//!
//! Each stream runs a [`session`] task that sends the node its group's snapshot, waits for the ACK
//! or NACK, and follows the store's revisions. Snapshots are built once per (group, revision) by
//! the shared [`SnapshotCache`].

mod cache;
mod session;
mod wire;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_shared::proto::v1 as pb;
use tokio::sync::{mpsc, watch, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tracing::Instrument;

use crate::store::Store;

pub use cache::{content_hash, GroupSnapshot, SnapshotCache};
pub use wire::{ConfigStreamServer, Outgoing};

pub use sluice_shared::proto::MAX_MESSAGE_SIZE;

/// Tuning of the stream server.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// Sent in every snapshot, so operators can tell replicas apart.
    pub control_plane_id: String,
    /// How often a connected node's `last_seen` is written to the store.
    pub status_interval: Duration,
    /// How long a new stream may take to send its Hello.
    pub hello_timeout: Duration,
    /// How long to wait for this replica to catch up with a node that reports a newer revision.
    pub catch_up_timeout: Duration,
}

impl StreamOptions {
    pub fn new(control_plane_id: impl Into<String>) -> Self {
        Self {
            control_plane_id: control_plane_id.into(),
            status_interval: Duration::from_secs(5),
            hello_timeout: Duration::from_secs(10),
            catch_up_timeout: Duration::from_secs(2),
        }
    }
}

/// How many NACKed content hashes to remember per node.
const NACK_MEMORY: usize = 32;

/// What outlives one stream of a node: content it refused, and which stream is the current one.
#[derive(Default)]
struct NodeMemory {
    nacked: VecDeque<u64>,
    /// Bumped by each new stream of the node; only the newest may mark it disconnected.
    generation: u64,
}

pub(crate) struct Shared {
    store: Store,
    cache: SnapshotCache,
    options: StreamOptions,
    nodes: Mutex<HashMap<String, NodeMemory>>,
    shutdown: watch::Receiver<bool>,
    /// Running sessions; [`ConfigStreamService::shutdown`] waits for zero.
    active: AtomicUsize,
    idle: Notify,
    /// Connected nodes per group, read from the store at most once per [`GROUP_COUNTS_TTL`].
    group_counts: tokio::sync::Mutex<Option<(std::time::Instant, HashMap<String, u32>)>>,
}

/// How stale the per-group node counts sessions share may be.
const GROUP_COUNTS_TTL: Duration = Duration::from_secs(1);

impl Shared {
    /// How many nodes of `group` are connected (to any replica), as the store says.
    async fn group_nodes(&self, group: &str) -> Option<u32> {
        let mut cached = self.group_counts.lock().await;
        let fresh = cached.as_ref().is_some_and(|(at, _)| at.elapsed() < GROUP_COUNTS_TTL);
        if !fresh {
            let records = self.store.nodes().await.ok()?;
            let now = sluice_shared::clock::unix_now_ms();
            *cached = Some((std::time::Instant::now(), crate::nodes::live_per_group(&records, now)));
        }
        cached.as_ref().map(|(_, counts)| counts.get(group).copied().unwrap_or(1))
    }
}

/// Counts a running session; dropping it (however the session ends) uncounts it.
pub(crate) struct SessionGuard(Arc<Shared>);

impl SessionGuard {
    fn new(shared: &Arc<Shared>) -> Self {
        shared.active.fetch_add(1, Ordering::SeqCst);
        SessionGuard(shared.clone())
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Shared {
    fn with_node<T>(&self, node_id: &str, f: impl FnOnce(&mut NodeMemory) -> T) -> T {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        f(nodes.entry(node_id.to_string()).or_default())
    }

    fn is_nacked(&self, node_id: &str, hash: u64) -> bool {
        self.with_node(node_id, |m| m.nacked.contains(&hash))
    }

    fn remember_nack(&self, node_id: &str, hash: u64) {
        self.with_node(node_id, |m| {
            if !m.nacked.contains(&hash) {
                if m.nacked.len() >= NACK_MEMORY {
                    m.nacked.pop_front();
                }
                m.nacked.push_back(hash);
            }
        })
    }
}

/// The config stream service (see [`ConfigStreamService::into_server`]). Cheap to clone.
#[derive(Clone)]
pub struct ConfigStreamService {
    shared: Arc<Shared>,
    shutdown_tx: Arc<watch::Sender<bool>>,
}

impl ConfigStreamService {
    pub fn new(store: Store, options: StreamOptions) -> Self {
        let (shutdown_tx, shutdown) = watch::channel(false);
        let shared = Arc::new(Shared {
            store,
            cache: SnapshotCache::default(),
            options,
            nodes: Mutex::new(HashMap::new()),
            shutdown,
            active: AtomicUsize::new(0),
            idle: Notify::new(),
            group_counts: tokio::sync::Mutex::new(None),
        });
        Self { shared, shutdown_tx: Arc::new(shutdown_tx) }
    }

    /// The gRPC service to add to a `tonic::transport::Server`.
    pub fn into_server(self) -> ConfigStreamServer {
        ConfigStreamServer::new(self, MAX_MESSAGE_SIZE)
    }

    pub fn control_plane_id(&self) -> &str {
        &self.shared.options.control_plane_id
    }

    /// Tells every node stream to end, without waiting for them.
    pub fn begin_shutdown(&self) {
        self.shutdown_tx.send_replace(true);
    }

    /// Ends every node stream (each marks its node disconnected) and waits up to `timeout` for them.
    /// New streams are refused from now on.
    pub async fn shutdown(&self, timeout: Duration) {
        self.begin_shutdown();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.idle.notified();
            tokio::pin!(notified);
            // Registered before the check, so a session ending in between still wakes us.
            notified.as_mut().enable();
            if self.shared.active.load(Ordering::SeqCst) == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                tracing::warn!(
                    remaining = self.shared.active.load(Ordering::SeqCst),
                    "node streams still running after shutdown timeout"
                );
                return;
            }
        }
    }
}

impl ConfigStreamService {
    /// Starts the session of one new node stream; its messages flow through the returned stream.
    fn open_stream(
        &self,
        request: tonic::Request<tonic::Streaming<pb::NodeMessage>>,
    ) -> Result<tonic::Response<wire::OutboundStream>, tonic::Status> {
        if *self.shared.shutdown.borrow() {
            return Err(tonic::Status::unavailable("control plane is shutting down"));
        }
        let peer = request.remote_addr();
        let inbound = request.into_inner();
        // Small: at most one snapshot is in flight, plus an advance and an error.
        let (tx, rx) = mpsc::channel(4);
        let guard = SessionGuard::new(&self.shared);
        let span =
            tracing::info_span!("node_stream", ?peer, node_id = tracing::field::Empty, group = tracing::field::Empty);
        tokio::spawn(session::run(guard, inbound, tx).instrument(span));
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }
}
