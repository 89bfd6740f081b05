//! Group snapshots, built once per (group, revision) and shared by every node of the group.
//!
//! Each snapshot carries a hash of its content (the group's resources, not the revision), so a
//! session can tell "this revision changed nothing for my group" (send `RevisionAdvance`) from a
//! real change, and recognise content a node already NACKed.

use std::collections::{HashMap, VecDeque};
use std::hash::Hasher;
use std::sync::{Arc, Mutex};

use sluice_shared::proto::v1 as pb;
use sluice_shared::{Config, Revision};

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
    /// Resources only: `revision`, `nonce` and `control_plane_id` are empty, see [`Self::message`].
    pub resources: Arc<pb::Snapshot>,
}

impl GroupSnapshot {
    /// Builds the snapshot of `group` from `config`. When `previous` has the same content its
    /// resources are reused, so unchanged groups cost one hash, not a second copy.
    pub fn build(config: &Config, group: &str, revision: Revision, previous: Option<&GroupSnapshot>) -> GroupSnapshot {
        let view = config.for_group(group);
        let content_hash = content_hash(&view);
        let resources = match previous {
            Some(p) if p.content_hash == content_hash => p.resources.clone(),
            _ => Arc::new(pb::Snapshot::from(&view)),
        };
        GroupSnapshot { group: group.to_string(), revision, content_hash, resources }
    }

    /// The message for one node: the shared resources plus this send's revision, nonce and sender.
    pub fn message(&self, nonce: String, control_plane_id: &str) -> pb::Snapshot {
        pb::Snapshot {
            revision: self.revision,
            nonce,
            control_plane_id: control_plane_id.to_string(),
            ..(*self.resources).clone()
        }
    }
}

/// A stable hash of a group's resources. The model's maps are ordered, so its JSON form is canonical
/// (the proto form is not: prost encodes `map` fields from a `HashMap`).
pub fn content_hash(view: &Config) -> u64 {
    struct HashWriter(std::collections::hash_map::DefaultHasher);
    impl std::io::Write for HashWriter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.write(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut w = HashWriter(Default::default());
    // Serializing maps of plain structs cannot fail; on the impossible error the hash stays partial,
    // which only costs a resend.
    let _ = serde_json::to_writer(&mut w, view);
    w.0.finish()
}

#[derive(Default)]
struct GroupEntry {
    latest: Option<Arc<GroupSnapshot>>,
    /// Content hash of every revision built for this group, oldest first.
    history: VecDeque<(Revision, u64)>,
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
        assert_eq!(a.resources.routes.len(), 1);
        assert_eq!(a.resources.clusters.len(), 1, "only the clusters the group refers to");
        let msg = a.message("n1".into(), "cp");
        assert_eq!((msg.revision, msg.nonce.as_str(), msg.control_plane_id.as_str()), (1, "n1", "cp"));
    }

    #[tokio::test]
    async fn unchanged_content_keeps_hash_and_resources() {
        let cache = SnapshotCache::default();
        let a = cache.get("edge", &state(1, 1)).await;
        let b = cache.get("edge", &state(2, 5)).await;
        assert_eq!(b.revision, 2);
        assert_eq!(a.content_hash, b.content_hash, "a default-group route changed, not edge");
        assert!(Arc::ptr_eq(&a.resources, &b.resources));
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
    fn hash_is_deterministic() {
        assert_eq!(content_hash(&config(3)), content_hash(&config(3)));
        assert_ne!(content_hash(&config(3)), content_hash(&config(4)));
    }
}
