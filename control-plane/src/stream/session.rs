//! One node's stream: Hello, then a snapshot or an advance whenever the store moves, with at most
//! one snapshot un-acknowledged at a time (DESIGN.md §4).
//!
//! Coalescing falls out of the single in-flight snapshot: while one is out, new revisions are not
//! looked at; after its ACK/NACK the session builds from the newest state only.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use sluice_shared::proto::v1 as pb;
use sluice_shared::proto::v1::node_message::Msg as NodeMsg;
use sluice_shared::proto::v1::server_message::Msg as ServerMsg;
use sluice_shared::proto::MAX_HEALTH_REPORT_ENDPOINTS;
use sluice_shared::validate::is_valid_name;
use sluice_shared::Revision;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::wire::Outgoing;
use super::{SessionGuard, Shared};
use crate::nodes::{NodeRecord, ResourceError};
use crate::store::{EndpointHealth, HealthUpdate, NodeTraffic, State};

const MAX_NODE_ID: usize = 128;
/// NACK messages are stored and shown to operators; a node cannot make us store megabytes.
const MAX_NACK_MESSAGE: usize = 4096;
/// Resource errors kept per node: enough to act on, bounded whatever a node sends.
const MAX_RESOURCE_ERRORS: usize = 100;

fn resource_error(e: pb::ResourceError) -> ResourceError {
    let short = |s: String| truncate(s, 256);
    ResourceError { kind: short(e.kind), name: short(e.name), message: truncate(e.message, MAX_NACK_MESSAGE) }
}

type Outbound = mpsc::Sender<Result<Outgoing, Status>>;

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
enum End {
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("stream closed by the node")]
    Gone,
    #[error("a newer stream of the same node took over")]
    Superseded,
    #[error("control plane shutting down")]
    Shutdown,
}

/// What a node should hold next.
enum Target {
    Newest(Arc<State>),
    Snapshot(Arc<super::GroupSnapshot>),
}

struct InFlight {
    revision: Revision,
    nonce: String,
    content_hash: u64,
}

struct Session {
    shared: Arc<Shared>,
    tx: Outbound,
    node_id: String,
    group: String,
    /// The revision the node stands at (applied, or advanced to).
    acked: Revision,
    /// Content hash of what the node holds, when we know it.
    held: Option<u64>,
    in_flight: Option<InFlight>,
    last_nack: Option<(Revision, String)>,
    /// What the node left out of its acknowledged revision.
    resource_errors: Vec<ResourceError>,
    generation: u64,
    /// The endpoint health stored for this node by this stream; `None` until its first report lands.
    health: Option<BTreeMap<String, Vec<EndpointHealth>>>,
    /// The group's node count last sent (`FleetShare`).
    shared_among: Option<u32>,
}

/// Runs one node stream to its end, then records the node as disconnected.
pub(crate) async fn run(guard: SessionGuard, mut inbound: Streaming<pb::NodeMessage>, tx: Outbound) {
    let shared = guard.0.clone();
    let hello = match read_hello(&shared, &mut inbound).await {
        Ok(h) => h,
        Err(status) => {
            tracing::warn!(%status, "refused node stream");
            let _ = tx.send(Err(status)).await;
            return;
        }
    };
    let span = tracing::Span::current();
    span.record("node_id", hello.node_id.as_str());
    span.record("group", hello.group.as_str());
    let mut session = Session::open(shared, tx, hello).await;
    let end = session.serve(&mut inbound).await;
    match &end {
        End::Protocol(m) => {
            tracing::warn!(error = %m, "closing node stream");
            let _ = session.tx.send(Err(Status::invalid_argument(m.clone()))).await;
        }
        End::Shutdown => {
            let _ = session.tx.send(Err(Status::unavailable("control plane shutting down"))).await;
        }
        End::Gone | End::Superseded => {}
    }
    tracing::info!(reason = %end, acked = session.acked, "node stream ended");
    if !matches!(end, End::Superseded) {
        session.write_status(false).await;
        session.clear_health().await;
    }
    drop(guard);
}

async fn read_hello(shared: &Shared, inbound: &mut Streaming<pb::NodeMessage>) -> Result<pb::Hello, Status> {
    let first = tokio::time::timeout(shared.options.hello_timeout, inbound.message())
        .await
        .map_err(|_| Status::deadline_exceeded("no Hello received"))??;
    let mut hello = match first.and_then(|m| m.msg) {
        Some(NodeMsg::Hello(h)) => h,
        _ => return Err(Status::invalid_argument("the first message must be a Hello")),
    };
    if hello.node_id.is_empty()
        || hello.node_id.len() > MAX_NODE_ID
        || !hello.node_id.bytes().all(|c| c.is_ascii_graphic())
    {
        return Err(Status::invalid_argument(format!(
            "node_id must be 1-{MAX_NODE_ID} printable ASCII characters without spaces"
        )));
    }
    if hello.group.is_empty() {
        hello.group = "default".to_string();
    }
    if !is_valid_name(&hello.group) {
        return Err(Status::invalid_argument(format!("{:?} is not a valid group name", hello.group)));
    }
    Ok(hello)
}

impl Session {
    async fn open(shared: Arc<Shared>, tx: Outbound, hello: pb::Hello) -> Session {
        let generation = shared.with_node(&hello.node_id, |m| {
            m.generation += 1;
            m.generation
        });
        let reported = hello.last_applied_revision;
        tracing::info!(version = %hello.version, last_applied_revision = reported, "node connected");

        // A node ahead of us was served by a replica that saw newer writes: give our poller a
        // moment to catch up rather than send it older content.
        let mut rx = shared.store.subscribe();
        if reported > rx.borrow().revision {
            let _ =
                tokio::time::timeout(shared.options.catch_up_timeout, rx.wait_for(|s| s.revision >= reported)).await;
        }
        let state = rx.borrow().clone();

        // Keep the status history of a reconnecting node.
        let previous = match shared.store.nodes().await {
            Ok(nodes) => nodes.into_iter().find(|n| n.id == hello.node_id),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read node status");
                None
            }
        };
        let session = Session {
            held: hash_at(&shared, &hello.group, reported, &state).await,
            last_nack: previous.as_ref().and_then(|p| p.last_nack.clone()),
            resource_errors: previous.map(|p| p.resource_errors).unwrap_or_default(),
            shared,
            tx,
            node_id: hello.node_id,
            group: hello.group,
            acked: reported,
            in_flight: None,
            generation,
            health: None,
            shared_among: None,
        };
        // Refused content stays refused across reconnects (and restarts, while it is current).
        if let Some((nack_rev, _)) = session.last_nack.as_ref().filter(|(r, _)| *r > reported) {
            if let Some(h) = hash_at(&session.shared, &session.group, *nack_rev, &state).await {
                session.shared.remember_nack(&session.node_id, h);
            }
        }
        session.write_status(true).await;
        // Rows left by a stream that ended without cleaning up (a replica that died) are not news.
        session.clear_health().await;
        session
    }

    async fn serve(&mut self, inbound: &mut Streaming<pb::NodeMessage>) -> End {
        match self.serve_inner(inbound).await {
            Ok(never) => match never {},
            Err(end) => end,
        }
    }

    async fn serve_inner(&mut self, inbound: &mut Streaming<pb::NodeMessage>) -> Result<std::convert::Infallible, End> {
        let mut state_rx = self.shared.store.subscribe();
        let mut release_rx = self.shared.store.subscribe_release();
        let mut shutdown = self.shared.shutdown.clone();
        let mut tick = tokio::time::interval(self.shared.options.status_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick is immediate; connect already wrote the status
        loop {
            if *shutdown.borrow_and_update() {
                return Err(End::Shutdown);
            }
            if self.in_flight.is_none() {
                let newest = state_rx.borrow_and_update().clone();
                release_rx.borrow_and_update();
                let target = self.target(newest).await;
                self.sync(target).await?;
            }
            // After the first snapshot: what the node needs first is its config.
            if self.shared_among.is_none() {
                self.send_fleet_share().await?;
            }
            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        return Err(End::Shutdown);
                    }
                }
                msg = inbound.message() => match msg {
                    Ok(Some(m)) => self.handle(m).await?,
                    Ok(None) => return Err(End::Gone),
                    Err(status) => {
                        tracing::debug!(%status, "node stream error");
                        return Err(End::Gone);
                    }
                },
                // While a snapshot is in flight new revisions wait: that is the coalescing.
                changed = state_rx.changed(), if self.in_flight.is_none() => {
                    if changed.is_err() {
                        return Err(End::Shutdown);
                    }
                }
                changed = release_rx.changed(), if self.in_flight.is_none() => {
                    if changed.is_err() {
                        return Err(End::Shutdown);
                    }
                }
                _ = tick.tick() => {
                    if self.superseded() {
                        return Err(End::Superseded);
                    }
                    self.write_status(true).await;
                    self.send_fleet_share().await?;
                }
                _ = self.tx.closed() => return Err(End::Gone),
            }
        }
    }

    /// What this node should hold: the newest state's snapshot, unless a staged release holds it
    /// back (it is not a canary and the release changes its group's content): then the release's
    /// stable one.
    async fn target(&self, newest: Arc<State>) -> Target {
        let Some(active) = self.shared.store.active_release() else { return Target::Newest(newest) };
        if active.release.canary.includes(&self.node_id, &self.group) || active.stable.revision >= newest.revision {
            return Target::Newest(newest);
        }
        let stable = self.shared.cache.get_at(&self.group, &active.stable).await;
        let next = self.shared.cache.get(&self.group, &newest).await;
        if stable.content_hash == next.content_hash {
            Target::Snapshot(next)
        } else {
            Target::Snapshot(stable)
        }
    }

    /// Brings the node to `target`: nothing, an advance, or one snapshot.
    async fn sync(&mut self, target: Target) -> Result<(), End> {
        let snap = match target {
            Target::Newest(state) => {
                if self.held.is_some() && state.revision == self.acked {
                    return Ok(());
                }
                self.shared.cache.get(&self.group, &state).await
            }
            Target::Snapshot(snap) => snap,
        };
        if self.held == Some(snap.content_hash) {
            if snap.revision > self.acked {
                // Nothing changed for this group: move the node along without resending.
                self.send(ServerMsg::Advance(pb::RevisionAdvance { revision: snap.revision })).await?;
                tracing::debug!(revision = snap.revision, "advanced");
                self.acked = snap.revision;
                self.write_status(true).await;
            }
            return Ok(());
        }
        if self.shared.is_nacked(&self.node_id, snap.content_hash) {
            tracing::trace!(revision = snap.revision, "content was NACKed by this node; not resending");
            return Ok(());
        }
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        let message =
            snap.outgoing(nonce.clone(), &self.shared.options.control_plane_id, self.shared.store.sticky_key());
        self.tx.send(Ok(message)).await.map_err(|_| End::Gone)?;
        tracing::info!(revision = snap.revision, %nonce, "snapshot sent");
        self.in_flight = Some(InFlight { revision: snap.revision, nonce, content_hash: snap.content_hash });
        Ok(())
    }

    async fn handle(&mut self, m: pb::NodeMessage) -> Result<(), End> {
        match m.msg {
            Some(NodeMsg::Ack(a)) => {
                let Some(f) = self.take_in_flight(&a.nonce, a.revision) else { return Ok(()) };
                self.resource_errors = a.errors.into_iter().take(MAX_RESOURCE_ERRORS).map(resource_error).collect();
                if self.resource_errors.is_empty() {
                    tracing::info!(revision = f.revision, "acked");
                } else {
                    tracing::warn!(revision = f.revision, left_out = self.resource_errors.len(), "acked in part");
                }
                self.acked = f.revision;
                self.held = Some(f.content_hash);
                // A newer revision is installed: an older NACK no longer describes the node.
                self.last_nack = None;
                self.write_status(true).await;
            }
            Some(NodeMsg::Nack(n)) => {
                let Some(f) = self.take_in_flight(&n.nonce, n.revision) else { return Ok(()) };
                tracing::warn!(revision = f.revision, message = %n.message, "NACKed");
                self.shared.remember_nack(&self.node_id, f.content_hash);
                self.last_nack = Some((f.revision, truncate(n.message, MAX_NACK_MESSAGE)));
                self.write_status(true).await;
            }
            Some(NodeMsg::Health(report)) => self.record_health(report).await,
            Some(NodeMsg::Traffic(t)) => {
                let traffic = NodeTraffic { revision: t.revision, requests: t.requests, errors: t.errors };
                if let Err(e) = self.shared.store.record_traffic(&self.node_id, traffic).await {
                    tracing::warn!(error = %e, "cannot record traffic counts");
                }
            }
            Some(NodeMsg::Hello(_)) => return Err(End::Protocol("Hello sent twice on one stream".into())),
            // A message kind newer than this server: ignore it rather than drop the node.
            None => tracing::debug!("empty or unknown message ignored"),
        }
        Ok(())
    }

    /// The in-flight snapshot if `nonce` names it; a stale or unknown reply is logged and ignored.
    fn take_in_flight(&mut self, nonce: &str, revision: Revision) -> Option<InFlight> {
        match &self.in_flight {
            Some(f) if f.nonce == nonce => {
                if f.revision != revision {
                    tracing::warn!(sent = f.revision, replied = revision, "reply names another revision; nonce wins");
                }
                self.in_flight.take()
            }
            _ => {
                tracing::warn!(%nonce, revision, "reply matches no snapshot in flight; ignored");
                None
            }
        }
    }

    async fn send(&self, msg: ServerMsg) -> Result<(), End> {
        self.tx.send(Ok(Outgoing::Message(pb::ServerMessage { msg: Some(msg) }))).await.map_err(|_| End::Gone)
    }

    fn superseded(&self) -> bool {
        self.shared.with_node(&self.node_id, |m| m.generation != self.generation)
    }

    /// Stores what changed since the node's previous report. An oversized or malformed report is
    /// logged and ignored (the node keeps its stream); a store error makes the next report a full one.
    async fn record_health(&mut self, report: pb::HealthReport) {
        let clusters = match health_by_cluster(report.endpoints) {
            Ok(c) => c,
            Err(why) => {
                tracing::warn!(revision = report.revision, %why, "health report ignored");
                return;
            }
        };
        if self.superseded() {
            return;
        }
        let update = health_update(self.health.as_ref(), &clusters);
        if update.is_empty() {
            return;
        }
        match self.shared.store.update_node_health(&self.node_id, &update).await {
            Ok(()) => {
                tracing::debug!(revision = report.revision, changed = update.put.len(), "endpoint health recorded");
                self.health = Some(clusters);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot record endpoint health");
                self.health = None;
            }
        }
    }

    async fn clear_health(&self) {
        if self.superseded() {
            return;
        }
        if let Err(e) = self.shared.store.clear_node_health(&self.node_id).await {
            tracing::warn!(error = %e, "cannot clear endpoint health");
        }
    }

    /// Writes the node's status; a store error is logged, the stream goes on.
    /// Tells the node how many nodes its group has, when that changed.
    async fn send_fleet_share(&mut self) -> Result<(), End> {
        let Some(n) = self.shared.group_nodes(&self.group).await else { return Ok(()) };
        if self.shared_among != Some(n) {
            self.send(ServerMsg::FleetShare(pb::FleetShare { group_nodes: n })).await?;
            self.shared_among = Some(n);
        }
        Ok(())
    }

    async fn write_status(&self, connected: bool) {
        if self.superseded() {
            return;
        }
        let record = NodeRecord {
            id: self.node_id.clone(),
            group: self.group.clone(),
            acked_revision: self.acked,
            last_nack: self.last_nack.clone(),
            resource_errors: self.resource_errors.clone(),
            last_seen_ms: now_ms(),
            connected,
        };
        if let Err(e) = self.shared.store.upsert_node(&record).await {
            tracing::warn!(error = %e, "cannot record node status");
        }
    }
}

/// The content hash `group` had at `revision`, when this process knows it.
async fn hash_at(shared: &Shared, group: &str, revision: Revision, state: &Arc<State>) -> Option<u64> {
    if revision == 0 {
        return None;
    }
    if let Some(h) = shared.cache.hash_at(group, revision).await {
        return Some(h);
    }
    if revision == state.revision {
        let snap = shared.cache.get(group, state).await;
        if snap.revision == revision {
            return Some(snap.content_hash);
        }
        return shared.cache.hash_at(group, revision).await;
    }
    None
}

/// A report's endpoints grouped by cluster, each cluster's sorted by address; an error names what
/// is wrong with the report (too large, a bad cluster name or address).
fn health_by_cluster(endpoints: Vec<pb::EndpointHealth>) -> Result<BTreeMap<String, Vec<EndpointHealth>>, String> {
    if endpoints.len() > MAX_HEALTH_REPORT_ENDPOINTS {
        return Err(format!("{} endpoints, at most {MAX_HEALTH_REPORT_ENDPOINTS} are accepted", endpoints.len()));
    }
    let mut clusters: BTreeMap<String, Vec<EndpointHealth>> = BTreeMap::new();
    for e in endpoints {
        if !is_valid_name(&e.cluster) {
            return Err(format!("{:?} is not a cluster name", truncate(e.cluster, 64)));
        }
        let Ok(address) = e.address.parse::<SocketAddr>() else {
            return Err(format!("{:?} is not an IP:port address", truncate(e.address, 64)));
        };
        let entry = EndpointHealth { address: address.to_string(), healthy: e.healthy, ejected: e.ejected };
        clusters.entry(e.cluster).or_default().push(entry);
    }
    for list in clusters.values_mut() {
        list.sort_by(|a, b| a.address.cmp(&b.address));
        list.dedup_by(|a, b| a.address == b.address);
    }
    Ok(clusters)
}

/// The writes that turn `stored` (`None`: unknown, replace everything) into `report`.
fn health_update(
    stored: Option<&BTreeMap<String, Vec<EndpointHealth>>>,
    report: &BTreeMap<String, Vec<EndpointHealth>>,
) -> HealthUpdate {
    let Some(stored) = stored else {
        return HealthUpdate {
            replace_all: true,
            put: report.iter().map(|(c, e)| (c.clone(), e.clone())).collect(),
            removed: Vec::new(),
        };
    };
    HealthUpdate {
        replace_all: false,
        put: report.iter().filter(|(c, e)| stored.get(*c) != Some(*e)).map(|(c, e)| (c.clone(), e.clone())).collect(),
        removed: stored.keys().filter(|c| !report.contains_key(*c)).cloned().collect(),
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(cluster: &str, address: &str, healthy: bool) -> pb::EndpointHealth {
        pb::EndpointHealth { cluster: cluster.into(), address: address.into(), healthy, ejected: false }
    }

    #[test]
    fn health_updates_write_only_changed_clusters() {
        let first = health_by_cluster(vec![
            ep("a", "127.0.0.1:2", true),
            ep("a", "127.0.0.1:1", true),
            ep("b", "127.0.0.1:3", true),
        ])
        .unwrap();
        assert_eq!(first["a"][0].address, "127.0.0.1:1", "sorted by address");
        let full = health_update(None, &first);
        assert!(full.replace_all);
        assert_eq!(full.put.len(), 2);
        assert!(health_update(Some(&first), &first).is_empty());

        let second = health_by_cluster(vec![ep("a", "127.0.0.1:1", false), ep("a", "127.0.0.1:2", true)]).unwrap();
        let update = health_update(Some(&first), &second);
        assert!(!update.replace_all);
        assert_eq!(update.put.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>(), ["a"]);
        assert_eq!(update.removed, ["b"]);
    }

    #[test]
    fn bad_health_reports_are_refused() {
        assert!(health_by_cluster(vec![ep("Bad Name", "127.0.0.1:1", true)]).is_err());
        assert!(health_by_cluster(vec![ep("a", "localhost:1", true)]).is_err());
        let many = (0..=MAX_HEALTH_REPORT_ENDPOINTS).map(|i| ep("a", &format!("127.0.0.1:{}", i % 60000 + 1), true));
        assert!(health_by_cluster(many.collect()).is_err());
    }
}
