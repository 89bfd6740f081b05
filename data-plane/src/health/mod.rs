//! Active health checks: one task per (cluster, endpoint) of every cluster with a `health_check`,
//! run by each node. The verdict is `EndpointState::set_healthy`, which `pick` honours.
//!
//! Checkers follow the installed table: [`HealthCheckers::sync`] runs on each install, starts
//! checkers for new (cluster, endpoint) pairs, stops removed ones and restarts those whose check
//! changed. An unchanged checker keeps running, so its counts and timing carry over a revision
//! (as does the endpoint's health: compile reuses the state). The first probe of a checker comes
//! at a random offset within the interval so that a fleet of nodes does not probe in lockstep.
//!
//! With `close_connections_on_health_change`, a verdict also closes L4 connections: those to an
//! endpoint marked down, and those to the cluster's backups when a primary is marked up. (An
//! outlier ejection closes the ejected endpoint's too, see `ClusterLb::record_outcome`.)

mod grpc_probe;
mod probe;
pub mod report;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice_shared::model::HealthCheck;
use tokio::task::JoinHandle;

use crate::table::{ClusterLb, EndpointState, LbEndpoint, Table};
use crate::tls::TlsConfigs;
pub use probe::Probe;

struct Checker {
    spec: HealthCheck,
    closes: Closes,
    /// Which upstream TLS settings the probe uses (0: plaintext): changed settings restart it.
    tls_id: u64,
    state: Arc<EndpointState>,
    task: JoinHandle<()>,
}

/// What a change of one endpoint's verdict closes (`close_connections_on_health_change`).
#[derive(Clone, Default)]
struct Closes {
    /// Its own L4 connections, when it is marked down.
    on_down: bool,
    /// The L4 connections to these (its cluster's backups), when it (a primary) is marked up.
    backups_on_up: Vec<Arc<EndpointState>>,
}

impl Closes {
    fn of(cluster: &ClusterLb, endpoint: &LbEndpoint) -> Closes {
        if !cluster.closes_on_health_change() {
            return Closes::default();
        }
        let backups = if endpoint.backup { &[][..] } else { cluster.backups() };
        Closes { on_down: true, backups_on_up: backups.iter().map(|b| b.state.clone()).collect() }
    }
}

impl PartialEq for Closes {
    fn eq(&self, other: &Closes) -> bool {
        self.on_down == other.on_down
            && self.backups_on_up.len() == other.backups_on_up.len()
            && self.backups_on_up.iter().zip(&other.backups_on_up).all(|(a, b)| Arc::ptr_eq(a, b))
    }
}

/// The running checkers of a node, keyed by (cluster, endpoint address).
#[derive(Default)]
pub struct HealthCheckers {
    running: HashMap<(String, SocketAddr), Checker>,
}

impl HealthCheckers {
    /// Brings the checkers in line with `table` (just installed). Must run on a tokio runtime.
    pub fn sync(&mut self, table: &Table, tls: &TlsConfigs) {
        let mut wanted: HashMap<(String, SocketAddr), (&HealthCheck, &Arc<EndpointState>, Closes)> = HashMap::new();
        for (name, cluster) in table.clusters() {
            let Some(spec) = cluster.health_check() else { continue };
            for e in cluster.endpoints() {
                wanted.insert((name.to_string(), e.state.address()), (spec, &e.state, Closes::of(cluster, e)));
            }
        }
        // Stop what is gone or changed. An endpoint whose cluster no longer checks it is healthy
        // again: nothing else would ever clear a failed verdict.
        self.running.retain(|key, c| {
            let keep = wanted.get(key).is_some_and(|(spec, state, closes)| {
                **spec == c.spec
                    && Arc::ptr_eq(state, &c.state)
                    && tls_id(tls, &key.0) == c.tls_id
                    && *closes == c.closes
            });
            if !keep {
                c.task.abort();
                if !wanted.contains_key(key) {
                    c.state.set_healthy(true);
                }
            }
            keep
        });
        for (key, (spec, state, closes)) in wanted {
            if self.running.contains_key(&key) {
                continue;
            }
            let probe = match (&spec.http, &spec.grpc) {
                (Some(http), _) => Probe::http(http, tls.upstream(&key.0).cloned()),
                (None, Some(g)) => Probe::Grpc { service: g.service.clone(), tls: tls.upstream(&key.0).cloned() },
                (None, None) => Probe::Tcp,
            };
            let task = tokio::spawn(run(key.0.clone(), spec.clone(), probe, state.clone(), closes.clone()));
            let checker =
                Checker { spec: spec.clone(), closes, tls_id: tls_id(tls, &key.0), state: state.clone(), task };
            self.running.insert(key, checker);
        }
    }

    pub fn stop_all(&mut self) {
        for (_, c) in self.running.drain() {
            c.task.abort();
        }
    }
}

impl Drop for HealthCheckers {
    fn drop(&mut self) {
        self.stop_all();
    }
}

fn tls_id(tls: &TlsConfigs, cluster: &str) -> u64 {
    tls.upstream(cluster).map_or(0, |t| t.id())
}

/// Probes one endpoint every interval, forever (aborted by `HealthCheckers`). Healthy after
/// `healthy_threshold` passes in a row, unhealthy after `unhealthy_threshold` failures in a row.
async fn run(cluster: String, spec: HealthCheck, probe: Probe, state: Arc<EndpointState>, closes: Closes) {
    let addr = state.address();
    let interval = Duration::from_millis(spec.interval_ms.max(1));
    let timeout = Duration::from_millis(spec.timeout_ms.max(1));
    tokio::time::sleep(jitter(interval)).await;
    let (mut passes, mut failures) = (0u32, 0u32);
    loop {
        let started = tokio::time::Instant::now();
        let result = match tokio::time::timeout(timeout, probe.run(addr)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {} ms", spec.timeout_ms)),
        };
        match result {
            Ok(()) => {
                failures = 0;
                passes = passes.saturating_add(1);
                if !state.passes_health_checks() && passes >= spec.healthy_threshold {
                    state.set_healthy(true);
                    tracing::info!(%cluster, endpoint = %addr, "endpoint healthy");
                    for backup in &closes.backups_on_up {
                        backup.close_connections();
                    }
                }
            }
            Err(why) => {
                passes = 0;
                failures = failures.saturating_add(1);
                if state.passes_health_checks() && failures >= spec.unhealthy_threshold {
                    state.set_healthy(false);
                    tracing::warn!(%cluster, endpoint = %addr, reason = %why, "endpoint unhealthy");
                    if closes.on_down {
                        state.close_connections();
                    }
                } else {
                    tracing::debug!(%cluster, endpoint = %addr, reason = %why, "health probe failed");
                }
            }
        }
        tokio::time::sleep_until(started + interval).await;
    }
}

/// A random offset within `interval`.
fn jitter(interval: Duration) -> Duration {
    let ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX).max(1);
    Duration::from_millis(rand::random_range(0..ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_the_interval() {
        let i = Duration::from_millis(100);
        let samples: Vec<Duration> = (0..200).map(|_| jitter(i)).collect();
        assert!(samples.iter().all(|d| *d < i));
        assert!(samples.iter().any(|d| *d != samples[0]), "offsets differ");
    }
}
