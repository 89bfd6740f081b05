//! Drives staged releases: every replica looks at the release in progress twice a second and
//! moves it on (each move is a conditional update, so replicas never move it twice). The rules
//! are the pure [`judge`]:
//!
//! ```text
//! applying ──every canary node acked the newest revision cleanly──▶ baking (counts noted)
//!    │  ▲                                                              │
//!    │  └──────────────── a write joins the release ◀──────────────────┤
//!    │                                                                 ├─ bake time over ─▶ released
//!    └─ a NACK, a resource left out, the error rate over its limit, ───┴─▶ failed: one revision
//!       or no canary node applying it in APPLY_TIMEOUT                      restores the stable config
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use sluice_shared::clock::unix_now_ms;
use sluice_shared::Revision;
use tokio::sync::watch;

use crate::nodes::NodeRecord;
use crate::store::{Change, Move, NodeTraffic, Release, ReleaseState, Staging, Store, StoreError};

/// How often each replica looks at the release in progress.
pub const TICK: Duration = Duration::from_millis(500);
/// How long the canary nodes may take to apply a release's newest revision before it fails.
pub const APPLY_TIMEOUT_MS: i64 = 300_000;
/// A node silent for this long counts as gone: it neither blocks nor passes a release.
const SILENT_AFTER_MS: i64 = 30_000;

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Wait,
    /// Every canary node has the newest revision: bake from these counts.
    StartBake(BTreeMap<String, (u64, u64)>),
    Promote,
    Fail(String),
}

/// What a release should do now, from the nodes' status and traffic.
pub fn judge(
    r: &Release,
    nodes: &[NodeRecord],
    traffic: &BTreeMap<String, NodeTraffic>,
    current: Revision,
    now_ms: i64,
) -> Verdict {
    let canary: Vec<&NodeRecord> = nodes.iter().filter(|n| r.canary.includes(&n.id, &n.group)).collect();
    for n in &canary {
        if let Some((rev, msg)) = n.last_nack.as_ref().filter(|(rev, _)| *rev >= r.revision) {
            return Verdict::Fail(format!("canary node {} rejected revision {rev}: {msg}", n.id));
        }
        if n.acked_revision >= r.revision && !n.resource_errors.is_empty() {
            let what: Vec<String> =
                n.resource_errors.iter().map(|e| format!("{} {}: {}", e.kind, e.name, e.message)).collect();
            return Verdict::Fail(format!("canary node {} could not apply {}", n.id, what.join("; ")));
        }
    }
    let live: Vec<&&NodeRecord> =
        canary.iter().filter(|n| n.connected && now_ms.saturating_sub(n.last_seen_ms) <= SILENT_AFTER_MS).collect();
    let all_applied = !live.is_empty() && live.iter().all(|n| n.acked_revision >= current);
    if !all_applied {
        if now_ms.saturating_sub(r.applying_since_ms) > APPLY_TIMEOUT_MS {
            let why = if live.is_empty() { "no canary node is connected" } else { "the canary nodes did not apply it" };
            return Verdict::Fail(format!("{why} within {} s", APPLY_TIMEOUT_MS / 1000));
        }
        return Verdict::Wait;
    }
    let counts = |id: &str| traffic.get(id).map_or((0, 0), |t| (t.requests, t.errors));
    let Some(since) = r.baking_since_ms.filter(|_| r.state == ReleaseState::Baking) else {
        // The baseline comes from counts made with the newest revision installed, so that errors
        // of what the nodes ran before never count against it.
        if live.iter().any(|n| traffic.get(&n.id).is_none_or(|t| t.revision < current)) {
            return Verdict::Wait;
        }
        return Verdict::StartBake(live.iter().map(|n| (n.id.clone(), counts(&n.id))).collect());
    };
    let (mut requests, mut errors) = (0u64, 0u64);
    for n in &live {
        let (now_r, now_e) = counts(&n.id);
        // A node that restarted counts from zero again; one that joined late from its first count.
        let (base_r, base_e) = r.baseline.get(&n.id).copied().filter(|(b, _)| *b <= now_r).unwrap_or((0, 0));
        requests += now_r - base_r;
        errors += now_e.saturating_sub(base_e);
    }
    if requests > 0 {
        let rate = errors as f64 / requests as f64;
        if rate > r.max_error_rate {
            return Verdict::Fail(format!(
                "canary error rate {:.2}% ({errors} of {requests} responses were 5xx) is above {:.2}%",
                rate * 100.0,
                r.max_error_rate * 100.0
            ));
        }
    }
    if now_ms.saturating_sub(since) >= i64::try_from(r.bake_ms).unwrap_or(i64::MAX) {
        Verdict::Promote
    } else {
        Verdict::Wait
    }
}

/// Looks at the release in progress every [`TICK`] until `stopped`. With none in progress, the
/// database is read only when the revision moved (a write here or, through the store's poller, on
/// another replica is what starts a release).
pub async fn run(store: Store, mut stopped: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped.changed() => return,
        }
        let revision = store.state().revision;
        if store.active_release().is_none() && seen == Some(revision) {
            continue;
        }
        seen = Some(revision);
        if let Err(e) = step(&store).await {
            tracing::warn!(error = %e, "moving the release on failed");
        }
    }
}

async fn step(store: &Store) -> Result<(), StoreError> {
    let Some(active) = store.refresh_release().await? else { return Ok(()) };
    let r = &active.release;
    let nodes = store.nodes().await?;
    let traffic = store.node_traffic().await?;
    match judge(r, &nodes, &traffic, store.state().revision, unix_now_ms()) {
        Verdict::Wait => {}
        Verdict::StartBake(baseline) => {
            let m = Move { baseline: Some(&baseline), ..Move::default() };
            if store.move_release(r.revision, r.state, ReleaseState::Baking, m).await? {
                tracing::info!(
                    revision = r.revision,
                    nodes = baseline.len(),
                    "canary nodes applied the release; baking"
                );
            }
        }
        Verdict::Promote => {
            if store.move_release(r.revision, r.state, ReleaseState::Released, Move::default()).await? {
                tracing::info!(revision = r.revision, "release baked; every node gets it");
            }
        }
        Verdict::Fail(reason) => fail(store, r, &reason).await?,
    }
    Ok(())
}

/// Stops a release: one revision restores its stable config (so that no node gets what failed),
/// then the release is marked failed with `reason`. Also serves an operator's abort.
pub async fn fail(store: &Store, r: &Release, reason: &str) -> Result<(), StoreError> {
    let stable = store.config_at(r.stable_revision).await?;
    let restore = Change::Restore { revision: r.stable_revision, config: stable };
    let written = store.write_staged(restore, None, "release", &Staging::Immediate).await?;
    let reverted = written.state.revision;
    let reason = format!("{reason}; reverted to revision {} in revision {reverted}", r.stable_revision);
    let m = Move { reason: Some(&reason), reverted_revision: Some(reverted), ..Move::default() };
    if store.move_release(r.revision, r.state, ReleaseState::Failed, m).await? {
        tracing::warn!(revision = r.revision, %reason, "release failed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nodes::ResourceError;
    use crate::store::CanarySet;

    const NOW: i64 = 1_000_000;

    fn release(state: ReleaseState) -> Release {
        Release {
            revision: 10,
            stable_revision: 9,
            canary: CanarySet::Group("canary".into()),
            bake_ms: 60_000,
            max_error_rate: 0.05,
            state,
            reason: None,
            started_ms: NOW - 1_000,
            applying_since_ms: NOW - 1_000,
            baking_since_ms: (state == ReleaseState::Baking).then_some(NOW - 30_000),
            baseline: BTreeMap::from([("c1".to_string(), (100, 1))]),
            reverted_revision: None,
            updated_ms: NOW,
        }
    }

    fn node(id: &str, group: &str, acked: Revision) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            group: group.into(),
            acked_revision: acked,
            last_nack: None,
            resource_errors: Vec::new(),
            last_seen_ms: NOW - 1_000,
            connected: true,
        }
    }

    fn traffic(requests: u64, errors: u64) -> BTreeMap<String, NodeTraffic> {
        BTreeMap::from([("c1".to_string(), NodeTraffic { revision: 10, requests, errors })])
    }

    #[test]
    fn waits_for_the_canary_nodes_then_bakes_then_promotes() {
        let applying = release(ReleaseState::Applying);
        let held = node("h1", "core", 9);
        let behind = [node("c1", "canary", 9), held.clone()];
        assert_eq!(judge(&applying, &behind, &traffic(0, 0), 10, NOW), Verdict::Wait);
        let applied = [node("c1", "canary", 10), held.clone()];
        let counted_before =
            BTreeMap::from([("c1".to_string(), NodeTraffic { revision: 9, requests: 100, errors: 50 })]);
        assert_eq!(
            judge(&applying, &applied, &counted_before, 10, NOW),
            Verdict::Wait,
            "counts of the new revision first"
        );
        let start = judge(&applying, &applied, &traffic(100, 1), 10, NOW);
        assert_eq!(start, Verdict::StartBake(BTreeMap::from([("c1".to_string(), (100, 1))])));
        let baking = release(ReleaseState::Baking);
        assert_eq!(judge(&baking, &applied, &traffic(200, 3), 10, NOW), Verdict::Wait, "2% of 100 is fine");
        let later = [NodeRecord { last_seen_ms: NOW + 29_000, ..applied[0].clone() }];
        assert_eq!(judge(&baking, &later, &traffic(200, 3), 10, NOW + 30_000), Verdict::Promote);
        // A newer write joined: the canary must apply it before the bake goes on.
        assert_eq!(judge(&applying, &applied, &traffic(200, 3), 11, NOW), Verdict::Wait);
    }

    #[test]
    fn fails_on_errors_nacks_and_left_out_resources() {
        let baking = release(ReleaseState::Baking);
        let applied = [node("c1", "canary", 10)];
        match judge(&baking, &applied, &traffic(200, 11), 10, NOW) {
            Verdict::Fail(why) => assert!(why.contains("10.00%") && why.contains("above 5.00%"), "{why}"),
            other => panic!("{other:?}"),
        }
        let mut nacked = node("c1", "canary", 9);
        nacked.last_nack = Some((10, "bad".into()));
        assert!(
            matches!(judge(&baking, &[nacked], &traffic(0, 0), 10, NOW), Verdict::Fail(w) if w.contains("rejected revision 10: bad"))
        );
        let mut partial = node("c1", "canary", 10);
        partial.resource_errors =
            vec![ResourceError { kind: "listener".into(), name: "web".into(), message: "taken".into() }];
        assert!(
            matches!(judge(&baking, &[partial], &traffic(0, 0), 10, NOW), Verdict::Fail(w) if w.contains("listener web: taken"))
        );
    }

    #[test]
    fn silent_or_missing_canaries_time_out() {
        let applying = release(ReleaseState::Applying);
        let mut gone = node("c1", "canary", 9);
        gone.connected = false;
        assert_eq!(judge(&applying, &[gone.clone()], &traffic(0, 0), 10, NOW), Verdict::Wait);
        let late = NOW + APPLY_TIMEOUT_MS;
        assert!(
            matches!(judge(&applying, &[gone], &traffic(0, 0), 10, late), Verdict::Fail(w) if w.contains("no canary node"))
        );
    }

    #[test]
    fn a_restarted_canary_counts_from_zero() {
        let baking = release(ReleaseState::Baking);
        let applied = [node("c1", "canary", 10)];
        // Counters below the baseline: the node restarted; 5 of 50 since is 10%.
        assert!(matches!(judge(&baking, &applied, &traffic(50, 5), 10, NOW), Verdict::Fail(_)));
    }
}
