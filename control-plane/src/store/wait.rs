//! Waiting for the database at start. A control plane often starts before its Postgres is up (a
//! host booting, containers started together): a refused connection, a server still starting or
//! a database not created yet are waited for, with jittered exponential backoff, up to a bound.
//! What waiting cannot fix (a malformed URL, a refused login) fails at once.

use std::future::Future;
use std::time::{Duration, Instant};

use super::StoreError;

const FIRST_DELAY: Duration = Duration::from_millis(200);
const MAX_DELAY: Duration = Duration::from_secs(5);
/// One connection attempt may not hang on a server that takes the TCP connection and says nothing.
pub(super) const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Exponential backoff (200 ms doubling to 5 s), each delay jittered into `[d/2, d]` so that
/// replicas started together do not knock in step.
#[derive(Debug)]
pub(super) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub(super) fn new() -> Backoff {
        Backoff { next: FIRST_DELAY }
    }

    /// The next delay; `jitter` in `[0, 1]` picks where in `[d/2, d]` it falls.
    pub(super) fn next_delay(&mut self, jitter: f64) -> Duration {
        let d = self.next;
        self.next = (d * 2).min(MAX_DELAY);
        let half = d / 2;
        half + half.mul_f64(jitter.clamp(0.0, 1.0))
    }
}

/// Whether waiting may fix this error: the server is not up (refused, unreachable, name not
/// resolvable yet), is starting or stopping, is full, or the database does not exist yet.
pub(super) fn retryable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exception; 3D000: invalid_catalog_name (no such database);
            // 53300: too_many_connections; 57P01-57P03: admin/crash shutdown, cannot_connect_now.
            code.starts_with("08") || matches!(code.as_ref(), "3D000" | "53300" | "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    }
}

/// How one attempt failed.
pub(super) enum Failed {
    /// Waiting may help; the text says why it failed.
    Retry(String),
    /// Waiting cannot help.
    Fatal(String),
}

impl From<sqlx::Error> for Failed {
    fn from(e: sqlx::Error) -> Failed {
        if retryable(&e) {
            Failed::Retry(e.to_string())
        } else {
            Failed::Fatal(e.to_string())
        }
    }
}

/// Runs `attempt` until it succeeds, fails for good, or `wait` has passed (zero: one attempt).
/// Every failed attempt is logged once, with its reason.
pub(super) async fn until_up<T, F, Fut>(what: &str, wait: Duration, mut attempt: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Failed>>,
{
    let started = Instant::now();
    let deadline = started + wait;
    let mut backoff = Backoff::new();
    for n in 1u32.. {
        let reason = match attempt().await {
            Ok(v) => {
                if n > 1 {
                    tracing::info!(attempts = n, waited_ms = started.elapsed().as_millis() as u64, "{what} is up");
                }
                return Ok(v);
            }
            Err(Failed::Fatal(reason)) => {
                return Err(StoreError::Unavailable(format!("cannot use {what}: {reason} (not retried)")));
            }
            Err(Failed::Retry(reason)) => reason,
        };
        // The last delay is cut short so that one attempt comes at the end of the wait.
        let delay = backoff.next_delay(rand::random::<f64>()).min(deadline.saturating_duration_since(Instant::now()));
        if delay.is_zero() {
            return Err(StoreError::Unavailable(format!(
                "{what} is not available: {reason} (gave up after {n} attempt{} in {:.1} s)",
                if n == 1 { "" } else { "s" },
                started.elapsed().as_secs_f64()
            )));
        }
        tracing::warn!(
            attempt = n,
            retry_in_ms = delay.as_millis() as u64,
            error = %reason,
            "{what} is not available yet; retrying"
        );
        tokio::time::sleep(delay).await;
    }
    unreachable!("the attempt counter does not run out")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn backoff_doubles_from_200_ms_to_5_s_with_jitter_in_the_upper_half() {
        let mut top = Backoff::new();
        let schedule: Vec<u128> = (0..8).map(|_| top.next_delay(1.0).as_millis()).collect();
        assert_eq!(schedule, [200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        let mut bottom = Backoff::new();
        let low: Vec<u128> = (0..7).map(|_| bottom.next_delay(0.0).as_millis()).collect();
        assert_eq!(low, [100, 200, 400, 800, 1600, 2500, 2500]);
        let mut any = Backoff::new();
        for _ in 0..20 {
            let cap = any.next;
            let d = any.next_delay(rand::random::<f64>());
            assert!(d >= cap / 2 && d <= cap, "{d:?} outside [{:?}, {cap:?}]", cap / 2);
        }
    }

    #[test]
    fn only_errors_that_time_can_fix_are_retried() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(retryable(&sqlx::Error::Io(refused)));
        assert!(retryable(&sqlx::Error::PoolTimedOut));
        assert!(!retryable(&sqlx::Error::Configuration("bad url".into())));
        assert!(!retryable(&sqlx::Error::Protocol("nonsense".into())));
    }

    #[tokio::test]
    async fn retries_until_up_and_stops_at_a_fatal_error() {
        let calls = AtomicU32::new(0);
        let v = until_up("the test database", Duration::from_secs(30), || async {
            match calls.fetch_add(1, Ordering::Relaxed) {
                0 | 1 => Err(Failed::Retry("refused".into())),
                _ => Ok(7),
            }
        })
        .await;
        assert_eq!((v.unwrap(), calls.load(Ordering::Relaxed)), (7, 3));

        let calls = AtomicU32::new(0);
        let e = until_up("the test database", Duration::from_secs(30), || async {
            calls.fetch_add(1, Ordering::Relaxed);
            Err::<(), _>(Failed::Fatal("password authentication failed".into()))
        })
        .await
        .unwrap_err();
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        assert!(e.to_string().contains("password authentication failed (not retried)"), "{e}");
    }

    #[tokio::test]
    async fn the_wait_is_bounded() {
        let calls = AtomicU32::new(0);
        let e = until_up("the test database", Duration::ZERO, || async {
            calls.fetch_add(1, Ordering::Relaxed);
            Err::<(), _>(Failed::Retry("connection refused".into()))
        })
        .await
        .unwrap_err();
        assert_eq!(calls.load(Ordering::Relaxed), 1, "zero: fail at once");
        assert!(e.to_string().contains("connection refused (gave up after 1 attempt in"), "{e}");

        let started = Instant::now();
        let calls = AtomicU32::new(0);
        until_up("the test database", Duration::from_millis(700), || async {
            calls.fetch_add(1, Ordering::Relaxed);
            Err::<(), _>(Failed::Retry("connection refused".into()))
        })
        .await
        .unwrap_err();
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(700), "the last attempt comes at the end: {waited:?}");
        assert!(waited < Duration::from_millis(1500), "never sleeps past the bound: {waited:?}");
        assert!((3..=5).contains(&calls.load(Ordering::Relaxed)), "{} attempts", calls.load(Ordering::Relaxed));
    }
}
