//! A `watch` channel's value as seen from a hand-written poll loop (a TCP splice, an HTTP
//! connection): one atomic load per poll unless the value changed, and never a missed change.
//! Used for a listener's phase and for an endpoint's requests to close its L4 connections.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;
use tokio_stream::Stream;

use crate::flag_waker::FlagWakers;
use crate::listeners::Phase;

pub struct WatchPoll<T> {
    changes: WatchStream<T>,
    /// The waker the change stream is polled with.
    wake: FlagWakers<1>,
    now: T,
    /// What the value reads as once the sender is gone.
    gone: T,
}

/// A listener's phase; a listener that is gone (its sender dropped) is `Abort`.
pub type PhaseWatch = WatchPoll<Phase>;

impl PhaseWatch {
    pub fn of_listener(rx: watch::Receiver<Phase>) -> PhaseWatch {
        WatchPoll::new(rx, Phase::Abort)
    }
}

impl<T: Copy + Send + Sync + 'static> WatchPoll<T> {
    pub fn new(rx: watch::Receiver<T>, gone: T) -> WatchPoll<T> {
        let now = *rx.borrow();
        WatchPoll { changes: WatchStream::from_changes(rx), wake: FlagWakers::default(), now, gone }
    }

    /// The value now, as of the last poll.
    pub fn now(&self) -> T {
        self.now
    }

    /// The value now; the task behind `cx` is woken when it changes. Called on every poll of a
    /// splice or connection: inlined, one check of a flag, the rest out of line.
    #[inline]
    pub fn poll(&mut self, cx: &mut Context<'_>) -> T {
        // The stream is polled only when its own waker fired (a phase change, or a cooperative
        // yield): a wake-up it asked for and was not polled after would leave nothing registered
        // for the next change, and a later `Abort` would never reach this connection.
        let (due, [waker]) = self.wake.take(cx);
        if due != 0 {
            self.now = Self::latest(&mut self.changes, &mut Context::from_waker(waker), self.now, self.gone);
        }
        self.now
    }

    /// The newest value the stream holds (`now` if none came, `gone` once the sender is gone),
    /// polled until it is pending again.
    #[cold]
    fn latest(changes: &mut WatchStream<T>, cx: &mut Context<'_>, mut now: T, gone: T) -> T {
        loop {
            match Pin::new(&mut *changes).poll_next(cx) {
                Poll::Ready(Some(p)) => now = p,
                Poll::Ready(None) => return gone,
                Poll::Pending => return now,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use super::*;

    #[tokio::test]
    async fn sees_every_change_and_a_dropped_sender_as_abort() {
        let (tx, rx) = watch::channel(Phase::Serving);
        let mut watch = PhaseWatch::of_listener(rx);
        assert_eq!(poll_fn(|cx| Poll::Ready(watch.poll(cx))).await, Phase::Serving);
        tx.send(Phase::Draining).unwrap();
        assert_eq!(poll_fn(|cx| Poll::Ready(watch.poll(cx))).await, Phase::Draining);
        // Waits for the next change, woken by it.
        let waiting = tokio::spawn(async move {
            poll_fn(|cx| match watch.poll(cx) {
                Phase::Abort => Poll::Ready(()),
                _ => Poll::Pending,
            })
            .await
        });
        tokio::task::yield_now().await;
        drop(tx);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await.unwrap().unwrap();
    }
}
