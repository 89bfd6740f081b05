//! A compiled route: what the proxy needs once `find` has chosen it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sluice_shared::model::{HashOn, RetryOn, Sticky};

use super::lb::{random_below, ClusterLb};
use super::matcher::Conditions;
use super::request::RequestView;

/// Per-route counters, kept across revisions while the route name stays, so exported metrics do
/// not reset on every config change.
#[derive(Debug, Default)]
pub struct RouteStats {
    requests: AtomicU64,
    /// Responses by status class: index 0 = 1xx … 4 = 5xx.
    responses: [AtomicU64; 5],
}

impl RouteStats {
    /// Counts a request routed here (call once per request, before forwarding).
    pub fn record_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a response sent for this route, by status class. Out-of-range codes are ignored.
    pub fn record_response(&self, status: u16) {
        if let Some(c) = (status / 100).checked_sub(1).and_then(|i| self.responses.get(usize::from(i))) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Responses of class `class` (1 to 5, as in `5xx`); 0 for any other class.
    pub fn responses(&self, class: u8) -> u64 {
        class.checked_sub(1).and_then(|i| self.responses.get(usize::from(i))).map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

/// A route's retry policy: `attempts` retries after the first try, on the listed failures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub on: Vec<RetryOn>,
}

impl RetryPolicy {
    pub fn retries_on(&self, what: RetryOn) -> bool {
        self.on.contains(&what)
    }
}

/// One weighted backend of a route.
#[derive(Debug, Clone)]
pub struct WeightedBackend {
    pub cluster: Arc<ClusterLb>,
    pub weight: u32,
}

#[derive(Debug)]
pub struct RouteEntry {
    pub(crate) name: Arc<str>,
    pub(crate) priority: i32,
    pub(crate) conditions: Conditions,
    pub(crate) backends: Vec<WeightedBackend>,
    /// Running sums of backend weights; never all zero (compile refuses that).
    pub(crate) cumulative: Vec<u64>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) retries: Option<RetryPolicy>,
    pub(crate) sticky: Option<Sticky>,
    pub(crate) hash_on: Option<HashOn>,
    pub(crate) stats: Arc<RouteStats>,
}

impl RouteEntry {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn priority(&self) -> i32 {
        self.priority
    }

    /// The cluster for this request: a weighted random choice (thread-local wyrand, no lock), so over
    /// many requests each backend gets its weight's share; a zero weight is never chosen.
    pub fn pick_cluster(&self) -> &Arc<ClusterLb> {
        let i = match self.backends.len() {
            1 => 0,
            _ => {
                let r = random_below(self.cumulative.last().copied().unwrap_or(1));
                self.cumulative.partition_point(|&c| c <= r)
            }
        };
        &self.backends[i].cluster
    }

    pub fn backends(&self) -> &[WeightedBackend] {
        &self.backends
    }

    /// `timeout_ms` of the route; `None`: no route-level timeout.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    pub fn retries(&self) -> Option<&RetryPolicy> {
        self.retries.as_ref()
    }

    pub fn sticky(&self) -> Option<&Sticky> {
        self.sticky.as_ref()
    }

    pub fn hash_on(&self) -> Option<&HashOn> {
        self.hash_on.as_ref()
    }

    pub fn stats(&self) -> &Arc<RouteStats> {
        &self.stats
    }

    /// Whether this route alone matches the request, host aside. `find` never needs this; it is
    /// for tests and diagnostics.
    pub fn matches_ignoring_host(&self, req: &RequestView<'_>) -> bool {
        self.conditions.matches_path(req.path) && self.conditions.matches_rest(req)
    }
}
