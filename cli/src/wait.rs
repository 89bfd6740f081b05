//! `--wait`: polls `GET /v1/nodes` until every connected node has acknowledged a revision, and
//! fails at once when one rejected it.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;

use crate::args::WaitArgs;
use crate::client::Client;
use crate::Failure;

/// How often --wait polls GET /v1/nodes.
const POLL: Duration = Duration::from_millis(200);

/// What the fleet says about one revision.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// Every connected node acknowledged it (the ids of those nodes).
    Done(Vec<String>),
    /// A node rejected it or a newer revision: (node id, NACKed revision, message).
    Rejected(String, u64, String),
    /// A node installed it (or a newer one) without some resources: (node id, revision, what and why).
    LeftOut(String, u64, Vec<String>),
    /// These connected nodes have not acknowledged it yet: (id, acked revision).
    Behind(Vec<(String, u64)>),
}

/// Judges a `GET /v1/nodes` answer against `revision`.
pub fn progress(nodes: &Value, revision: u64) -> Progress {
    let empty = Vec::new();
    let nodes = nodes.as_array().unwrap_or(&empty);
    let id = |n: &Value| n.get("id").and_then(Value::as_str).unwrap_or("?").to_string();
    for n in nodes {
        let nack = n.get("last_nack").filter(|v| !v.is_null());
        if let Some(nack) = nack {
            let rev = nack.get("revision").and_then(Value::as_u64).unwrap_or(0);
            if rev >= revision {
                let msg = nack.get("message").and_then(Value::as_str).unwrap_or("").to_string();
                return Progress::Rejected(id(n), rev, msg);
            }
        }
    }
    for n in nodes {
        let acked = n.get("acked_revision").and_then(Value::as_u64).unwrap_or(0);
        let errors = crate::render::resource_errors(n);
        if acked >= revision && !errors.is_empty() {
            return Progress::LeftOut(id(n), acked, errors);
        }
    }
    let connected: Vec<&Value> =
        nodes.iter().filter(|n| n.get("state").and_then(Value::as_str) != Some("disconnected")).collect();
    let behind: Vec<(String, u64)> = connected
        .iter()
        .map(|n| (id(n), n.get("acked_revision").and_then(Value::as_u64).unwrap_or(0)))
        .filter(|(_, acked)| *acked < revision)
        .collect();
    if behind.is_empty() {
        Progress::Done(connected.iter().map(|n| id(n)).collect())
    } else {
        Progress::Behind(behind)
    }
}

/// Returns once every connected node acknowledged `revision` (at once without `--wait`).
pub async fn for_fleet(client: &Client, revision: u64, args: &WaitArgs) -> anyhow::Result<()> {
    if !args.wait {
        return Ok(());
    }
    let deadline = Instant::now() + args.timeout;
    // The write's answer already said the release is applying.
    let mut shown = Some("applying".to_string());
    loop {
        // A staged release holds most nodes back until it is baked: wait for it, fail with it.
        if let Some(r) = crate::release::latest(client).await? {
            let n = |k: &str| r.get(k).and_then(Value::as_u64);
            let state = r.get("state").and_then(Value::as_str).unwrap_or("");
            let ours = n("revision").is_some_and(|rev| rev <= revision);
            if ours && state == "failed" && n("reverted_revision").is_some_and(|rev| rev > revision) {
                return Err(Failure::Nack(crate::release::describe(&r)).into());
            }
            if ours && matches!(state, "applying" | "baking") && shown.as_deref() != Some(state) {
                println!("{}", crate::release::describe(&r));
                shown = Some(state.to_string());
            }
        }
        let nodes = client.get("/v1/nodes").await.context("polling GET /v1/nodes")?;
        match progress(&nodes, revision) {
            Progress::Done(ids) if ids.is_empty() => {
                eprintln!("warning: no connected nodes; nothing to wait for");
                return Ok(());
            }
            Progress::Done(ids) => {
                println!("revision {revision} acknowledged by {} node(s): {}", ids.len(), ids.join(", "));
                return Ok(());
            }
            Progress::Rejected(node, rev, msg) => {
                return Err(Failure::Nack(format!("node {node} rejected revision {rev}: {msg}")).into());
            }
            Progress::LeftOut(node, rev, errors) => {
                let what = errors.join("; ");
                return Err(Failure::Nack(format!("node {node} installed revision {rev} without: {what}")).into());
            }
            Progress::Behind(behind) => {
                if Instant::now() >= deadline {
                    let list: Vec<String> = behind.iter().map(|(id, acked)| format!("{id} (at {acked})")).collect();
                    return Err(Failure::Timeout(format!(
                        "timed out after {:?} waiting for revision {revision}; still behind: {}",
                        args.timeout,
                        list.join(", ")
                    ))
                    .into());
                }
            }
        }
        tokio::time::sleep(POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn waits_for_connected_nodes_only() {
        let nodes = json!([
            {"id": "a", "state": "synced", "acked_revision": 7, "last_nack": null},
            {"id": "b", "state": "stale", "acked_revision": 6, "last_nack": null},
            {"id": "c", "state": "disconnected", "acked_revision": 2, "last_nack": null},
        ]);
        assert_eq!(progress(&nodes, 7), Progress::Behind(vec![("b".into(), 6)]));
        assert_eq!(progress(&nodes, 6), Progress::Done(vec!["a".into(), "b".into()]));
    }

    #[test]
    fn nack_of_this_or_newer_revision_fails() {
        let nodes = json!([
            {"id": "a", "state": "nacked", "acked_revision": 5, "last_nack": {"revision": 8, "message": "bind: in use"}},
        ]);
        assert_eq!(progress(&nodes, 7), Progress::Rejected("a".into(), 8, "bind: in use".into()));
        // An older NACK says nothing about this revision.
        assert_eq!(progress(&nodes, 9), Progress::Behind(vec![("a".into(), 5)]));
    }

    #[test]
    fn resources_left_out_fail_at_once() {
        let nodes = json!([
            {"id": "a", "state": "degraded", "acked_revision": 7, "last_nack": null,
             "resource_errors": [{"kind": "listener", "name": "web", "message": "cannot bind 127.0.0.1:80"}]},
        ]);
        let what = vec!["listener web: cannot bind 127.0.0.1:80".to_string()];
        assert_eq!(progress(&nodes, 7), Progress::LeftOut("a".into(), 7, what));
        assert_eq!(progress(&nodes, 8), Progress::Behind(vec![("a".into(), 7)]));
    }

    #[test]
    fn no_nodes_is_done() {
        assert_eq!(progress(&json!([]), 3), Progress::Done(vec![]));
    }
}
