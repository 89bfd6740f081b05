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

/// A resource a node left out of a revision it installed, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceError {
    pub kind: String,
    pub name: String,
    pub message: String,
}
