//! What the control plane knows of each data-plane node, as stored and shown by `GET /v1/nodes`.

use serde::{Deserialize, Serialize};
use sluice_shared::Revision;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub id: String,
    pub group: String,
    pub acked_revision: Revision,
    /// The newest NACK: revision and the node's message. Cleared by the next Ack.
    pub last_nack: Option<(Revision, String)>,
    /// What the node could not apply of its acknowledged revision (empty: applied cleanly).
    pub resource_errors: Vec<ResourceError>,
    /// Unix time in milliseconds of the last message or keep-alive on the node's stream.
    pub last_seen_ms: i64,
    pub connected: bool,
}

/// A node not heard from for this long counts as disconnected, whatever its stream said last.
pub const DISCONNECTED_AFTER_MS: i64 = 30_000;

impl NodeRecord {
    /// Whether the node is connected to some replica as of `now_ms`.
    pub fn is_live(&self, now_ms: i64) -> bool {
        self.connected && now_ms.saturating_sub(self.last_seen_ms) <= DISCONNECTED_AFTER_MS
    }
}

/// Connected nodes per group.
pub fn live_per_group(records: &[NodeRecord], now_ms: i64) -> std::collections::HashMap<String, u32> {
    let mut out = std::collections::HashMap::new();
    for r in records.iter().filter(|r| r.is_live(now_ms)) {
        *out.entry(r.group.clone()).or_insert(0) += 1;
    }
    out
}

/// A resource a node left out of a revision it installed, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceError {
    pub kind: String,
    pub name: String,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, group: &str, connected: bool, last_seen_ms: i64) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            group: group.into(),
            acked_revision: 1,
            last_nack: None,
            resource_errors: Vec::new(),
            last_seen_ms,
            connected,
        }
    }

    #[test]
    fn only_live_nodes_count_toward_their_group() {
        let now = 1_000_000;
        let records = [
            node("a", "edge", true, now),
            node("b", "edge", true, now - DISCONNECTED_AFTER_MS),
            node("c", "edge", true, now - DISCONNECTED_AFTER_MS - 1),
            node("d", "edge", false, now),
            node("e", "default", true, now),
        ];
        let counts = live_per_group(&records, now);
        assert_eq!(counts.get("edge"), Some(&2));
        assert_eq!(counts.get("default"), Some(&1));
        assert_eq!(counts.get("other"), None);
    }
}
