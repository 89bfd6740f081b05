//! Group snapshots, built once per (group, revision) and shared by every node of the group.
//!
//! Each snapshot carries a hash of its content (the group's resources, not the revision), so a
//! session can tell "this revision changed nothing for my group" (send `RevisionAdvance`) from a
//! real change, and recognise content a node already NACKed.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::Hasher;
use std::sync::{Arc, Mutex};

use prost::bytes::Bytes;
use prost::Message;
use serde::Serialize;
use sluice_shared::convert;
use sluice_shared::model::{Certificate, Cluster, Listener, Route};
use sluice_shared::proto::v1 as pb;
use sluice_shared::{Config, Revision};

use super::wire::Outgoing;
use crate::store::State;

/// How many (revision, hash) pairs each group remembers, to recognise what a reconnecting node holds.
const HISTORY: usize = 256;

/// The resources one group needs at one revision.
#[derive(Debug)]
pub struct GroupSnapshot {
    pub group: String,
    pub revision: Revision,
    /// Hash of the group's resources; equal hashes mean equal content.
    pub content_hash: u64,
    /// The resources, protobuf-encoded once: `Snapshot` fields 4-7, without revision, nonce and
    /// sender, which [`Self::outgoing`] puts in front per node.
    pub encoded: Bytes,
}

impl GroupSnapshot {
    /// Builds the snapshot of `group` from `config`. When `previous` has the same content its
    /// encoding is reused, so a revision that leaves the group alone costs one hash, not a copy.
    pub fn build(config: &Config, group: &str, revision: Revision, previous: Option<&GroupSnapshot>) -> GroupSnapshot {
        let view = GroupView::new(config, group);
        let content_hash = view.content_hash();
        let encoded = match previous {
            Some(p) if p.content_hash == content_hash => p.encoded.clone(),
            _ => Bytes::from(view.to_pb().encode_to_vec()),
        };
        GroupSnapshot { group: group.to_string(), revision, content_hash, encoded }
    }

    /// The message for one node: the shared encoding plus this send's revision, nonce, sender
    /// and the fleet's sticky-cookie key.
    pub fn outgoing(&self, nonce: String, control_plane_id: &str, sticky_key: &Bytes) -> Outgoing {
        Outgoing::Snapshot {
            revision: self.revision,
            nonce,
            control_plane_id: control_plane_id.to_string(),
            sticky_key: sticky_key.clone(),
            resources: self.encoded.clone(),
        }
    }

    /// The same message as a [`pb::Snapshot`] (decoded; for tests and tools, not the hot path).
    pub fn message(&self, nonce: String, control_plane_id: &str) -> pb::Snapshot {
        let resources = pb::Snapshot::decode(self.encoded.as_ref()).unwrap_or_default();
        pb::Snapshot { revision: self.revision, nonce, control_plane_id: control_plane_id.to_string(), ..resources }
    }
}

/// [`Config::for_group`] by reference: what a group needs, without copying it.
#[derive(Serialize)]
struct GroupView<'a> {
    clusters: BTreeMap<&'a str, &'a Cluster>,
    listeners: BTreeMap<&'a str, &'a Listener>,
    routes: BTreeMap<&'a str, &'a Route>,
    certificates: BTreeMap<&'a str, &'a Certificate>,
}

impl<'a> GroupView<'a> {
    fn new(config: &'a Config, group: &str) -> Self {
        let listeners: BTreeMap<&str, &Listener> =
            config.listeners.iter().filter(|(_, l)| l.group == group).map(|(n, l)| (n.as_str(), l)).collect();
        let routes: BTreeMap<&str, &Route> = config
            .routes
            .iter()
            .filter(|(_, r)| listeners.contains_key(r.listener.as_str()))
            .map(|(n, r)| (n.as_str(), r))
            .collect();
        let mut cluster_names = BTreeSet::new();
        let mut cert_names = BTreeSet::new();
        for l in listeners.values() {
            cluster_names.extend(l.cluster.as_deref());
            cluster_names.extend(l.sni.values().map(String::as_str));
            cert_names.extend(l.certificates.iter().map(String::as_str));
        }
        for r in routes.values() {
            cluster_names.extend(r.backends.iter().map(|b| b.cluster.as_str()));
        }
        GroupView {
            clusters: cluster_names.into_iter().filter_map(|n| config.clusters.get_key_value(n)).map(by_str).collect(),
            certificates: cert_names
                .into_iter()
                .filter_map(|n| config.certificates.get_key_value(n))
                .map(by_str)
                .collect(),
            listeners,
            routes,
        }
    }

    /// A stable hash of the content. The maps are ordered, so the JSON form is canonical (the
    /// proto form is not: prost encodes `map` fields from a `HashMap`).
    fn content_hash(&self) -> u64 {
        // Serializing references to plain structs into a Vec cannot fail; should it, the partial
        // buffer still hashes deterministically, and a wrong "changed" only costs a resend.
        let mut buf = Vec::with_capacity(64 * 1024);
        let _ = serde_json::to_writer(&mut buf, self);
        let mut h = std::collections::hash_map::DefaultHasher::new();
        h.write(&buf);
        h.finish()
    }

    fn to_pb(&self) -> pb::Snapshot {
        pb::Snapshot {
            listeners: self.listeners.iter().map(|(n, l)| convert::listener_to_pb(n, l)).collect(),
            routes: self.routes.iter().map(|(n, r)| convert::route_to_pb(n, r)).collect(),
            clusters: self.clusters.iter().map(|(n, c)| convert::cluster_to_pb(n, c)).collect(),
            certificates: self.certificates.iter().map(|(n, c)| convert::certificate_to_pb(n, c)).collect(),
            ..Default::default()
        }
    }
}

fn by_str<'a, T>((n, v): (&'a String, &'a T)) -> (&'a str, &'a T) {
    (n.as_str(), v)
}

/// The content hash of a whole config (e.g. one produced by [`Config::for_group`]).
pub fn content_hash(config: &Config) -> u64 {
    GroupView {
        clusters: config.clusters.iter().map(by_str).collect(),
        listeners: config.listeners.iter().map(by_str).collect(),
        routes: config.routes.iter().map(by_str).collect(),
        certificates: config.certificates.iter().map(by_str).collect(),
    }
    .content_hash()
}

#[derive(Default)]
struct GroupEntry {
    latest: Option<Arc<GroupSnapshot>>,
    /// Content hash of every revision built for this group, oldest first.
    history: VecDeque<(Revision, u64)>,
    /// One older revision asked for exactly: a staged release's stable one, which held nodes keep.
    older: Option<Arc<GroupSnapshot>>,
}

/// Per-group snapshot cache shared by all sessions.
#[derive(Default)]
pub struct SnapshotCache {
    groups: Mutex<HashMap<String, Arc<tokio::sync::Mutex<GroupEntry>>>>,
}

impl SnapshotCache {
    fn entry(&self, group: &str) -> Arc<tokio::sync::Mutex<GroupEntry>> {
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        groups.entry(group.to_string()).or_default().clone()
    }

    /// The snapshot of `group` at `state.revision` or newer. Built at most once per revision: the
    /// group's other sessions wait for the first builder and share its result.
    pub async fn get(&self, group: &str, state: &Arc<State>) -> Arc<GroupSnapshot> {
        let entry = self.entry(group);
        let mut entry = entry.lock().await;
        if let Some(s) = entry.latest.as_ref().filter(|s| s.revision >= state.revision) {
            return s.clone();
        }
        let previous = entry.latest.clone();
        let (state2, group2) = (state.clone(), group.to_string());
        // Large configs take milliseconds to convert: keep that off the async workers.
        let built = tokio::task::spawn_blocking(move || {
            GroupSnapshot::build(&state2.config, &group2, state2.revision, previous.as_deref())
        })
        .await;
        let snapshot = match built {
            Ok(s) => Arc::new(s),
            // Only a panic inside the build gets here; build in place rather than fail the node.
            Err(_) => Arc::new(GroupSnapshot::build(&state.config, group, state.revision, None)),
        };
        if entry.history.len() >= HISTORY {
            entry.history.pop_front();
        }
        entry.history.push_back((snapshot.revision, snapshot.content_hash));
        entry.latest = Some(snapshot.clone());
        snapshot
    }

    /// The group's snapshot at exactly `state`'s revision, even when a newer one is cached (the
    /// stable revision of a staged release). Built once and kept beside the newest.
    pub async fn get_at(&self, group: &str, state: &Arc<State>) -> Arc<GroupSnapshot> {
        let entry = self.entry(group);
        let mut entry = entry.lock().await;
        for s in [&entry.latest, &entry.older].into_iter().flatten() {
            if s.revision == state.revision {
                return s.clone();
            }
        }
        if entry.latest.as_ref().is_none_or(|l| l.revision < state.revision) {
            drop(entry);
            return self.get(group, state).await;
        }
        let (state2, group2) = (state.clone(), group.to_string());
        let built =
            tokio::task::spawn_blocking(move || GroupSnapshot::build(&state2.config, &group2, state2.revision, None))
                .await
                .unwrap_or_else(|_| GroupSnapshot::build(&state.config, group, state.revision, None));
        let snapshot = Arc::new(built);
        entry.older = Some(snapshot.clone());
        snapshot
    }

    /// The content hash `group` had at `revision`, if this process built that revision.
    pub async fn hash_at(&self, group: &str, revision: Revision) -> Option<u64> {
        let entry = self.entry(group);
        let entry = entry.lock().await;
        entry.history.iter().rev().find(|(r, _)| *r == revision).map(|(_, h)| *h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_shared::validate::parse_json;

    fn config(weight: u32) -> Config {
        let mut c = Config::default();
        c.clusters.insert("a".into(), parse_json(br#"{"endpoints":[{"address":"127.0.0.1:9001"}]}"#).unwrap());
        c.clusters.insert("b".into(), parse_json(br#"{"endpoints":[{"address":"127.0.0.1:9002"}]}"#).unwrap());
        c.listeners.insert("web".into(), parse_json(br#"{"address":"127.0.0.1:8080","protocol":"http"}"#).unwrap());
        c.listeners.insert(
            "pg".into(),
            parse_json(br#"{"address":"127.0.0.1:5432","protocol":"tcp","cluster":"b","group":"edge"}"#).unwrap(),
        );
        let route = format!(r#"{{"listener":"web","backends":[{{"cluster":"a","weight":{weight}}}]}}"#);
        c.routes.insert("r".into(), parse_json(route.as_bytes()).unwrap());
        c
    }

    fn state(revision: Revision, weight: u32) -> Arc<State> {
        Arc::new(State { revision, config: config(weight) })
    }

    #[tokio::test]
    async fn built_once_per_revision_and_shared() {
        let cache = SnapshotCache::default();
        let s1 = state(1, 1);
        let a = cache.get("default", &s1).await;
        let b = cache.get("default", &s1).await;
        assert!(Arc::ptr_eq(&a, &b));
        let msg = a.message("n1".into(), "cp");
        assert_eq!(msg.routes.len(), 1);
        assert_eq!(msg.clusters.len(), 1, "only the clusters the group refers to");
        assert_eq!((msg.revision, msg.nonce.as_str(), msg.control_plane_id.as_str()), (1, "n1", "cp"));
    }

    #[tokio::test]
    async fn unchanged_content_keeps_hash_and_resources() {
        let cache = SnapshotCache::default();
        let a = cache.get("edge", &state(1, 1)).await;
        let b = cache.get("edge", &state(2, 5)).await;
        assert_eq!(b.revision, 2);
        assert_eq!(a.content_hash, b.content_hash, "a default-group route changed, not edge");
        assert_eq!(a.encoded.as_ptr(), b.encoded.as_ptr(), "the encoding is shared, not rebuilt");
        let c = cache.get("default", &state(1, 1)).await;
        let d = cache.get("default", &state(2, 5)).await;
        assert_ne!(c.content_hash, d.content_hash);
        assert_eq!(cache.hash_at("default", 1).await, Some(c.content_hash));
        assert_eq!(cache.hash_at("default", 3).await, None);
    }

    #[tokio::test]
    async fn an_older_state_gets_the_newer_snapshot() {
        let cache = SnapshotCache::default();
        cache.get("default", &state(3, 1)).await;
        assert_eq!(cache.get("default", &state(2, 1)).await.revision, 3);
    }

    #[test]
    fn view_matches_for_group() {
        let c = config(2);
        for group in ["default", "edge", "none"] {
            let owned = c.for_group(group);
            let view = GroupView::new(&c, group);
            assert_eq!(serde_json::to_string(&view).unwrap(), serde_json::to_string(&owned).unwrap(), "{group}");
            assert_eq!(view.content_hash(), content_hash(&owned));
            assert_eq!(view.to_pb(), pb::Snapshot::from(&owned));
        }
    }

    #[test]
    fn hash_is_deterministic() {
        assert_eq!(content_hash(&config(3)), content_hash(&config(3)));
        assert_ne!(content_hash(&config(3)), content_hash(&config(4)));
    }
}
