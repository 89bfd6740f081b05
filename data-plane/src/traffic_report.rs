//! Reports the node's response counts to the control plane on the config stream: a
//! `TrafficReport` when they or the installed revision changed, at most once a second. The
//! control plane judges a staged release's canary nodes by their error rate, counted from their
//! first report at the release's revision.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sluice_shared::proto::v1 as pb;
use tokio::sync::mpsc;

use crate::state::Shared;

const INTERVAL: Duration = Duration::from_secs(1);

/// Sends reports on `tx` until it closes.
pub async fn run(shared: Arc<Shared>, tx: mpsc::Sender<pb::NodeMessage>) {
    let mut last = None;
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let totals = shared.metrics.traffic_totals();
        let revision = shared.metrics.revision.load(Ordering::Relaxed);
        if last == Some((revision, totals)) {
            continue;
        }
        let report = pb::TrafficReport { revision, requests: totals.0, errors: totals.1 };
        if tx.send(pb::NodeMessage { msg: Some(pb::node_message::Msg::Traffic(report)) }).await.is_err() {
            return;
        }
        last = Some((revision, totals));
    }
}
