//! A route's rate limiter: token buckets by key (a hash of the client IP, a header's value, or
//! one for the route), in shards so that concurrent requests rarely wait on one lock. Bounded:
//! a shard full of keys first forgets those whose bucket has refilled (they are as new).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::HeaderName;
use sluice_shared::rate_limit::{RateLimit, RateLimitKey};

const SHARDS: usize = 16;
/// Keys remembered per shard (about 64k per route in all).
const KEYS_PER_SHARD: usize = 4096;

/// What a request is counted by.
#[derive(Debug, Clone)]
pub enum LimitKey {
    ClientIp,
    Header(HeaderName),
    Route,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug)]
pub struct RateLimiter {
    spec: RateLimit,
    key: LimitKey,
    shards: Box<[Mutex<HashMap<u64, Bucket>>]>,
}

/// A request refused: when the key has a token again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limited {
    pub retry_after: Duration,
}

impl RateLimiter {
    pub fn new(spec: &RateLimit) -> Option<RateLimiter> {
        let key = match spec.key {
            RateLimitKey::ClientIp => LimitKey::ClientIp,
            RateLimitKey::Route => LimitKey::Route,
            RateLimitKey::Header => LimitKey::Header(HeaderName::from_bytes(spec.header.as_ref()?.as_bytes()).ok()?),
        };
        let shards = (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect();
        Some(RateLimiter { spec: spec.clone(), key, shards })
    }

    pub fn spec(&self) -> &RateLimit {
        &self.spec
    }

    pub fn key(&self) -> &LimitKey {
        &self.key
    }

    /// The rate and burst this node enforces: the whole of them, or for a fleet-wide limit its
    /// share among `nodes` (at least one request's worth of burst).
    pub fn local(&self, nodes: u32) -> (f64, f64) {
        let share = if self.spec.fleet { f64::from(nodes.max(1)) } else { 1.0 };
        let rate = f64::from(self.spec.requests_per_s) / share;
        let burst = (f64::from(self.spec.burst()) / share).max(1.0);
        (rate, burst)
    }

    /// Takes a token for `key` at `now`; `Err` when its bucket is empty.
    pub fn check(&self, key: u64, now: Instant, nodes: u32) -> Result<(), Limited> {
        let (rate, burst) = self.local(nodes);
        let shard = &self.shards[(key as usize) % SHARDS];
        let mut buckets = shard.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= KEYS_PER_SHARD && !buckets.contains_key(&key) {
            buckets.retain(|_, b| refill(*b, now, rate, burst) < burst);
            if buckets.len() >= KEYS_PER_SHARD {
                // Everyone is busy: forget the one that has waited longest.
                if let Some(oldest) = buckets.iter().min_by_key(|(_, b)| b.at).map(|(k, _)| *k) {
                    buckets.remove(&oldest);
                }
            }
        }
        let bucket = buckets.entry(key).or_insert(Bucket { tokens: burst, at: now });
        let tokens = refill(*bucket, now, rate, burst);
        if tokens >= 1.0 {
            *bucket = Bucket { tokens: tokens - 1.0, at: now };
            return Ok(());
        }
        *bucket = Bucket { tokens, at: now };
        Err(Limited { retry_after: Duration::from_secs_f64((1.0 - tokens) / rate) })
    }
}

fn refill(b: Bucket, now: Instant, rate: f64, burst: f64) -> f64 {
    let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
    (b.tokens + elapsed * rate).min(burst)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(json: &str) -> RateLimiter {
        RateLimiter::new(&serde_json::from_str(json).unwrap()).unwrap()
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let l = limiter(r#"{"requests_per_s":10,"burst":3}"#);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.check(1, t0, 1).is_ok());
        }
        let refused = l.check(1, t0, 1).unwrap_err();
        assert!((refused.retry_after.as_secs_f64() - 0.1).abs() < 1e-6, "{refused:?}");
        assert!(l.check(2, t0, 1).is_ok(), "another key has its own bucket");
        assert!(l.check(1, t0 + Duration::from_millis(100), 1).is_ok(), "one token per 100 ms");
        assert!(l.check(1, t0 + Duration::from_millis(100), 1).is_err());
        // Quiet for long: back to the burst, not more.
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..5).filter(|_| l.check(1, later, 1).is_ok()).count(), 3);
    }

    #[test]
    fn over_a_second_a_key_gets_the_rate() {
        let l = limiter(r#"{"requests_per_s":50}"#);
        let t0 = Instant::now();
        let allowed = (0..1000).filter(|i| l.check(7, t0 + Duration::from_millis(*i), 1).is_ok()).count();
        // The burst (50) plus 50 per second over the second.
        assert!((98..=101).contains(&allowed), "{allowed}");
    }

    #[test]
    fn a_fleet_limit_is_shared_among_the_nodes() {
        let l = limiter(r#"{"requests_per_s":100,"burst":10,"fleet":true}"#);
        assert_eq!(l.local(4), (25.0, 2.5));
        assert_eq!(l.local(0), (100.0, 10.0));
        assert_eq!(l.local(100), (1.0, 1.0), "at least one request of burst");
        let node = limiter(r#"{"requests_per_s":100}"#);
        assert_eq!(node.local(4), (100.0, 100.0));
    }

    #[test]
    fn keys_are_bounded() {
        let l = limiter(r#"{"requests_per_s":1,"burst":1}"#);
        let t0 = Instant::now();
        for k in 0..(SHARDS * KEYS_PER_SHARD + 4 * SHARDS) as u64 {
            let _ = l.check(k, t0, 1);
        }
        let kept: usize = l.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(kept <= SHARDS * KEYS_PER_SHARD, "{kept}");
    }
}
