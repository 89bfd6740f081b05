//! Circuit breaking per cluster: bounds on requests in flight, upstream connections and requests
//! waiting for a connection. Past a bound the proxy answers 503 at once: queueing without limit
//! in front of a struggling cluster only turns slowness into an outage.
//!
//! The state is per node and outlives revisions while the limits stay the same (compile reuses
//! it), so a config change neither forgets the requests in flight nor doubles the allowance.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use sluice_shared::model::CircuitBreaker;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Which bound a request hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    Connections,
    Pending,
    Requests,
}

impl Overflow {
    pub const ALL: [Overflow; 3] = [Overflow::Connections, Overflow::Pending, Overflow::Requests];

    pub fn as_str(self) -> &'static str {
        match self {
            Overflow::Connections => "connections",
            Overflow::Pending => "pending",
            Overflow::Requests => "requests",
        }
    }
}

#[derive(Debug)]
pub struct Breaker {
    limits: CircuitBreaker,
    requests: AtomicUsize,
    pending: AtomicUsize,
    /// One permit per upstream connection; `None` without `max_connections`.
    connections: Option<Arc<Semaphore>>,
    overflows: [AtomicU64; 3],
}

impl Breaker {
    pub fn new(limits: CircuitBreaker) -> Breaker {
        Breaker {
            limits,
            requests: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            connections: limits.max_connections.map(|n| Arc::new(Semaphore::new(n as usize))),
            overflows: Default::default(),
        }
    }

    pub fn limits(&self) -> &CircuitBreaker {
        &self.limits
    }

    /// Admits one request, or says it overflows `max_requests` (and counts that).
    pub fn try_request(self: &Arc<Self>) -> Result<RequestPermit, Overflow> {
        let max = self.limits.max_requests.map_or(usize::MAX, |m| m as usize);
        let admitted =
            self.requests.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| (n < max).then_some(n + 1)).is_ok();
        if !admitted {
            return Err(self.overflowed(Overflow::Requests));
        }
        Ok(RequestPermit { breaker: Arc::clone(self) })
    }

    /// Whether connections are bounded at all.
    pub fn limits_connections(&self) -> bool {
        self.connections.is_some()
    }

    /// A permit for one more upstream connection if one is free right now.
    pub fn try_connection(&self) -> Option<OwnedSemaphorePermit> {
        match &self.connections {
            None => None,
            Some(s) => Arc::clone(s).try_acquire_owned().ok(),
        }
    }

    /// Waits for a connection permit as one of the `max_pending` waiting requests; `Err` when
    /// that queue is full. The returned guard counts the wait; drop it once served.
    pub fn enter_pending(self: &Arc<Self>) -> Result<PendingGuard, Overflow> {
        let max = self.limits.max_pending.map_or(usize::MAX, |m| m as usize);
        let admitted =
            self.pending.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| (n < max).then_some(n + 1)).is_ok();
        if !admitted {
            return Err(self.overflowed(Overflow::Pending));
        }
        Ok(PendingGuard { breaker: Arc::clone(self) })
    }

    /// Resolves when a connection permit is free (never without `max_connections`).
    pub async fn connection(&self) -> Option<OwnedSemaphorePermit> {
        match &self.connections {
            None => std::future::pending().await,
            Some(s) => Arc::clone(s).acquire_owned().await.ok(),
        }
    }

    /// Requests are waiting for a connection: a connection that finishes an exchange should be
    /// closed (freeing its permit) rather than kept idle.
    pub fn has_waiters(&self) -> bool {
        self.pending.load(Ordering::Acquire) > 0
    }

    pub fn overflowed(&self, what: Overflow) -> Overflow {
        self.overflows[what as usize].fetch_add(1, Ordering::Relaxed);
        what
    }

    pub fn overflows(&self, what: Overflow) -> u64 {
        self.overflows[what as usize].load(Ordering::Relaxed)
    }

    pub fn requests_active(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// Upstream connections open (0 without `max_connections`: they are not counted then).
    pub fn connections_open(&self) -> usize {
        match (&self.connections, self.limits.max_connections) {
            (Some(s), Some(max)) => (max as usize).saturating_sub(s.available_permits()),
            _ => 0,
        }
    }
}

/// One admitted request; released on drop (keep it until the response body is done).
#[derive(Debug)]
pub struct RequestPermit {
    breaker: Arc<Breaker>,
}

impl Drop for RequestPermit {
    fn drop(&mut self) {
        self.breaker.requests.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Debug)]
pub struct PendingGuard {
    breaker: Arc<Breaker>,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.breaker.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(c: Option<u32>, p: Option<u32>, r: Option<u32>) -> Arc<Breaker> {
        Arc::new(Breaker::new(CircuitBreaker { max_connections: c, max_pending: p, max_requests: r }))
    }

    #[test]
    fn requests_past_the_limit_overflow_until_one_ends() {
        let b = breaker(None, None, Some(2));
        let one = b.try_request().unwrap();
        let _two = b.try_request().unwrap();
        assert_eq!(b.try_request().unwrap_err(), Overflow::Requests);
        assert_eq!(b.overflows(Overflow::Requests), 1);
        drop(one);
        let _three = b.try_request().unwrap();
        assert_eq!(b.requests_active(), 2);
    }

    #[test]
    fn pending_is_bounded_and_zero_means_no_waiting() {
        let b = breaker(Some(1), Some(0), None);
        assert_eq!(b.enter_pending().unwrap_err(), Overflow::Pending);
        let b = breaker(Some(1), Some(1), None);
        let g = b.enter_pending().unwrap();
        assert!(b.has_waiters());
        assert!(b.enter_pending().is_err());
        drop(g);
        assert!(!b.has_waiters());
    }

    #[tokio::test]
    async fn connection_permits_are_counted_and_handed_to_waiters() {
        let b = breaker(Some(1), None, None);
        let first = b.try_connection().unwrap();
        assert!(b.try_connection().is_none());
        assert_eq!(b.connections_open(), 1);
        let waiter = {
            let b = Arc::clone(&b);
            tokio::spawn(async move { b.connection().await.is_some() })
        };
        drop(first);
        assert!(waiter.await.unwrap());
    }

    #[test]
    fn unbounded_breakers_admit_everything() {
        let b = breaker(None, None, None);
        let permits: Vec<_> = (0..1000).map(|_| b.try_request().unwrap()).collect();
        assert_eq!(permits.len(), 1000);
        assert!(!b.limits_connections());
        assert!(b.try_connection().is_none());
    }
}
