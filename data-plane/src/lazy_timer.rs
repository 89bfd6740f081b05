//! One timer for a run of deadlines that mostly move later (one per request on a connection).
//!
//! A `tokio::time::timeout` per request registers a timer in the runtime's wheel and removes it
//! again (about 900 instructions a request, callgrind). This one stays registered: a new deadline
//! later than the armed one costs a comparison, and the timer is re-armed only when it fires
//! before the deadline of the moment (once per timeout period at most) or the deadline moves
//! earlier (a per-try timeout shorter than the last deadline).

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::time::{Instant, Sleep};

#[derive(Default)]
pub struct LazyTimer {
    sleep: Option<Pin<Box<Sleep>>>,
}

impl LazyTimer {
    /// Whether `deadline` has passed; if not, the task behind `cx` is woken at (or a little
    /// before, then polled again) `deadline`.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>, deadline: Instant) -> bool {
        let sleep = self.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.deadline() > deadline {
            sleep.as_mut().reset(deadline);
        }
        while sleep.as_mut().poll(cx).is_ready() {
            if Instant::now() >= deadline {
                return true;
            }
            sleep.as_mut().reset(deadline);
        }
        false
    }

    /// `fut`'s output, or `None` if `deadline` passes first. `fut` is pinned by the caller: taken
    /// by value, a future would be held twice in this one's state, and moved once more.
    pub async fn within<F: Future>(&mut self, deadline: Instant, mut fut: Pin<&mut F>) -> Option<F::Output> {
        poll_fn(|cx| {
            if let Poll::Ready(out) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(out));
            }
            if self.poll_expired(cx, deadline) {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn deadlines_later_or_earlier_than_the_armed_one() {
        let mut timer = LazyTimer::default();
        let start = Instant::now();
        // Finishes in time: the output.
        let out = timer.within(start + Duration::from_secs(15), std::pin::pin!(async { 7 })).await;
        assert_eq!(out, Some(7));
        // A later deadline: the timer armed for 15 s fires early and is re-armed, not expired.
        let later = start + Duration::from_secs(40);
        let waited = timer.within(later, std::pin::pin!(tokio::time::sleep(Duration::from_secs(30)))).await;
        assert_eq!(waited, Some(()));
        assert!(Instant::now() >= start + Duration::from_secs(30));
        // An earlier deadline than the armed one (40 s): it still fires on time.
        let now = Instant::now();
        let cut = timer.within(now + Duration::from_secs(1), std::pin::pin!(std::future::pending::<()>())).await;
        assert_eq!(cut, None);
        assert_eq!(Instant::now(), now + Duration::from_secs(1));
    }
}
