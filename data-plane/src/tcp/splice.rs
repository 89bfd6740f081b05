//! The byte pump of an L4 connection: both directions in one hand-written poll loop, with
//! half-close, reset passing, idle timeout, the listener's drain, and byte counters.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::access_log::L4Entry;
use crate::l4_stats::L4Stats;
use crate::listeners::Phase;
use crate::phase_watch::PhaseWatch;

const BUFFER: usize = 32 * 1024;

/// Copies both ways until both directions ended, either side failed, the connection was idle for
/// `idle`, or the listener's drain ran out (`Phase::Abort`).
///
/// One hand-written poll loop instead of `select!` over `try_join!` of two copy futures: a wake-up
/// costs one read (and one write) per direction with data and nothing else; the phase's change
/// stream is only polled when its own waker fired (one atomic swap otherwise, see [`PhaseWatch`])
/// and the idle timeout is one timer per connection, re-armed only when it fires before the real
/// deadline.
pub async fn splice(
    mut client: TcpStream,
    mut upstream: TcpStream,
    idle: Option<Duration>,
    stats: &L4Stats,
    phase: watch::Receiver<Phase>,
) -> Spliced {
    let spliced = {
        let (cr, cw) = client.split();
        let (ur, uw) = upstream.split();
        copy_both_ways((cr, cw), (ur, uw), idle, stats, phase).await
    };
    if let End::Failed(e) = &spliced.end {
        tracing::debug!(error = %e, "tcp proxy ended with an error");
        pass_reset_on(e, &[&client, &upstream]);
    }
    spliced
}

/// [`splice`] to an endpoint reached over TLS (a tcp listener whose cluster has `tls`).
pub(super) async fn splice_tls(
    mut client: TcpStream,
    upstream: tokio_rustls::client::TlsStream<TcpStream>,
    idle: Option<Duration>,
    stats: &L4Stats,
    phase: watch::Receiver<Phase>,
) -> Spliced {
    let (ur, uw) = tokio::io::split(upstream);
    let spliced = {
        let (cr, cw) = client.split();
        copy_both_ways((cr, cw), (ur, uw), idle, stats, phase).await
    };
    if let End::Failed(e) = &spliced.end {
        tracing::debug!(error = %e, "tcp proxy (upstream TLS) ended with an error");
        pass_reset_on(e, &[&client]);
    }
    spliced
}

/// How a splice ended, and the bytes it moved.
pub struct Spliced {
    pub end: End,
    /// From the client to the endpoint.
    pub received: u64,
    /// From the endpoint to the client.
    pub sent: u64,
}

pub enum End {
    /// Both directions ended (FIN each way).
    Closed,
    IdleTimeout,
    /// The listener's drain ran out, or the listener is gone.
    Aborted,
    /// A read or write failed (a reset, most often): both sides were closed.
    Failed(io::Error),
}

impl Spliced {
    pub fn log_to(&self, log: &mut L4Entry<'_>) {
        log.bytes(self.received, self.sent);
        log.end(match &self.end {
            End::Closed => "closed",
            End::IdleTimeout => "idle_timeout",
            End::Aborted => "drain_aborted",
            End::Failed(e) if e.kind() == io::ErrorKind::ConnectionReset => "reset",
            End::Failed(_) => "error",
        });
    }
}

/// A reset on one side becomes a reset on the other, rather than a clean end of stream: the
/// `sockets` close with RST.
fn pass_reset_on(e: &io::Error, sockets: &[&TcpStream]) {
    if e.kind() == io::ErrorKind::ConnectionReset {
        for s in sockets {
            let _ = socket2::SockRef::from(*s).set_linger(Some(Duration::ZERO));
        }
    }
}

/// The loop of [`splice`] over any two (read, write) halves.
async fn copy_both_ways<CR, CW, UR, UW>(
    (mut cr, mut cw): (CR, CW),
    (mut ur, mut uw): (UR, UW),
    idle: Option<Duration>,
    stats: &L4Stats,
    phase: watch::Receiver<Phase>,
) -> Spliced
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    UR: AsyncRead + Unpin,
    UW: AsyncWrite + Unpin,
{
    let mut to_upstream = Pump::new(&stats.bytes_from_clients);
    let mut to_client = Pump::new(&stats.bytes_to_clients);
    // Draining leaves established connections alone; only abort (or a gone listener) cuts.
    let mut phase = PhaseWatch::new(phase);
    // Idle: the time of the last byte moved, read against one timer.
    let mut last_activity = idle.map(|_| Instant::now());
    let mut idle_timer = idle.map(|d| (d, Box::pin(tokio::time::sleep(d))));
    let end = std::future::poll_fn(|cx| {
        if phase.poll(cx) == Phase::Abort {
            return Poll::Ready(End::Aborted);
        }
        // The first error ends both directions: both sockets are then closed by the caller.
        if let Poll::Ready(Err(e)) = to_upstream.poll_copy(cx, &mut cr, &mut uw, &mut last_activity) {
            return Poll::Ready(End::Failed(e));
        }
        if let Poll::Ready(Err(e)) = to_client.poll_copy(cx, &mut ur, &mut cw, &mut last_activity) {
            return Poll::Ready(End::Failed(e));
        }
        if to_upstream.done && to_client.done {
            return Poll::Ready(End::Closed);
        }
        if let (Some((idle, timer)), Some(last)) = (&mut idle_timer, last_activity) {
            while timer.as_mut().poll(cx).is_ready() {
                let deadline = last + *idle;
                if Instant::now() >= deadline {
                    stats.idle_timeouts.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("idle timeout, closing");
                    return Poll::Ready(End::IdleTimeout);
                }
                timer.as_mut().reset(deadline);
            }
        }
        Poll::Pending
    })
    .await;
    Spliced { end, received: to_upstream.bytes.total, sent: to_client.bytes.total }
}

/// One direction: read until end of stream, then shut the writer's sending side down (FIN).
struct Pump<'a> {
    buf: Box<[u8]>,
    /// `buf[pos..len]` is read and not written yet.
    pos: usize,
    len: usize,
    eof: bool,
    done: bool,
    /// Written since the last flush.
    unflushed: bool,
    bytes: Meter<'a>,
}

impl<'a> Pump<'a> {
    fn new(bytes: &'a AtomicU64) -> Pump<'a> {
        Pump {
            buf: vec![0u8; BUFFER].into_boxed_slice(),
            pos: 0,
            len: 0,
            eof: false,
            done: false,
            unflushed: false,
            bytes: Meter::new(bytes),
        }
    }

    /// Moves bytes until `from` has none (`Pending`), this direction is done (`Ready(Ok)`, also
    /// when it was done before) or failed. `activity` (when kept) gets the time of each write.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut R,
        to: &mut W,
        activity: &mut Option<Instant>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            while self.pos < self.len {
                let n = ready!(Pin::new(&mut *to).poll_write(cx, &self.buf[self.pos..self.len]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                self.unflushed = true;
            }
            if self.len > 0 {
                self.bytes.add(self.len);
                (self.pos, self.len) = (0, 0);
                if let Some(at) = activity {
                    *at = Instant::now();
                }
            }
            if self.eof {
                // The peer may have gone already; its other direction reports that.
                let _ = ready!(Pin::new(&mut *to).poll_shutdown(cx));
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            let mut read = ReadBuf::new(&mut self.buf);
            if Pin::new(&mut *from).poll_read(cx, &mut read)?.is_pending() {
                // Nothing more to read for now: a TLS writer may still hold what was written
                // (a no-op on a plain socket).
                if self.unflushed && Pin::new(&mut *to).poll_flush(cx)?.is_ready() {
                    self.unflushed = false;
                }
                return Poll::Pending;
            }
            match read.filled().len() {
                0 => self.eof = true,
                n => self.len = n,
            }
        }
    }
}

/// Counts one direction's bytes locally and adds them to the listener's shared counter in
/// batches (and when dropped, however the copy ends): one shared cache line touched per
/// `METER_BATCH` bytes instead of per read.
struct Meter<'a> {
    shared: &'a AtomicU64,
    pending: u64,
    /// All this connection's bytes in this direction.
    total: u64,
}

const METER_BATCH: u64 = 256 * 1024;

impl<'a> Meter<'a> {
    fn new(shared: &'a AtomicU64) -> Meter<'a> {
        Meter { shared, pending: 0, total: 0 }
    }

    fn add(&mut self, n: usize) {
        self.pending += n as u64;
        self.total += n as u64;
        if self.pending >= METER_BATCH {
            self.shared.fetch_add(std::mem::take(&mut self.pending), Ordering::Relaxed);
        }
    }
}

impl Drop for Meter<'_> {
    fn drop(&mut self) {
        if self.pending > 0 {
            self.shared.fetch_add(self.pending, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The phase future's wake-ups must never be swallowed: here its first poll finds the task's
    /// budget spent (tokio then wakes the task instead of registering with the channel), so only
    /// polling it again on that wake-up registers it. A loop that skipped it then (no new phase
    /// version, same task waker) never heard of the `Abort` sent while it waited.
    #[tokio::test]
    async fn abort_reaches_a_splice_whose_phase_wakeup_was_a_yield() {
        let (client, _client_peer) = tokio::io::duplex(64);
        let (upstream, _upstream_peer) = tokio::io::duplex(64);
        let (tx, rx) = watch::channel(Phase::Serving);
        let stats = L4Stats::default();
        let splice = copy_both_ways(tokio::io::split(client), tokio::io::split(upstream), None, &stats, rx);
        tokio::pin!(splice);
        std::future::poll_fn(|cx| {
            while let Poll::Ready(p) = tokio::task::coop::poll_proceed(cx) {
                p.made_progress();
            }
            assert!(splice.as_mut().poll(cx).is_pending());
            Poll::Ready(())
        })
        .await;
        // Polled again on that wake-up, with a fresh budget: no byte to move, no new phase.
        tokio::task::yield_now().await;
        std::future::poll_fn(|cx| {
            assert!(splice.as_mut().poll(cx).is_pending());
            Poll::Ready(())
        })
        .await;
        // The listener drains and runs out while this task waits on the splice alone.
        tokio::spawn(async move {
            tx.send(Phase::Draining).unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            tx.send(Phase::Abort).unwrap();
            std::future::pending::<()>().await;
        });
        let ended = tokio::select! {
            biased;
            _ = tokio::time::sleep(Duration::from_secs(2)) => false,
            _ = splice.as_mut() => true,
        };
        assert!(ended, "Abort did not end the splice");
    }
}
