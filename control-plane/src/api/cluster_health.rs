//! Endpoint health in `GET /v1/clusters/{name}` (issue 6): each endpoint gets
//! `"health": {"healthy_nodes", "unhealthy_nodes", "nodes": [{"node", "healthy", "ejected"}]}`,
//! counted over the connected nodes of the groups that receive the cluster and that reported it.
//! An endpoint counts as healthy on a node when it passes the checks there and is not ejected.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;

use serde::Serialize;
use sluice_shared::clock::unix_now_ms;
use sluice_shared::endpoint_address::EndpointAddress;
use sluice_shared::Config;

use super::nodes::{node_state, NodeState};
use super::ApiError;
use crate::store::{EndpointHealth, Store};

#[derive(Debug, Default, Serialize)]
struct Health<'a> {
    healthy_nodes: usize,
    unhealthy_nodes: usize,
    nodes: Vec<NodeHealth<'a>>,
}

#[derive(Debug, Serialize)]
struct NodeHealth<'a> {
    node: &'a str,
    healthy: bool,
    ejected: bool,
}

/// The groups whose nodes receive `cluster` (as `Config::for_group` decides, without building it).
pub(super) fn groups_receiving(config: &Config, cluster: &str) -> BTreeSet<String> {
    let mut groups = BTreeSet::new();
    for l in config.listeners.values() {
        if l.cluster.as_deref() == Some(cluster) || l.sni.values().any(|c| c == cluster) {
            groups.insert(l.group.clone());
        }
    }
    for r in config.routes.values().filter(|r| r.clusters().any(|(_, c)| c == cluster)) {
        if let Some(l) = config.listeners.get(&r.listener) {
            groups.insert(l.group.clone());
        }
    }
    groups
}

/// Adds `health` to every endpoint object of the rendered cluster `value`.
pub(super) async fn add_endpoint_health(
    store: &Store,
    config: &Config,
    cluster: &str,
    value: &mut serde_json::Value,
) -> Result<(), ApiError> {
    let groups = groups_receiving(config, cluster);
    let now = unix_now_ms();
    let current = store.state().revision;
    let nodes = store.nodes().await?;
    let counted: BTreeSet<&str> = nodes
        .iter()
        .filter(|n| groups.contains(&n.group) && node_state(n, current, now) != NodeState::Disconnected)
        .map(|n| n.id.as_str())
        .collect();
    let reports = if counted.is_empty() { Vec::new() } else { store.cluster_health(cluster).await? };
    // address -> (node, verdict), over counted nodes only.
    let mut by_address: HashMap<String, Vec<(&str, &EndpointHealth)>> = HashMap::new();
    for (node, endpoints) in &reports {
        let Some(node) = counted.get(node.as_str()) else { continue };
        for e in endpoints {
            by_address.entry(e.address.clone()).or_default().push((node, e));
        }
    }
    let Some(endpoints) = value.get_mut("endpoints").and_then(|e| e.as_array_mut()) else { return Ok(()) };
    let literal: BTreeSet<String> =
        endpoints.iter().filter_map(|e| e.get("address")?.as_str()).map(canonical).collect();
    for endpoint in endpoints {
        let Some(obj) = endpoint.as_object_mut() else { continue };
        let address = obj.get("address").and_then(|a| a.as_str()).unwrap_or_default();
        let reported = |a: &str| by_address.get(a).map(Vec::as_slice).unwrap_or_default();
        let health = match EndpointAddress::parse(address) {
            // A name: the nodes report each address of their answers (same port, not listed
            // literally); the endpoint is healthy on a node where one of them is.
            Ok(EndpointAddress::Name { port, .. }) => {
                let mut resolved: Vec<&String> = by_address
                    .keys()
                    .filter(|a| !literal.contains(*a))
                    .filter(|a| a.parse::<SocketAddr>().is_ok_and(|s| s.port() == port))
                    .collect();
                resolved.sort();
                let per_address: Vec<serde_json::Value> = resolved
                    .iter()
                    .map(|a| {
                        let h = tally(reported(a).iter().map(|(n, e)| (*n, e.healthy, e.ejected)));
                        serde_json::json!({"address": a, "healthy_nodes": h.healthy_nodes, "unhealthy_nodes": h.unhealthy_nodes})
                    })
                    .collect();
                obj.insert("resolved".into(), per_address.into());
                let mut by_node: BTreeMap<&str, (bool, bool)> = BTreeMap::new();
                for (node, e) in resolved.iter().flat_map(|a| reported(a)) {
                    let entry = by_node.entry(node).or_insert((false, true));
                    entry.0 |= e.healthy && !e.ejected;
                    entry.1 &= e.ejected;
                }
                tally(by_node.into_iter().map(|(n, (healthy, ejected))| (n, healthy, ejected)))
            }
            _ => tally(reported(&canonical(address)).iter().map(|(n, e)| (*n, e.healthy, e.ejected))),
        };
        let rendered = serde_json::to_value(&health).map_err(|_| ApiError::unavailable())?;
        obj.insert("health".into(), rendered);
    }
    Ok(())
}

/// Per node: (node, healthy, ejected) -> the counts the API shows.
fn tally<'a>(verdicts: impl Iterator<Item = (&'a str, bool, bool)>) -> Health<'a> {
    let mut health = Health::default();
    for (node, healthy, ejected) in verdicts {
        if healthy && !ejected {
            health.healthy_nodes += 1;
        } else {
            health.unhealthy_nodes += 1;
        }
        health.nodes.push(NodeHealth { node, healthy, ejected });
    }
    health
}

/// Addresses as the stream stores them (`SocketAddr` display), so `[::1]:80` spellings agree.
fn canonical(address: &str) -> String {
    address.parse::<SocketAddr>().map(|a| a.to_string()).unwrap_or_else(|_| address.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_shared::validate::parse_json;

    #[test]
    fn groups_follow_listeners_and_routes() {
        let config: Config = parse_json(
            br#"{
            "clusters": {"a": {"endpoints": []}, "b": {"endpoints": []}, "c": {"endpoints": []}},
            "listeners": {
                "web": {"address": "127.0.0.1:1", "protocol": "http", "group": "edge"},
                "db": {"address": "127.0.0.1:2", "protocol": "tcp", "cluster": "b"}
            },
            "routes": {"r": {"listener": "web", "backends": [{"cluster": "a"}]}}
        }"#,
        )
        .unwrap();
        assert_eq!(groups_receiving(&config, "a"), BTreeSet::from(["edge".to_string()]));
        assert_eq!(groups_receiving(&config, "b"), BTreeSet::from(["default".to_string()]));
        assert!(groups_receiving(&config, "c").is_empty());
    }
}
