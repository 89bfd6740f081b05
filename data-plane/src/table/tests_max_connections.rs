//! Endpoint `max_connections`: a full endpoint is passed over by every policy, exactly, and
//! takes traffic again as soon as one of its requests or connections ends.

use std::sync::Arc;

use sluice_shared::model::LbPolicy;

use super::tests_lb::addr;
use super::*;

const POLICIES: [LbPolicy; 5] =
    [LbPolicy::RoundRobin, LbPolicy::LeastRequest, LbPolicy::Random, LbPolicy::RingHash, LbPolicy::Maglev];

/// Endpoints on ports 9000.. with these (max_connections, backup).
fn cluster(policy: LbPolicy, endpoints: &[(Option<u32>, bool)]) -> ClusterLb {
    let endpoints = endpoints
        .iter()
        .enumerate()
        .map(|(i, &(max_connections, backup))| LbEndpoint {
            state: Arc::new(EndpointState::new(addr(9000 + i as u16))),
            weight: 1,
            name: None,
            backup,
            max_connections,
        })
        .collect();
    ClusterLb::new("c", policy, endpoints)
}

/// A pick the way the proxy makes it: hashed (by `key`) for the hashing policies.
fn pick(c: &ClusterLb, key: u64) -> Option<EndpointGuard> {
    match c.policy() {
        LbPolicy::RingHash | LbPolicy::Maglev => c.pick_hashed(key, &[]),
        _ => c.pick(),
    }
}

fn active(c: &ClusterLb) -> Vec<usize> {
    c.endpoints().iter().map(|e| e.state.active()).collect()
}

#[test]
fn every_policy_fills_each_endpoint_to_its_limit_and_no_further() {
    for policy in POLICIES {
        let c = cluster(policy, &[(Some(2), false), (Some(1), false), (Some(3), false)]);
        let mut held: Vec<EndpointGuard> = (0..6).map(|k| pick(&c, k).expect("room left")).collect();
        assert_eq!(active(&c), [2, 1, 3], "{policy:?}");
        assert!(pick(&c, 99).is_none() && c.is_full(), "{policy:?}: all full");
        // One ends: its endpoint, and only it, takes the next one.
        let freed = held.iter().position(|g| g.address() == addr(9001)).unwrap();
        drop(held.remove(freed));
        assert_eq!(pick(&c, 7).map(|g| g.address()), Some(addr(9001)), "{policy:?}");
    }
}

#[test]
fn full_is_told_apart_from_unhealthy() {
    let c = cluster(LbPolicy::RoundRobin, &[(Some(1), false), (None, false)]);
    let _held = c.pick_address(addr(9000)).unwrap();
    c.endpoints()[1].state.set_healthy(false);
    assert!(c.pick().is_none());
    assert!(c.is_full(), "a healthy endpoint is full");
    c.endpoints()[0].state.set_healthy(false);
    assert!(!c.is_full(), "nothing healthy: the answer is no healthy endpoint");
}

#[test]
fn full_primaries_spill_to_the_backups_and_take_back_what_frees() {
    for policy in POLICIES {
        let c = cluster(policy, &[(Some(1), false), (Some(1), false), (None, true)]);
        let a = pick(&c, 1).unwrap();
        let b = pick(&c, 2).unwrap();
        assert_ne!(a.address(), b.address(), "{policy:?}");
        let spilled: Vec<_> = (0..5).map(|k| pick(&c, k).unwrap().address()).collect();
        assert!(spilled.iter().all(|&x| x == addr(9002)), "{policy:?}: {spilled:?}");
        drop(a);
        let back = pick(&c, 3).unwrap().address();
        assert!(back == addr(9000) || back == addr(9001), "{policy:?}: {back}");
    }
}

#[test]
fn sticky_and_panic_picks_respect_the_limit() {
    let c = cluster(LbPolicy::RoundRobin, &[(Some(1), false)]).with_health(None, None, true);
    c.endpoints()[0].state.set_healthy(false);
    let held = c.pick().expect("panic mode picks the unhealthy endpoint");
    assert!(c.pick().is_none(), "panic mode ignores health, not the limit");
    drop(held);
    c.endpoints()[0].state.set_healthy(true);
    let pinned = c.pick_address(addr(9000)).unwrap();
    assert!(c.pick_address(addr(9000)).is_none(), "a cookie does not pass the limit either");
    drop(pinned);
}

#[test]
fn a_hashed_client_goes_elsewhere_only_while_its_endpoint_is_full() {
    for policy in [LbPolicy::RingHash, LbPolicy::Maglev] {
        let c = cluster(policy, &[(Some(1), false), (Some(1), false), (Some(1), false)]);
        let owner = c.pick_hashed(42, &[]).unwrap();
        let home = owner.address();
        let elsewhere = c.pick_hashed(42, &[]).unwrap();
        assert_ne!(elsewhere.address(), home, "{policy:?}");
        drop((owner, elsewhere));
        assert_eq!(c.pick_hashed(42, &[]).unwrap().address(), home, "{policy:?}: back home");
    }
}

#[test]
fn concurrent_picks_never_overfill_an_endpoint() {
    let c = Arc::new(cluster(LbPolicy::LeastRequest, &[(Some(3), false), (Some(2), false)]));
    let over = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (c, over) = (Arc::clone(&c), Arc::clone(&over));
            std::thread::spawn(move || {
                for _ in 0..20_000 {
                    let g = c.pick();
                    let a = active(&c);
                    if a[0] > 3 || a[1] > 2 {
                        over.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    drop(g);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(!over.load(std::sync::atomic::Ordering::Relaxed), "an endpoint went past its limit");
    assert_eq!(active(&c), [0, 0]);
}
