//! A route's retry policy and its budget: the token bucket that keeps retries from multiplying
//! an outage (every endpoint failing would otherwise turn each request into `1 + attempts`).

use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sluice_shared::model::{Retries, RetryBudget, RetryOn};

/// `attempts` retries after the first try, on the listed failures, within the budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub on: Vec<RetryOn>,
    /// Each try's own deadline (the route timeout still bounds the whole exchange).
    pub per_try_timeout: Option<Duration>,
    pub budget: RetryBudget,
}

impl RetryPolicy {
    pub fn retries_on(&self, what: RetryOn) -> bool {
        self.on.contains(&what)
    }
}

impl From<&Retries> for RetryPolicy {
    fn from(r: &Retries) -> RetryPolicy {
        RetryPolicy {
            attempts: r.attempts,
            on: r.on.clone(),
            per_try_timeout: r.per_try_timeout_ms.map(Duration::from_millis),
            budget: r.budget.unwrap_or_default(),
        }
    }
}

/// Milli-tokens: one retry costs 1,000.
const RETRY_COST: i64 = 1_000;
/// What is left of the balance after each second: deposits fade out over about ten seconds (as
/// Finagle's and Linkerd's budgets expire them), so a long calm cannot bank an unbounded number
/// of retries for the next storm, while a busy route keeps about 10 s of deposits to absorb a
/// short burst of failures.
const DECAY_PER_S: f64 = 0.9;

/// The live state of one route's budget, kept across revisions with the route's counters.
/// Lock-free: one atomic add per request (plus a decay step once a second), a compare-and-swap
/// per retry.
#[derive(Debug, Default)]
pub struct RetryBucket {
    balance: AtomicI64,
    /// The second (since the process started) the balance was last decayed at.
    decayed_at: AtomicU32,
    /// The second (since the process started) and how many of its `min_per_s` retries were taken:
    /// `second << 32 | taken`.
    floor: AtomicU64,
}

impl RetryBucket {
    /// Each request earns `percent`% of a retry.
    pub fn deposit(&self, budget: &RetryBudget) {
        self.deposit_at(budget, now_second());
    }

    fn deposit_at(&self, budget: &RetryBudget, second: u32) {
        let last = self.decayed_at.load(Ordering::Relaxed);
        if second > last && self.decayed_at.compare_exchange(last, second, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            let factor = DECAY_PER_S.powi((second - last).min(1_000) as i32);
            let _ =
                self.balance.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| Some((b as f64 * factor) as i64));
        }
        let add = i64::from(budget.percent) * RETRY_COST / 100;
        self.balance.fetch_add(add, Ordering::Relaxed);
    }

    /// Takes one retry from the balance, else from this second's `min_per_s`; `false`: the
    /// budget is spent and the failure goes to the client as it is.
    pub fn withdraw(&self, budget: &RetryBudget) -> bool {
        let taken = self
            .balance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| (b >= RETRY_COST).then_some(b - RETRY_COST));
        taken.is_ok() || self.take_floor(budget.min_per_s, now_second())
    }

    fn take_floor(&self, min_per_s: u32, second: u32) -> bool {
        if min_per_s == 0 {
            return false;
        }
        self.floor
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
                let (s, taken) = ((w >> 32) as u32, w as u32);
                match (s == second, taken < min_per_s) {
                    (false, _) => Some(u64::from(second) << 32 | 1),
                    (true, true) => Some(w + 1),
                    (true, false) => None,
                }
            })
            .is_ok()
    }
}

fn now_second() -> u32 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(percent: u32, min_per_s: u32) -> RetryBudget {
        RetryBudget { percent, min_per_s }
    }

    #[test]
    fn retries_are_bounded_by_the_share_of_requests() {
        let b = budget(20, 0);
        let bucket = RetryBucket::default();
        let mut retries = 0;
        for _ in 0..1_000 {
            bucket.deposit(&b);
            // Every request fails and wants three retries.
            for _ in 0..3 {
                if bucket.withdraw(&b) {
                    retries += 1;
                }
            }
        }
        assert_eq!(retries, 200);
    }

    #[test]
    fn deposits_fade_out_over_about_ten_seconds() {
        let b = budget(100, 0);
        let bucket = RetryBucket::default();
        for _ in 0..1_000 {
            bucket.deposit_at(&b, 1);
        }
        // Ten quiet seconds later: 0.9^10 of the balance is left (plus this request's deposit).
        bucket.deposit_at(&b, 11);
        let left = (0..2_000).filter(|_| bucket.withdraw(&b)).count();
        assert!((340..=360).contains(&left), "{left}");
        // A busy route keeps a steady balance of about ten seconds of deposits.
        let bucket = RetryBucket::default();
        for second in 1..=60 {
            for _ in 0..100 {
                bucket.deposit_at(&budget(20, 0), second);
            }
        }
        let banked = (0..2_000).filter(|_| bucket.withdraw(&b)).count();
        assert!((150..=210).contains(&banked), "{banked}");
    }

    #[test]
    fn the_floor_allows_min_per_s_each_second() {
        let bucket = RetryBucket::default();
        assert_eq!((0..10).filter(|_| bucket.take_floor(3, 7)).count(), 3);
        assert_eq!((0..10).filter(|_| bucket.take_floor(3, 8)).count(), 3);
        assert!(!bucket.take_floor(0, 9));
    }
}
