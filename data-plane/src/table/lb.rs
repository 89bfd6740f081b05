//! Per-cluster load balancing over endpoints whose live state (health, active requests) outlives
//! table revisions.

use std::cell::Cell;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_shared::model::{HealthCheck, LbPolicy, UpstreamProtocol};
use tokio::sync::watch;

use super::breaker::Breaker;
use super::hash::HashIndex;
use super::outlier::{max_ejected, OutlierPolicy, OutlierState};

/// Live state of one endpoint of one cluster. Compile hands the same `Arc` to the next revision
/// while the cluster name and address stay, so health and counters survive config changes.
#[derive(Debug)]
pub struct EndpointState {
    address: SocketAddr,
    /// The active health checks' verdict (see `health/`).
    healthy: AtomicBool,
    active: AtomicUsize,
    /// Passive outlier detection (see `outlier.rs`).
    outlier: OutlierState,
    /// Bumped to close the endpoint's open L4 connections (`close_connections_on_health_change`).
    closing: watch::Sender<u64>,
}

impl EndpointState {
    /// New endpoints start healthy (DESIGN §3).
    pub fn new(address: SocketAddr) -> EndpointState {
        EndpointState {
            address,
            healthy: AtomicBool::new(true),
            active: AtomicUsize::new(0),
            outlier: OutlierState::default(),
            closing: watch::Sender::new(0),
        }
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Usable for new traffic: passing its health checks and not ejected as an outlier.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed) && !self.outlier.is_ejected(self.address)
    }

    /// Set by the active health checks; unhealthy endpoints are skipped by `pick`.
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    /// The active health checks' verdict alone (true without health checks).
    pub fn passes_health_checks(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Ejected by outlier detection right now.
    pub fn is_ejected(&self) -> bool {
        self.outlier.is_ejected(self.address)
    }

    /// Outlier ejections since the endpoint was first configured.
    pub fn ejections_total(&self) -> u64 {
        self.outlier.ejections_total()
    }

    /// Closes the open L4 connections that watch [`closings`](Self::closings).
    pub fn close_connections(&self) {
        self.closing.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Changes each time [`close_connections`](Self::close_connections) is called.
    pub fn closings(&self) -> watch::Receiver<u64> {
        self.closing.subscribe()
    }

    /// Requests (L7) or connections (L4) in flight, counted by [`EndpointGuard`]s.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }
}

/// An endpoint picked for one request or connection: counts as active until dropped, which is
/// what `least_request` balances on. Keep it for the whole exchange.
#[derive(Debug)]
pub struct EndpointGuard {
    endpoint: Arc<EndpointState>,
}

impl EndpointGuard {
    /// Counts one more in flight at `endpoint`, unless that would take it past `max` (`None`).
    /// The check and the count are one atomic step, so concurrent picks never overfill it.
    fn try_new(endpoint: &Arc<EndpointState>, max: Option<u32>) -> Option<EndpointGuard> {
        match max {
            None => {
                endpoint.active.fetch_add(1, Ordering::Relaxed);
            }
            Some(max) => {
                let below = |n: usize| (n < max as usize).then_some(n + 1);
                endpoint.active.fetch_update(Ordering::Relaxed, Ordering::Relaxed, below).ok()?;
            }
        }
        Some(EndpointGuard { endpoint: endpoint.clone() })
    }

    pub fn endpoint(&self) -> &Arc<EndpointState> {
        &self.endpoint
    }
}

impl Deref for EndpointGuard {
    type Target = EndpointState;
    fn deref(&self) -> &EndpointState {
        &self.endpoint
    }
}

impl Drop for EndpointGuard {
    fn drop(&mut self) {
        self.endpoint.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One endpoint as this revision sees it: the shared live state plus this revision's weight.
#[derive(Debug, Clone)]
pub struct LbEndpoint {
    pub state: Arc<EndpointState>,
    pub weight: u32,
    /// The configured name, if any (what sticky cookies name).
    pub name: Option<Arc<str>>,
    /// Takes traffic only while no primary endpoint of the cluster is usable.
    pub backup: bool,
    /// The most in flight at once (`max_connections`); a full endpoint is passed over.
    pub max_connections: Option<u32>,
}

impl LbEndpoint {
    /// Below its `max_connections`, if it has one.
    pub fn has_room(&self) -> bool {
        self.max_connections.is_none_or(|max| self.state.active() < max as usize)
    }
}

/// Clusters at most this big get an exact least-request scan; bigger ones power of two choices.
const LEAST_REQUEST_EXACT_MAX: usize = 8;
/// Policy-driven tries before falling back to a scan for any healthy endpoint.
const PICK_TRIES: usize = 8;

/// Load balancer of one cluster in one table revision. Immutable except for pick counters.
pub struct ClusterLb {
    name: Arc<str>,
    policy: LbPolicy,
    /// All endpoints, primaries and backups, in config order.
    endpoints: Vec<LbEndpoint>,
    primary: Group,
    /// Endpoints marked `backup`: picked only while no primary is usable (HAProxy's `backup`).
    backup: Option<Group>,
    health_check: Option<HealthCheck>,
    outlier: Option<OutlierPolicy>,
    /// No healthy endpoint: pick among all of them instead of none.
    panic_mode: bool,
    /// Serializes ejection decisions so that the cap holds under concurrent failures.
    ejecting: Mutex<()>,
    breaker: Option<Arc<Breaker>>,
    /// The cluster's `connect_timeout_ms`: the bound on one TCP connect to an endpoint.
    connect_timeout: Option<Duration>,
    /// `close_connections_on_health_change`.
    closes_on_health_change: bool,
    /// The HTTP version spoken to the endpoints.
    protocol: UpstreamProtocol,
}

/// The endpoints one policy decision chooses among (a cluster's primaries, or its backups), with
/// the policy's structures over them; indices are into `endpoints`.
struct Group {
    endpoints: Vec<LbEndpoint>,
    /// Running sums of weights, for weighted random choices.
    cumulative: Vec<u64>,
    schedule: WrrSchedule,
    counter: AtomicU64,
    /// `ring_hash` and `maglev` only (see `hash.rs`).
    hash: Option<HashIndex>,
}

impl fmt::Debug for ClusterLb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterLb")
            .field("name", &self.name)
            .field("policy", &self.policy)
            .field("endpoints", &self.endpoints)
            .finish()
    }
}

impl ClusterLb {
    pub fn new(name: &str, policy: LbPolicy, endpoints: Vec<LbEndpoint>) -> ClusterLb {
        let (backups, primaries): (Vec<LbEndpoint>, Vec<LbEndpoint>) =
            endpoints.iter().cloned().partition(|e| e.backup);
        ClusterLb {
            name: name.into(),
            policy,
            endpoints,
            primary: Group::new(policy, primaries),
            backup: (!backups.is_empty()).then(|| Group::new(policy, backups)),
            health_check: None,
            outlier: None,
            panic_mode: false,
            ejecting: Mutex::new(()),
            breaker: None,
            connect_timeout: None,
            closes_on_health_change: false,
            protocol: UpstreamProtocol::Http1,
        }
    }

    pub fn with_protocol(mut self, protocol: UpstreamProtocol) -> ClusterLb {
        self.protocol = protocol;
        self
    }

    /// The HTTP version spoken to the endpoints (the cluster's `protocol`).
    pub fn protocol(&self) -> UpstreamProtocol {
        self.protocol
    }

    /// L4 connections follow the active health checks (`close_connections_on_health_change`).
    pub fn with_closes_on_health_change(mut self, on: bool) -> ClusterLb {
        self.closes_on_health_change = on;
        self
    }

    pub fn closes_on_health_change(&self) -> bool {
        self.closes_on_health_change
    }

    /// The endpoints marked `backup`.
    pub fn backups(&self) -> &[LbEndpoint] {
        self.backup.as_ref().map_or(&[], |g| &g.endpoints)
    }

    pub fn with_connect_timeout(mut self, timeout: Option<Duration>) -> ClusterLb {
        self.connect_timeout = timeout;
        self
    }

    /// The cluster's bound on one TCP connect, if it sets one (else each caller's default).
    pub fn connect_timeout(&self) -> Option<Duration> {
        self.connect_timeout
    }

    /// Adds the cluster's circuit breaker (shared with the previous revision's when the limits stay).
    pub fn with_breaker(mut self, breaker: Option<Arc<Breaker>>) -> ClusterLb {
        self.breaker = breaker;
        self
    }

    pub fn breaker(&self) -> Option<&Arc<Breaker>> {
        self.breaker.as_ref()
    }

    /// Adds the cluster's health settings: active checks (run by `health/`), outlier detection and
    /// panic mode.
    pub fn with_health(
        mut self,
        health_check: Option<HealthCheck>,
        outlier: Option<OutlierPolicy>,
        panic_mode: bool,
    ) -> ClusterLb {
        self.health_check = health_check;
        self.outlier = outlier;
        self.panic_mode = panic_mode;
        self
    }

    /// The active health check configured for this cluster, if any.
    pub fn health_check(&self) -> Option<&HealthCheck> {
        self.health_check.as_ref()
    }

    /// Passive outlier detection: the proxy reports each upstream exchange of an endpoint it
    /// picked from this cluster. `failed`: a connect failure or a 5xx answer. Enough failures in
    /// a row eject the endpoint, unless the cluster already has its share of ejected endpoints.
    /// A no-op without `outlier_detection`; one relaxed load on a success.
    pub fn record_outcome(&self, endpoint: &EndpointState, failed: bool) {
        let Some(policy) = &self.outlier else { return };
        if !failed {
            endpoint.outlier.record_success();
            return;
        }
        if !endpoint.outlier.record_failure(policy) {
            return;
        }
        let _one_at_a_time = self.ejecting.lock().unwrap_or_else(|e| e.into_inner());
        if endpoint.outlier.is_ejected(endpoint.address) {
            return;
        }
        let ejected = self.endpoints.iter().filter(|e| e.state.is_ejected()).count();
        if ejected >= max_ejected(self.endpoints.len()) {
            tracing::debug!(cluster = %self.name, endpoint = %endpoint.address, "outlier not ejected: cluster at its cap");
            return;
        }
        let d = endpoint.outlier.eject(policy);
        tracing::info!(cluster = %self.name, endpoint = %endpoint.address, ejection_ms = d.as_millis() as u64, "outlier ejected");
        // An ejection is a verdict too (HAProxy's `on-error mark-down` with `shutdown-sessions`).
        // Its end is lazy, with no moment to act on: backups are handed back by active checks only.
        if self.closes_on_health_change {
            endpoint.close_connections();
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The configured policy. `ring_hash` and `maglev` hash a key given to [`pick_hashed`](Self::pick_hashed).
    pub fn policy(&self) -> LbPolicy {
        self.policy
    }

    pub fn endpoints(&self) -> &[LbEndpoint] {
        &self.endpoints
    }

    /// Picks a healthy endpoint with non-zero weight by the cluster's policy, among the backups
    /// only when no primary is usable; `None` when there is none (the proxy answers 503).
    pub fn pick(&self) -> Option<EndpointGuard> {
        self.pick_excluding(&[])
    }

    /// Like [`pick`](Self::pick), but never an endpoint whose address is in `exclude` (for a retry
    /// "to another endpoint"; an excluded primary counts as unusable, so the next try may go to a
    /// backup). `None` when every usable endpoint is excluded; the caller may then retry the same
    /// endpoint with `pick`.
    pub fn pick_excluding(&self, exclude: &[SocketAddr]) -> Option<EndpointGuard> {
        self.groups().find_map(|g| g.take(|| g.pick(self.policy, exclude))).or_else(|| self.panic_pick(exclude))
    }

    /// For `ring_hash` and `maglev`: the endpoint owning `key` (see [`hash_ip`](super::hash_ip), [`hash_bytes`](super::hash_bytes)),
    /// skipping unusable or excluded ones the way the structure does. Other policies ignore the key.
    pub fn pick_hashed(&self, key: u64, exclude: &[SocketAddr]) -> Option<EndpointGuard> {
        self.groups()
            .find_map(|g| {
                g.take(|| {
                    let hashed = g.hash.as_ref().and_then(|h| h.pick(key, |i| g.usable(i, exclude)));
                    hashed.or_else(|| g.pick(self.policy, exclude))
                })
            })
            .or_else(|| self.panic_pick(exclude))
    }

    /// The endpoint at `address` if it may take new requests now (weight, health, and for a
    /// backup: no primary usable); for sticky sessions. Linear: clusters pinned by cookie are small.
    pub fn pick_address(&self, address: SocketAddr) -> Option<EndpointGuard> {
        let at =
            |g: &Group| (0..g.endpoints.len()).find(|&i| g.endpoints[i].state.address == address && g.usable(i, &[]));
        if let Some(i) = at(&self.primary) {
            return self.primary.try_guard(i);
        }
        let backup = self.backup.as_ref()?;
        let primary_usable = (0..self.primary.endpoints.len()).any(|i| self.primary.usable(i, &[]));
        at(backup).filter(|_| !primary_usable).and_then(|i| backup.try_guard(i))
    }

    /// Whether some endpoint that would take traffic is passed over only because it is at its
    /// `max_connections`: what tells "every endpoint is full" from "none is healthy" when a pick
    /// finds nothing.
    pub fn is_full(&self) -> bool {
        self.endpoints.iter().any(|e| e.weight > 0 && !e.has_room() && (self.panic_mode || e.state.is_healthy()))
    }

    /// The primaries, then the backups.
    fn groups(&self) -> impl Iterator<Item = &Group> {
        std::iter::once(&self.primary).chain(&self.backup)
    }

    /// Panic mode: nothing healthy, so health is ignored rather than answering 503 (primaries
    /// first, backups if no primary can take traffic at all).
    fn panic_pick(&self, exclude: &[SocketAddr]) -> Option<EndpointGuard> {
        if !self.panic_mode {
            return None;
        }
        self.groups().find_map(|g| g.take(|| g.pick_ignoring_health(exclude)))
    }
}

impl Group {
    fn new(policy: LbPolicy, endpoints: Vec<LbEndpoint>) -> Group {
        let cumulative = endpoints
            .iter()
            .scan(0u64, |sum, e| {
                *sum += u64::from(e.weight);
                Some(*sum)
            })
            .collect();
        let schedule = WrrSchedule::new(&endpoints);
        let hash = match policy {
            LbPolicy::RingHash => Some(HashIndex::ring(&endpoints)),
            LbPolicy::Maglev => Some(HashIndex::maglev(&endpoints)),
            _ => None,
        };
        Group { endpoints, cumulative, schedule, counter: AtomicU64::new(0), hash }
    }

    fn try_guard(&self, i: usize) -> Option<EndpointGuard> {
        let e = &self.endpoints[i];
        EndpointGuard::try_new(&e.state, e.max_connections)
    }

    /// The endpoint `choose` picks, choosing again should it fill up between the choice and the
    /// count (another thread took its last place); a few tries, then none.
    fn take(&self, mut choose: impl FnMut() -> Option<usize>) -> Option<EndpointGuard> {
        for _ in 0..PICK_TRIES {
            if let Some(guard) = self.try_guard(choose()?) {
                return Some(guard);
            }
        }
        None
    }

    fn usable(&self, i: usize, exclude: &[SocketAddr]) -> bool {
        let e = &self.endpoints[i];
        e.weight > 0 && e.state.is_healthy() && e.has_room() && !exclude.contains(&e.state.address)
    }

    /// A usable endpoint by `policy` (round robin for the hashing policies, which have no key
    /// here), or `None`.
    fn pick(&self, policy: LbPolicy, exclude: &[SocketAddr]) -> Option<usize> {
        if self.total_weight() == 0 {
            return None;
        }
        let usable = |i: usize| self.usable(i, exclude);
        let picked = match policy {
            LbPolicy::LeastRequest => self.least_request(usable),
            LbPolicy::Random => (0..PICK_TRIES).map(|_| self.weighted_random()).find(|&i| usable(i)),
            LbPolicy::RoundRobin | LbPolicy::RingHash | LbPolicy::Maglev => (0..PICK_TRIES)
                .map(|_| self.schedule.at(self.counter.fetch_add(1, Ordering::Relaxed)))
                .find(|&i| usable(i)),
        };
        // Many unusable endpoints: scan from a random start so the leftovers share the load.
        let n = self.endpoints.len();
        picked.or_else(|| {
            let start = random_below(n as u64) as usize;
            (0..n).map(|k| (start + k) % n).find(|&i| usable(i))
        })
    }

    /// Any endpoint with weight that is not excluded, healthy or not (panic mode).
    fn pick_ignoring_health(&self, exclude: &[SocketAddr]) -> Option<usize> {
        if self.total_weight() == 0 {
            return None;
        }
        let any = |i: usize| {
            let e = &self.endpoints[i];
            e.weight > 0 && e.has_room() && !exclude.contains(&e.state.address)
        };
        let n = self.endpoints.len();
        (0..PICK_TRIES).map(|_| self.weighted_random()).find(|&i| any(i)).or_else(|| (0..n).find(|&i| any(i)))
    }

    fn total_weight(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }

    /// An index drawn in proportion to weight; zero weights are never drawn.
    fn weighted_random(&self) -> usize {
        let r = random_below(self.total_weight());
        self.cumulative.partition_point(|&c| c <= r)
    }

    /// Fewest active requests per unit of weight. Exact over small groups (starting the scan at a
    /// rotating offset so ties are shared), power of two (weighted) choices over large ones.
    fn least_request(&self, usable: impl Fn(usize) -> bool) -> Option<usize> {
        let load = |i: usize| (self.endpoints[i].state.active() as u128 + 1, u128::from(self.endpoints[i].weight));
        let lighter = |a: usize, b: usize| {
            let ((la, wa), (lb, wb)) = (load(a), load(b));
            la * wb < lb * wa
        };
        let n = self.endpoints.len();
        if n <= LEAST_REQUEST_EXACT_MAX {
            let start = self.counter.fetch_add(1, Ordering::Relaxed) as usize;
            return (0..n).map(|k| (start + k) % n).filter(|&i| usable(i)).fold(None, |best, i| match best {
                Some(b) if !lighter(i, b) => Some(b),
                _ => Some(i),
            });
        }
        for _ in 0..PICK_TRIES {
            let a = self.weighted_random();
            let b = self.weighted_random();
            match (usable(a), usable(b)) {
                (true, true) if a != b => return Some(if lighter(b, a) { b } else { a }),
                (true, false) => return Some(a),
                (false, true) => return Some(b),
                _ => {}
            }
        }
        None
    }
}

/// Interleaved weighted round robin without locks: one cycle of `sum(weights)` picks is a series
/// of rounds; round `r` visits, in a fixed order, every endpoint whose weight is above `r`. A
/// shared counter indexes into the cycle, so each endpoint gets exactly its weight per cycle.
/// Rounds with the same set of endpoints form a segment; a pick is one binary search over segments.
#[derive(Debug, Default)]
struct WrrSchedule {
    /// Endpoint indices by weight, heaviest first; zero weights left out.
    order: Vec<u32>,
    /// (first pick of the segment within the cycle, number of endpoints visited per round).
    segments: Vec<(u64, u32)>,
    cycle: u64,
}

impl WrrSchedule {
    fn new(endpoints: &[LbEndpoint]) -> WrrSchedule {
        let mut order: Vec<u32> = (0..endpoints.len() as u32).filter(|&i| endpoints[i as usize].weight > 0).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(endpoints[i as usize].weight));
        let mut segments = Vec::new();
        let (mut start, mut round) = (0u64, 0u64);
        // Walk from the lightest weight up: rounds below it visit every endpoint heavier or equal.
        for count in (1..=order.len()).rev() {
            let weight = u64::from(endpoints[order[count - 1] as usize].weight);
            if weight > round {
                segments.push((start, count as u32));
                start += (weight - round) * count as u64;
                round = weight;
            }
        }
        WrrSchedule { order, segments, cycle: start }
    }

    /// The endpoint index for pick number `n`. Only called when some weight is non-zero.
    fn at(&self, n: u64) -> usize {
        let x = n % self.cycle;
        let seg = self.segments.partition_point(|&(start, _)| start <= x) - 1;
        let (start, count) = self.segments[seg];
        self.order[((x - start) % u64::from(count)) as usize] as usize
    }
}

thread_local! {
    static RNG_STATE: Cell<u64> = Cell::new(rand::random());
}

/// wyrand on a thread-local state seeded from the OS: a few nanoseconds, no lock, no allocation.
/// Not for anything secret; only for spreading load.
pub(crate) fn random_u64() -> u64 {
    RNG_STATE.with(|s| {
        let x = s.get().wrapping_add(0xa076_1d64_78bd_642f);
        s.set(x);
        let t = u128::from(x) * u128::from(x ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    })
}

/// Uniform in `0..n` (`n > 0`) by multiply-shift; the bias is below 2^-40 for any weight sum here.
pub(crate) fn random_below(n: u64) -> u64 {
    ((u128::from(random_u64()) * u128::from(n)) >> 64) as u64
}
