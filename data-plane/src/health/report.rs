//! Reports endpoint health to the control plane (issue 6) on the config stream: a complete
//! `HealthReport` once when the stream opens, once after each install, and whenever a verdict
//! changed (polled every second; nothing is sent while nothing changes).

use std::sync::Arc;
use std::time::Duration;

use sluice_shared::proto::v1 as pb;
use sluice_shared::proto::MAX_HEALTH_REPORT_ENDPOINTS;
use tokio::sync::{mpsc, Notify};

use crate::state::Shared;
use crate::table::Table;

const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Every endpoint of `table`, sorted by (cluster, address) so reports compare; at most
/// [`MAX_HEALTH_REPORT_ENDPOINTS`] (the control plane refuses bigger reports).
pub fn endpoints(table: &Table) -> Vec<pb::EndpointHealth> {
    let mut clusters: Vec<_> = table.clusters().collect();
    clusters.sort_unstable_by_key(|(name, _)| *name);
    let mut out = Vec::new();
    for (name, cluster) in clusters {
        let mut states: Vec<_> = cluster.endpoints().iter().map(|e| &e.state).collect();
        states.sort_unstable_by_key(|s| s.address());
        for s in states {
            if out.len() == MAX_HEALTH_REPORT_ENDPOINTS {
                return out;
            }
            out.push(pb::EndpointHealth {
                cluster: name.to_string(),
                address: s.address().to_string(),
                healthy: s.passes_health_checks(),
                ejected: s.is_ejected(),
            });
        }
    }
    out
}

/// Sends reports on `tx` until it closes. `installed` is notified after each install, which forces
/// a report. Nothing is sent before a table is installed.
pub async fn run(shared: Arc<Shared>, tx: mpsc::Sender<pb::NodeMessage>, installed: &Notify) {
    let mut last: Option<Vec<pb::EndpointHealth>> = None;
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = installed.notified() => last = None,
        }
        let Some(current) = shared.installed.load_full() else { continue };
        let endpoints = endpoints(&current.table);
        if last.as_ref() == Some(&endpoints) {
            continue;
        }
        if endpoints.len() == MAX_HEALTH_REPORT_ENDPOINTS {
            tracing::warn!("health report cut at {MAX_HEALTH_REPORT_ENDPOINTS} endpoints");
        }
        let report = pb::HealthReport { revision: current.revision, endpoints: endpoints.clone() };
        let msg = pb::NodeMessage { msg: Some(pb::node_message::Msg::Health(report)) };
        if tx.send(msg).await.is_err() {
            return;
        }
        tracing::debug!(revision = current.revision, endpoints = endpoints.len(), "health report sent");
        last = Some(endpoints);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_shared::validate::parse_json;
    use sluice_shared::Config;

    #[test]
    fn reports_every_endpoint_sorted_with_its_verdict() {
        let config: Config = parse_json(
            br#"{"clusters": {
                "b": {"endpoints": [{"address": "127.0.0.1:9003"}]},
                "a": {"endpoints": [{"address": "127.0.0.1:9002"}, {"address": "127.0.0.1:9001"}]}}}"#,
        )
        .unwrap();
        let table = crate::table::compile(&config, None).unwrap();
        let (_, a) = table.clusters().find(|(n, _)| *n == "a").unwrap();
        a.endpoints().iter().find(|e| e.state.address().port() == 9002).unwrap().state.set_healthy(false);
        let got: Vec<_> = endpoints(&table).into_iter().map(|e| (e.cluster, e.address, e.healthy, e.ejected)).collect();
        let want = [("a", "127.0.0.1:9001", true), ("a", "127.0.0.1:9002", false), ("b", "127.0.0.1:9003", true)]
            .map(|(c, addr, h)| (c.to_string(), addr.to_string(), h, false));
        assert_eq!(got, want);
    }
}
