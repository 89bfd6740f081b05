//! What the control plane knows of each data-plane node, as stored and shown by `GET /v1/nodes`.

use sluice_shared::Revision;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub id: String,
    pub group: String,
    pub acked_revision: Revision,
    /// The newest NACK: revision and the node's message.
    pub last_nack: Option<(Revision, String)>,
    /// Unix time in milliseconds of the last message or keep-alive on the node's stream.
    pub last_seen_ms: i64,
    pub connected: bool,
}
