//! A listener's phase as seen from a hand-written poll loop (a TCP splice, an HTTP connection):
//! one atomic load per poll unless the phase changed, and never a missed change.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;
use tokio_stream::Stream;

use crate::flag_waker::FlagWakers;
use crate::listeners::Phase;

pub struct PhaseWatch {
    changes: WatchStream<Phase>,
    /// The waker the change stream is polled with.
    wake: FlagWakers<1>,
    now: Phase,
}

impl PhaseWatch {
    pub fn new(rx: watch::Receiver<Phase>) -> PhaseWatch {
        let now = *rx.borrow();
        PhaseWatch { changes: WatchStream::from_changes(rx), wake: FlagWakers::default(), now }
    }

    /// The phase now, as of the last poll.
    pub fn now(&self) -> Phase {
        self.now
    }

    /// The phase now; the task behind `cx` is woken when it changes. A listener that is gone
    /// (its sender dropped) is `Abort`.
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Phase {
        // The stream is polled only when its own waker fired (a phase change, or a cooperative
        // yield): a wake-up it asked for and was not polled after would leave nothing registered
        // for the next change, and a later `Abort` would never reach this connection.
        let (due, [waker]) = self.wake.take(cx);
        if due != 0 {
            let mut cx = Context::from_waker(waker);
            loop {
                match Pin::new(&mut self.changes).poll_next(&mut cx) {
                    Poll::Ready(Some(p)) => self.now = p,
                    Poll::Ready(None) => {
                        self.now = Phase::Abort;
                        break;
                    }
                    Poll::Pending => break,
                }
            }
        }
        self.now
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use super::*;

    #[tokio::test]
    async fn sees_every_change_and_a_dropped_sender_as_abort() {
        let (tx, rx) = watch::channel(Phase::Serving);
        let mut watch = PhaseWatch::new(rx);
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
