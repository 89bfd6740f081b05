//! `GET /v1/nodes`: each data-plane node with a state derived from what it acknowledged.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use serde::Serialize;
use sluice_shared::clock::{rfc3339_ms, unix_now_ms as now_ms};
use sluice_shared::Revision;

use super::{with_etag, Action, ApiError, Caller, Shared};
use crate::nodes::{NodeRecord, ResourceError};

/// A node not heard from for this long counts as disconnected, whatever its stream last said.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    Synced,
    Stale,
    Nacked,
    /// Installed its acknowledged revision except some resources (see `resource_errors`).
    Degraded,
    /// Kept at a staged release's stable revision until the canary nodes have baked it.
    Held,
    Disconnected,
}

#[derive(Debug, Serialize)]
struct NodeView<'a> {
    id: &'a str,
    group: &'a str,
    state: NodeState,
    acked_revision: Revision,
    last_nack: Option<NackView<'a>>,
    /// What the node could not apply of its acknowledged revision, and why.
    resource_errors: &'a [ResourceError],
    /// Its part in the newest release while that is in progress or after it failed: canary or held.
    release: serde_json::Value,
    last_seen: String,
}

#[derive(Debug, Serialize)]
struct NackView<'a> {
    revision: Revision,
    message: &'a str,
}

pub fn node_state(n: &NodeRecord, current: Revision, now_ms: i64) -> NodeState {
    if !n.is_live(now_ms) {
        NodeState::Disconnected
    } else if n.last_nack.as_ref().is_some_and(|(rev, _)| *rev > n.acked_revision) {
        NodeState::Nacked
    } else if !n.resource_errors.is_empty() {
        NodeState::Degraded
    } else if n.acked_revision == current {
        NodeState::Synced
    } else {
        NodeState::Stale
    }
}

pub(super) async fn list(State(app): State<Shared>, caller: Extension<Caller>) -> Result<Response, ApiError> {
    caller.permit(Action::Read)?;
    let records = app.store.nodes().await?;
    let release = app.store.latest_release().await?;
    let current = app.store.state().revision;
    let now = now_ms();
    let views: Vec<_> = records
        .iter()
        .map(|n| NodeView {
            id: &n.id,
            group: &n.group,
            state: match node_state(n, current, now) {
                NodeState::Stale if held(release.as_ref(), n) => NodeState::Held,
                state => state,
            },
            acked_revision: n.acked_revision,
            last_nack: n.last_nack.as_ref().map(|(revision, message)| NackView { revision: *revision, message }),
            resource_errors: &n.resource_errors,
            release: super::release::node_part(release.as_ref(), n),
            last_seen: rfc3339_ms(n.last_seen_ms),
        })
        .collect();
    let body = serde_json::to_value(views).map_err(|_| ApiError::unavailable())?;
    Ok(with_etag(StatusCode::OK, current, body))
}

/// Whether a release in progress keeps `n` at its stable revision.
fn held(release: Option<&crate::store::Release>, n: &NodeRecord) -> bool {
    release.is_some_and(|r| {
        r.state.is_active() && !r.canary.includes(&n.id, &n.group) && n.acked_revision >= r.stable_revision
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states() {
        let now = 1_000_000;
        let n = NodeRecord {
            id: "n".into(),
            group: "default".into(),
            acked_revision: 5,
            last_nack: None,
            resource_errors: Vec::new(),
            last_seen_ms: now - 1_000,
            connected: true,
        };
        assert_eq!(node_state(&n, 5, now), NodeState::Synced);
        assert_eq!(node_state(&n, 6, now), NodeState::Stale);
        let nacked = NodeRecord { last_nack: Some((6, "bad".into())), ..n.clone() };
        assert_eq!(node_state(&nacked, 6, now), NodeState::Nacked);
        let recovered = NodeRecord { last_nack: Some((4, "old".into())), ..n.clone() };
        assert_eq!(node_state(&recovered, 5, now), NodeState::Synced);
        let error = ResourceError { kind: "listener".into(), name: "web".into(), message: "port taken".into() };
        let degraded = NodeRecord { resource_errors: vec![error], ..n.clone() };
        assert_eq!(node_state(&degraded, 5, now), NodeState::Degraded);
        let quiet = NodeRecord { last_seen_ms: now - 31_000, ..n.clone() };
        assert_eq!(node_state(&quiet, 5, now), NodeState::Disconnected);
        let gone = NodeRecord { connected: false, ..n };
        assert_eq!(node_state(&gone, 5, now), NodeState::Disconnected);
    }
}
