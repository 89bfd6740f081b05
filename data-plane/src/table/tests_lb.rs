//! Balancing: weighted backend split, endpoint policies, health, and state reuse across revisions.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use sluice_shared::model::{Endpoint, LbPolicy, WeightedCluster};
use sluice_shared::validate::parse_json;

use super::tests_precedence::config;
use super::*;

pub(super) fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn lb(policy: LbPolicy, weights: &[u32]) -> ClusterLb {
    let endpoints = weights
        .iter()
        .enumerate()
        .map(|(i, &w)| LbEndpoint {
            state: Arc::new(EndpointState::new(addr(9000 + i as u16))),
            weight: w,
            name: None,
            backup: false,
            max_connections: None,
        })
        .collect();
    ClusterLb::new("c", policy, endpoints)
}

/// Picks `n` times (dropping each guard at once) and counts picks per endpoint port offset.
fn counts(c: &ClusterLb, n: usize) -> Vec<usize> {
    let mut out = vec![0; c.endpoints().len()];
    for _ in 0..n {
        let g = c.pick().unwrap();
        out[(g.address().port() - 9000) as usize] += 1;
    }
    out
}

#[test]
fn round_robin_is_exactly_weighted_per_cycle() {
    let c = lb(LbPolicy::RoundRobin, &[1, 1, 1]);
    let seq: Vec<u16> = (0..6).map(|_| c.pick().unwrap().address().port() - 9000).collect();
    assert_eq!(seq, vec![0, 1, 2, 0, 1, 2]);
    let c = lb(LbPolicy::RoundRobin, &[5, 0, 3, 3, 1]);
    assert_eq!(counts(&c, 12 * 100), vec![500, 0, 300, 300, 100]);
    // Interleaved: in the first round every non-zero endpoint comes once.
    let c = lb(LbPolicy::RoundRobin, &[3, 1]);
    let seq: Vec<u16> = (0..4).map(|_| c.pick().unwrap().address().port() - 9000).collect();
    assert_eq!(seq, vec![0, 1, 0, 0]);
}

#[test]
fn unhealthy_endpoints_are_skipped_and_none_when_all_down() {
    for policy in [LbPolicy::RoundRobin, LbPolicy::LeastRequest, LbPolicy::Random, LbPolicy::Maglev] {
        let c = lb(policy, &[1, 1, 1]);
        c.endpoints()[1].state.set_healthy(false);
        let n = counts(&c, 300);
        assert_eq!(n[1], 0, "{policy:?}");
        assert_eq!(n[0] + n[2], 300);
        c.endpoints()[0].state.set_healthy(false);
        c.endpoints()[2].state.set_healthy(false);
        assert!(c.pick().is_none(), "{policy:?}");
    }
    assert!(lb(LbPolicy::RoundRobin, &[]).pick().is_none(), "empty cluster");
    // Many endpoints, one healthy: the fallback scan finds it.
    let c = lb(LbPolicy::RoundRobin, &[1; 100]);
    for e in &c.endpoints()[1..] {
        e.state.set_healthy(false);
    }
    assert!((0..50).all(|_| c.pick().unwrap().address() == addr(9000)));
}

#[test]
fn pick_excluding_avoids_tried_endpoints() {
    let c = lb(LbPolicy::RoundRobin, &[1, 1]);
    for _ in 0..10 {
        assert_eq!(c.pick_excluding(&[addr(9000)]).unwrap().address(), addr(9001));
    }
    assert!(c.pick_excluding(&[addr(9000), addr(9001)]).is_none());
}

#[test]
fn guards_count_active_requests_and_least_request_follows() {
    for weights in [vec![1; 3], vec![1; 20]] {
        let c = lb(LbPolicy::LeastRequest, &weights);
        let held: Vec<EndpointGuard> = (0..weights.len() * 4).map(|_| c.pick().unwrap()).collect();
        // Exact for small clusters: perfectly level. Two random choices for large ones: level within a
        // bound that random picks break with negligible probability (80 requests over 20 endpoints:
        // plain random would often put 9+ on one endpoint; two choices keeps the maximum near 6).
        let max = c.endpoints().iter().map(|e| e.state.active()).max().unwrap();
        let min = c.endpoints().iter().map(|e| e.state.active()).min().unwrap();
        if weights.len() <= 8 {
            assert_eq!(max, min, "exact least request stays level");
        } else {
            assert!(max <= 9, "two choices keeps the busiest endpoint near the mean of 4: {min}..{max}");
        }
        drop(held);
        assert!(c.endpoints().iter().all(|e| e.state.active() == 0));
    }
    // A busy endpoint gets nothing while an idle one exists.
    let c = lb(LbPolicy::LeastRequest, &[1, 1]);
    let _busy = c.pick().unwrap();
    let busy_addr = _busy.address();
    assert!((0..10).all(|_| c.pick().unwrap().address() != busy_addr));
}

#[test]
fn random_follows_weights() {
    let c = lb(LbPolicy::Random, &[3, 0, 1]);
    let n = counts(&c, 40_000);
    assert_eq!(n[1], 0);
    assert!((29_000..31_000).contains(&n[0]), "{n:?}");
}

#[test]
fn weighted_backends_split_90_10() {
    let mut cfg = config(&[("r", "")]);
    cfg.routes.get_mut("r").unwrap().backends =
        vec![WeightedCluster { cluster: "a".into(), weight: 90 }, WeightedCluster { cluster: "b".into(), weight: 10 }];
    let t = compile(&cfg, None).unwrap();
    let r = &t.listener("web").unwrap().routes()[0];
    let n = 100_000;
    let a = (0..n).filter(|_| r.pick_cluster().unwrap().name() == "a").count();
    let share = a as f64 / n as f64;
    assert!((share - 0.9).abs() < 0.01, "{share}");
    cfg.routes.get_mut("r").unwrap().backends[0].weight = 0;
    let t = compile(&cfg, None).unwrap();
    let r = &t.listener("web").unwrap().routes()[0];
    assert!((0..1_000).all(|_| r.pick_cluster().unwrap().name() == "b"), "zero weight is never chosen");
}

#[test]
fn endpoint_state_and_route_stats_survive_revisions() {
    let mut cfg = config(&[("r", "")]);
    let c: sluice_shared::model::Cluster =
        parse_json(br#"{"endpoints":[{"address":"127.0.0.1:9001"},{"address":"127.0.0.1:9002","weight":2}]}"#).unwrap();
    cfg.clusters.insert("a".into(), c);
    let first = compile(&cfg, None).unwrap();
    let eps: HashMap<SocketAddr, Arc<EndpointState>> =
        first.cluster("a").unwrap().endpoints().iter().map(|e| (e.state.address(), e.state.clone())).collect();
    eps[&addr(9002)].set_healthy(false);
    let guard = first.cluster("a").unwrap().pick().unwrap();
    assert_eq!(guard.address(), addr(9001));
    first.listener("web").unwrap().routes()[0].stats().record_request();

    // Next revision: 9002 changes weight, 9003 is new, the policy changes; 9001 is unchanged.
    let cluster = cfg.clusters.get_mut("a").unwrap();
    cluster.endpoints[1].weight = 7;
    cluster.endpoints.push(Endpoint {
        address: "127.0.0.1:9003".into(),
        weight: 1,
        name: None,
        backup: false,
        max_connections: None,
    });
    cluster.lb_policy = LbPolicy::LeastRequest;
    let second = compile(&cfg, Some(&first)).unwrap();
    let lb2 = second.cluster("a").unwrap();
    assert!(Arc::ptr_eq(&lb2.endpoints()[0].state, &eps[&addr(9001)]));
    assert!(Arc::ptr_eq(&lb2.endpoints()[1].state, &eps[&addr(9002)]));
    assert_eq!(lb2.endpoints()[1].weight, 7);
    assert_eq!(lb2.endpoints()[0].state.active(), 1, "in-flight count carried over");
    assert!(!lb2.endpoints()[1].state.is_healthy(), "health carried over");
    assert!(lb2.endpoints()[2].state.is_healthy(), "new endpoints start healthy");
    assert_eq!(second.listener("web").unwrap().routes()[0].stats().requests(), 1);
    drop(guard);
    assert_eq!(lb2.endpoints()[0].state.active(), 0);

    // A cluster of another name does not inherit, even at the same address.
    cfg.clusters.insert("b".into(), cfg.clusters["a"].clone());
    let third = compile(&cfg, Some(&second)).unwrap();
    assert!(!Arc::ptr_eq(&third.cluster("b").unwrap().endpoints()[0].state, &eps[&addr(9001)]));
    assert!(Arc::ptr_eq(&third.cluster("a").unwrap().endpoints()[0].state, &eps[&addr(9001)]));
}

#[test]
fn route_stats_count_by_class() {
    let s = RouteStats::default();
    for status in [200, 204, 404, 503, 99, 700] {
        s.record_response(status);
    }
    assert_eq!((s.responses(2), s.responses(4), s.responses(5), s.responses(6)), (2, 1, 1, 0));
}

/// `primaries` endpoints on ports 9000.., then `backups` marked as backups.
fn lb_with_backups(policy: LbPolicy, primaries: u16, backups: u16) -> ClusterLb {
    let endpoint = |i: u16| LbEndpoint {
        state: Arc::new(EndpointState::new(addr(9000 + i))),
        weight: 1,
        name: None,
        backup: i >= primaries,
        max_connections: None,
    };
    ClusterLb::new("c", policy, (0..primaries + backups).map(endpoint).collect())
}

/// The ports (offset from 9000) that 200 picks landed on, by plain and by hashed picks.
fn ports_picked(c: &ClusterLb) -> std::collections::BTreeSet<u16> {
    (0..200u64)
        .flat_map(|k| [c.pick(), c.pick_hashed(hash_bytes(&k.to_be_bytes()), &[])])
        .map(|g| g.expect("an endpoint").address().port() - 9000)
        .collect()
}

#[test]
fn backups_take_traffic_only_while_no_primary_is_usable() {
    let policies =
        [LbPolicy::RoundRobin, LbPolicy::LeastRequest, LbPolicy::Random, LbPolicy::RingHash, LbPolicy::Maglev];
    for policy in policies {
        let c = lb_with_backups(policy, 2, 2);
        let set = |i: usize, healthy: bool| c.endpoints()[i].state.set_healthy(healthy);
        assert_eq!(ports_picked(&c), [0, 1].into(), "{policy:?}: both primaries, no backup");
        set(0, false);
        assert_eq!(ports_picked(&c), [1].into(), "{policy:?}: the primary left");
        set(1, false);
        assert_eq!(ports_picked(&c), [2, 3].into(), "{policy:?}: no primary: both backups");
        set(1, true);
        assert_eq!(ports_picked(&c), [1].into(), "{policy:?}: a primary is back");
    }
}

#[test]
fn excluded_primaries_fail_over_to_a_backup() {
    let c = lb_with_backups(LbPolicy::RoundRobin, 2, 1);
    let primaries = [addr(9000), addr(9001)];
    assert_eq!(c.pick_excluding(&primaries[..1]).unwrap().address(), addr(9001));
    assert_eq!(c.pick_excluding(&primaries).unwrap().address(), addr(9002));
    assert_eq!(c.pick_hashed(7, &primaries).unwrap().address(), addr(9002));
    assert!(c.pick_excluding(&[addr(9000), addr(9001), addr(9002)]).is_none());
}

#[test]
fn primaries_of_weight_zero_leave_the_traffic_to_the_backups() {
    let endpoints = [(9000, 0, false), (9001, 1, true)].map(|(port, weight, backup)| LbEndpoint {
        state: Arc::new(EndpointState::new(addr(port))),
        weight,
        name: None,
        backup,
        max_connections: None,
    });
    let c = ClusterLb::new("c", LbPolicy::RoundRobin, endpoints.to_vec());
    assert_eq!(c.pick().unwrap().address(), addr(9001));
}

#[test]
fn sticky_picks_of_a_backup_hold_only_while_no_primary_is_usable() {
    let c = lb_with_backups(LbPolicy::RoundRobin, 1, 1);
    assert!(c.pick_address(addr(9001)).is_none(), "a backup while the primary is up");
    assert_eq!(c.pick_address(addr(9000)).unwrap().address(), addr(9000));
    c.endpoints()[0].state.set_healthy(false);
    assert_eq!(c.pick_address(addr(9001)).unwrap().address(), addr(9001));
}

#[test]
fn panic_mode_prefers_primaries_when_nothing_is_healthy() {
    let c = lb_with_backups(LbPolicy::RoundRobin, 1, 1).with_health(None, None, true);
    for e in c.endpoints() {
        e.state.set_healthy(false);
    }
    assert_eq!(ports_picked(&c), [0].into());
    let c = lb_with_backups(LbPolicy::RoundRobin, 1, 1);
    c.endpoints()[0].state.set_healthy(false);
    c.endpoints()[1].state.set_healthy(false);
    assert!(c.pick().is_none(), "no panic mode: nothing");
}
