//! A compiled route: what the proxy needs once `find` has chosen it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sluice_shared::model::{HashOn, HttpsRedirect, Sticky};

use super::lb::{random_below, ClusterLb};
use super::matcher::Conditions;
use super::request::RequestView;
use super::retry::{RetryBucket, RetryPolicy};

/// Per-route counters, kept across revisions while the route name stays, so exported metrics do
/// not reset on every config change.
#[derive(Debug, Default)]
pub struct RouteStats {
    requests: AtomicU64,
    /// Responses by status class: index 0 = 1xx … 4 = 5xx.
    responses: [AtomicU64; 5],
    retries: AtomicU64,
    budget_exhausted: AtomicU64,
    rate_limited: AtomicU64,
    mirrored: AtomicU64,
    /// The retry budget's balance: it outlives revisions like the counters.
    pub(crate) retry_bucket: RetryBucket,
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

    /// Retries sent (each try after the first).
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Requests the route's rate limit refused.
    pub fn rate_limited(&self) -> u64 {
        self.rate_limited.load(Ordering::Relaxed)
    }

    pub fn record_rate_limited(&self) {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests copied to the route's mirror cluster.
    pub fn mirrored(&self) -> u64 {
        self.mirrored.load(Ordering::Relaxed)
    }

    pub fn record_mirrored(&self) {
        self.mirrored.fetch_add(1, Ordering::Relaxed);
    }

    /// Retries the policy allowed but the budget refused.
    pub fn budget_exhausted(&self) -> u64 {
        self.budget_exhausted.load(Ordering::Relaxed)
    }

    /// Responses of class `class` (1 to 5, as in `5xx`); 0 for any other class.
    pub fn responses(&self, class: u8) -> u64 {
        class.checked_sub(1).and_then(|i| self.responses.get(usize::from(i))).map_or(0, |c| c.load(Ordering::Relaxed))
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
    pub(crate) https_redirect: Option<HttpsRedirect>,
    pub(crate) max_request_body: Option<u64>,
    pub(crate) direct_response: Option<Arc<sluice_shared::model::DirectResponse>>,
    /// Client networks allowed and denied (`None`: any client).
    pub(crate) ip_policy: Option<super::IpPolicy>,
    /// Header, path and Host rewrites and the redirect; `None`: the route changes nothing.
    pub(crate) transforms: Option<Box<super::Transforms>>,
    /// Kept across revisions while the route's limit stays the same (its buckets with it).
    pub(crate) rate_limiter: Option<Arc<super::RateLimiter>>,
    /// The cluster a share of the requests is copied to, and the share in percent.
    pub(crate) mirror: Option<(Arc<ClusterLb>, u32)>,
    pub(crate) stats: Arc<RouteStats>,
}

impl RouteEntry {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn priority(&self) -> i32 {
        self.priority
    }

    /// Whether a client at `ip` may use the route.
    pub fn admits(&self, ip: std::net::IpAddr) -> bool {
        self.ip_policy.as_ref().is_none_or(|p| p.permits(ip))
    }

    /// The cluster for this request: a weighted random choice (thread-local wyrand, no lock), so over
    /// many requests each backend gets its weight's share; a zero weight is never chosen. `None`
    /// only for a redirecting route without backends.
    pub fn pick_cluster(&self) -> Option<&Arc<ClusterLb>> {
        let i = match self.backends.len() {
            0 => return None,
            1 => 0,
            _ => {
                let r = random_below(self.cumulative.last().copied().unwrap_or(1));
                self.cumulative.partition_point(|&c| c <= r)
            }
        };
        self.backends.get(i).map(|b| &b.cluster)
    }

    /// The backend cluster named `name` if it may take new requests (non-zero weight).
    pub fn backend(&self, name: &str) -> Option<&Arc<ClusterLb>> {
        self.backends.iter().find(|b| b.weight > 0 && b.cluster.name() == name).map(|b| &b.cluster)
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

    /// Request bodies over this many bytes get a 413; `None`: no limit.
    pub fn max_request_body(&self) -> Option<u64> {
        self.max_request_body
    }

    /// On plain http listeners: answer with a redirect to https instead of forwarding.
    /// The fixed answer of a route that answers by itself.
    pub fn direct_response(&self) -> Option<&sluice_shared::model::DirectResponse> {
        self.direct_response.as_deref()
    }

    pub fn https_redirect(&self) -> Option<&HttpsRedirect> {
        self.https_redirect.as_ref()
    }

    pub fn transforms(&self) -> Option<&super::Transforms> {
        self.transforms.as_deref()
    }

    pub fn rate_limiter(&self) -> Option<&Arc<super::RateLimiter>> {
        self.rate_limiter.as_ref()
    }

    pub fn mirrors(&self) -> bool {
        self.mirror.is_some()
    }

    /// The cluster this request is copied to, if the route mirrors and the request falls in its
    /// share (a random draw per request).
    pub fn mirror_for_this_request(&self) -> Option<&Arc<ClusterLb>> {
        let (cluster, percent) = self.mirror.as_ref()?;
        (*percent >= 100 || random_below(100) < u64::from(*percent)).then_some(cluster)
    }

    /// Counts the request toward the retry budget (only routes with retries keep one).
    pub fn deposit_retry_budget(&self) {
        if let Some(p) = &self.retries {
            self.stats.retry_bucket.deposit(&p.budget);
        }
    }

    /// Whether one more retry fits the budget; counts the retry or the refusal.
    pub fn withdraw_retry_budget(&self) -> bool {
        let Some(p) = &self.retries else { return false };
        if self.stats.retry_bucket.withdraw(&p.budget) {
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            self.stats.budget_exhausted.fetch_add(1, Ordering::Relaxed);
            false
        }
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
