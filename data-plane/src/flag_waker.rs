//! Wakers that note which of them fired before waking their task. A hand-written poll loop that
//! owns several event sources (a splice's two directions, a listener's phase) polls each source
//! with a waker of its own, and then only the sources whose waker fired: the others still hold
//! theirs wherever they wait, so skipping them misses nothing and saves a readiness check and a
//! re-registration each.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Wake, Waker};

/// The wakers of `N` sources (at most 8) of one task.
pub struct FlagWakers<const N: usize> {
    /// `None` until the first poll.
    inner: Option<Inner<N>>,
}

struct Inner<const N: usize> {
    /// The task's waker, compared with the one each poll comes with.
    task: Waker,
    fired: Arc<Fired>,
    /// Source `i`'s waker sets bit `i` of `fired`.
    wakers: [Waker; N],
}

/// Which sources fired since the last [`FlagWakers::take`], and the task they wake.
struct Fired {
    bits: AtomicU8,
    task: Waker,
}

impl<const N: usize> Default for FlagWakers<N> {
    fn default() -> Self {
        FlagWakers { inner: None }
    }
}

impl<const N: usize> FlagWakers<N> {
    const ALL: u8 = ((1u16 << N) - 1) as u8;

    /// The sources to poll now (bit `i`: source `i`), and their wakers. A source is due when its
    /// waker fired since the last call, and every source is on the first call or when the task's
    /// waker changed: then nothing of theirs is registered with a waker that reaches the task.
    #[inline]
    pub fn take(&mut self, cx: &Context<'_>) -> (u8, &[Waker; N]) {
        const { assert!(N <= 8) };
        if !matches!(&self.inner, Some(i) if i.task.will_wake(cx.waker())) {
            self.inner = None;
        }
        let fresh = self.inner.is_none();
        let i = self.inner.get_or_insert_with(|| Inner::new(cx.waker()));
        let due = match fresh {
            true => Self::ALL,
            // A plain load first: a poll where no source fired costs no atomic write.
            false => match i.fired.bits.load(Ordering::Acquire) {
                0 => 0,
                _ => i.fired.bits.swap(0, Ordering::AcqRel),
            },
        };
        (due, &i.wakers)
    }
}

impl<const N: usize> Inner<N> {
    fn new(task: &Waker) -> Inner<N> {
        let fired = Arc::new(Fired { bits: AtomicU8::new(0), task: task.clone() });
        let wakers = std::array::from_fn(|i| Waker::from(Arc::new(Source { fired: fired.clone(), bit: 1 << i })));
        Inner { task: task.clone(), fired, wakers }
    }
}

/// One source's waker.
struct Source {
    fired: Arc<Fired>,
    bit: u8,
}

impl Wake for Source {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.bits.fetch_or(self.bit, Ordering::Release);
        self.fired.task.wake_by_ref();
    }
}

#[cfg(test)]
mod tests {
    use std::task::Poll;

    use super::*;

    #[tokio::test]
    async fn due_first_then_only_after_firing() {
        let mut flags = FlagWakers::<2>::default();
        std::future::poll_fn(|cx| {
            let (due, wakers) = flags.take(cx);
            assert_eq!(due, 0b11, "the first call");
            let [a, b] = wakers.clone();
            assert_eq!(flags.take(cx).0, 0, "none fired");
            b.wake_by_ref();
            assert_eq!(flags.take(cx).0, 0b10, "the second fired");
            assert_eq!(flags.take(cx).0, 0, "the firing was taken");
            a.wake();
            b.wake();
            assert_eq!(flags.take(cx).0, 0b11, "both fired, by value");
            Poll::Ready(())
        })
        .await;
        // Another task (another waker): all due again, with new wakers.
        let mut flags = tokio::spawn(async move {
            std::future::poll_fn(|cx| {
                assert_eq!(flags.take(cx).0, 0b11, "a new task");
                Poll::Ready(())
            })
            .await;
            flags
        })
        .await
        .unwrap();
        std::future::poll_fn(|cx| {
            assert_eq!(flags.take(cx).0, 0b11, "back on this task");
            Poll::Ready(())
        })
        .await;
    }
}
