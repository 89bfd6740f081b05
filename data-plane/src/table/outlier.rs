//! Passive outlier detection: consecutive connect failures or 5xx answers eject an endpoint for a
//! while, longer on each repeat. Lock-free per endpoint; the state lives on [`EndpointState`]
//! (see `lb.rs`) so it survives table revisions. Time-based return: an ejected endpoint is usable
//! again as soon as its ejection has run out, checked lazily by whoever looks at it.
//!
//! [`EndpointState`]: super::EndpointState

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sluice_shared::model::OutlierDetection;

/// Repeat ejections double in length up to this many times (x32)...
const MAX_DOUBLINGS: u32 = 5;
/// ...and never last longer than this (or the base ejection, if that is longer).
const MAX_EJECTION_MS: u64 = 300_000;
/// Share of a cluster's endpoints that may be ejected at once; at least one always may be.
pub const MAX_EJECTED_PERCENT: usize = 50;

/// A cluster's outlier detection settings, compiled from its `outlier_detection`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierPolicy {
    pub consecutive_failures: u32,
    pub ejection: Duration,
}

impl From<&OutlierDetection> for OutlierPolicy {
    fn from(o: &OutlierDetection) -> OutlierPolicy {
        OutlierPolicy {
            consecutive_failures: o.consecutive_failures.max(1),
            ejection: Duration::from_millis(o.ejection_ms),
        }
    }
}

impl OutlierPolicy {
    /// How long ejection number `streak + 1` (in a row) lasts, in ms.
    fn ejection_ms(&self, streak: u32) -> u64 {
        let base = u64::try_from(self.ejection.as_millis()).unwrap_or(u64::MAX).max(1);
        base.saturating_mul(1 << streak.min(MAX_DOUBLINGS)).min(base.max(MAX_EJECTION_MS))
    }
}

/// Milliseconds on a process-wide monotonic clock; never 0 (0 means "not ejected").
pub(crate) fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    u64::try_from(START.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
}

/// Per-endpoint outlier state.
#[derive(Debug, Default)]
pub(super) struct OutlierState {
    /// Failures in a row since the last success (or return from ejection).
    failures: AtomicU32,
    /// 0: not ejected; otherwise the clock (`now_ms`) at which the endpoint comes back.
    ejected_until: AtomicU64,
    /// When the last ejection ended (or ends), for the repeat rule.
    last_until: AtomicU64,
    /// Ejections in a row: each one lasts twice as long as the one before, until the endpoint stays
    /// out of trouble for as long as its next ejection would last.
    streak: AtomicU32,
    ejections_total: AtomicU64,
}

impl OutlierState {
    /// Whether the endpoint is ejected now. The common case is one relaxed load; the clock is read
    /// only while an ejection is on, and the first look after it ran out clears it.
    pub(super) fn is_ejected(&self, address: SocketAddr) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until == 0 {
            return false;
        }
        if now_ms() < until {
            return true;
        }
        if self.ejected_until.compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            self.failures.store(0, Ordering::Relaxed);
            tracing::info!(endpoint = %address, "endpoint returns from outlier ejection");
        }
        false
    }

    pub(super) fn ejections_total(&self) -> u64 {
        self.ejections_total.load(Ordering::Relaxed)
    }

    /// A success: the failure run is over. Written only when there was one, so the hot path of a
    /// healthy endpoint only reads the shared cache line.
    pub(super) fn record_success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// A failure; true when the run has reached the policy's threshold (the caller decides,
    /// under its cluster's cap, whether to [`eject`](Self::eject)).
    pub(super) fn record_failure(&self, policy: &OutlierPolicy) -> bool {
        let n = self.failures.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        n >= policy.consecutive_failures
    }

    /// Ejects the endpoint now; returns how long for.
    pub(super) fn eject(&self, policy: &OutlierPolicy) -> Duration {
        let now = now_ms();
        let mut streak = self.streak.load(Ordering::Relaxed);
        let last = self.last_until.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) > policy.ejection_ms(streak) {
            // Stayed out of trouble for as long as the next ejection would have lasted: forgiven.
            streak = 0;
        }
        let ms = policy.ejection_ms(streak);
        let until = now.saturating_add(ms);
        self.last_until.store(until, Ordering::Relaxed);
        self.streak.store(streak.saturating_add(1), Ordering::Relaxed);
        self.ejected_until.store(until, Ordering::Relaxed);
        self.ejections_total.fetch_add(1, Ordering::Relaxed);
        self.failures.store(0, Ordering::Relaxed);
        Duration::from_millis(ms)
    }
}

/// How many of `endpoints` may be ejected at once (DESIGN §3: always at least one).
pub fn max_ejected(endpoints: usize) -> usize {
    (endpoints * MAX_EJECTED_PERCENT / 100).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADDR: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9000);

    fn policy(n: u32, ms: u64) -> OutlierPolicy {
        OutlierPolicy { consecutive_failures: n, ejection: Duration::from_millis(ms) }
    }

    #[test]
    fn threshold_counts_failures_in_a_row() {
        let p = policy(3, 1000);
        let s = OutlierState::default();
        assert!(!s.record_failure(&p));
        assert!(!s.record_failure(&p));
        s.record_success();
        assert!(!s.record_failure(&p));
        assert!(!s.record_failure(&p));
        assert!(s.record_failure(&p));
    }

    #[test]
    fn ejections_double_and_are_capped() {
        let p = policy(1, 1000);
        assert_eq!(p.ejection_ms(0), 1000);
        assert_eq!(p.ejection_ms(1), 2000);
        assert_eq!(p.ejection_ms(3), 8000);
        assert_eq!(p.ejection_ms(30), 32_000);
        let long = policy(1, 200_000);
        assert_eq!(long.ejection_ms(3), 300_000, "capped at 5 minutes");
        let huge = policy(1, 600_000);
        assert_eq!(huge.ejection_ms(3), 600_000, "never shorter than the base");
    }

    #[test]
    fn eject_and_timed_return() {
        let p = policy(1, 30);
        let s = OutlierState::default();
        assert_eq!(s.eject(&p), Duration::from_millis(30));
        assert!(s.is_ejected(ADDR));
        // Repeat while the streak is fresh: twice as long.
        let deadline = Instant::now() + Duration::from_secs(5);
        while s.is_ejected(ADDR) {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(s.eject(&p), Duration::from_millis(60));
        assert_eq!(s.ejections_total(), 2);
    }

    #[test]
    fn an_ejection_closes_l4_connections_only_when_the_cluster_asks() {
        for closes in [true, false] {
            let c = cluster(4, Some(policy(2, 60_000)), false).with_closes_on_health_change(closes);
            let e = &c.endpoints()[0].state;
            let mut watching = e.closings();
            c.record_outcome(e, true);
            assert!(!watching.has_changed().unwrap(), "one failure of two is no ejection");
            c.record_outcome(e, true);
            assert!(e.is_ejected());
            assert_eq!(watching.has_changed().unwrap(), closes, "closes_on_health_change: {closes}");
            watching.mark_unchanged();
            // Another endpoint's ejection leaves this one's connections alone.
            let other = &c.endpoints()[1].state;
            c.record_outcome(other, true);
            c.record_outcome(other, true);
            assert!(other.is_ejected());
            assert!(!watching.has_changed().unwrap());
        }
    }

    fn cluster(n: u16, outlier: Option<OutlierPolicy>, panic_mode: bool) -> crate::table::ClusterLb {
        use crate::table::{ClusterLb, EndpointState, LbEndpoint};
        let endpoints = (0..n)
            .map(|i| LbEndpoint {
                state: std::sync::Arc::new(EndpointState::new(([127, 0, 0, 1], 9000 + i).into())),
                weight: 1,
                name: None,
                backup: false,
                max_connections: None,
            })
            .collect();
        ClusterLb::new("c", sluice_shared::model::LbPolicy::RoundRobin, endpoints)
            .with_health(None, outlier, panic_mode)
    }

    #[test]
    fn cluster_ejects_up_to_its_cap() {
        let c = cluster(5, Some(policy(2, 60_000)), false);
        for e in c.endpoints() {
            c.record_outcome(&e.state, true);
            c.record_outcome(&e.state, true);
        }
        let ejected = c.endpoints().iter().filter(|e| e.state.is_ejected()).count();
        assert_eq!(ejected, 2, "half of 5, rounded down");
        assert!((0..20).all(|_| c.pick().is_some_and(|e| !e.is_ejected())));
        // A success in between resets the run.
        let c = cluster(2, Some(policy(2, 60_000)), false);
        let e = &c.endpoints()[0].state;
        c.record_outcome(e, true);
        c.record_outcome(e, false);
        c.record_outcome(e, true);
        assert!(!e.is_ejected());
        // Without outlier detection nothing is counted.
        let c = cluster(2, None, false);
        (0..10).for_each(|_| c.record_outcome(&c.endpoints()[0].state, true));
        assert!(!c.endpoints()[0].state.is_ejected());
    }

    #[test]
    fn panic_mode_picks_among_unhealthy_endpoints() {
        for panic_mode in [false, true] {
            let c = cluster(3, None, panic_mode);
            c.endpoints().iter().for_each(|e| e.state.set_healthy(false));
            assert_eq!(c.pick().is_some(), panic_mode);
        }
        let c = cluster(1, Some(policy(1, 60_000)), true);
        c.record_outcome(&c.endpoints()[0].state, true);
        assert!(c.endpoints()[0].state.is_ejected(), "a lone endpoint can be ejected");
        assert!(c.pick().is_some(), "panic mode also covers ejected endpoints");
    }

    #[test]
    fn at_least_one_and_at_most_half() {
        assert_eq!(max_ejected(1), 1);
        assert_eq!(max_ejected(2), 1);
        assert_eq!(max_ejected(3), 1);
        assert_eq!(max_ejected(4), 2);
        assert_eq!(max_ejected(10), 5);
    }
}
