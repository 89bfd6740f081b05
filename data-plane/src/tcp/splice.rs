//! The byte pump of an L4 connection: both directions in one hand-written poll loop, with
//! half-close, reset passing, idle timeout, the listener's drain, and byte counters.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::engine::Engine;
use super::meter::Meter;
use crate::access_log::L4Entry;
use crate::flag_waker::FlagWakers;
use crate::l4_stats::L4Stats;
use crate::listeners::Phase;
use crate::phase_watch::{PhaseWatch, WatchPoll};

/// Per direction, in the task and on the engine.
pub(super) const BUFFER: usize = 32 * 1024;

/// Reads (both directions together) after which a connection moves from its task to the thread's
/// [`Engine`], at the first moment both directions are idle. Handing over costs about as much as
/// five request/response exchanges save on the engine (four `epoll_ctl` calls and two
/// cross-thread messages), so a connection that closes after a few exchanges never pays it.
const HAND_OVER_AFTER: u32 = 32;

/// Copies both ways until both directions ended, either side failed, the connection was idle for
/// `idle`, the listener's drain ran out (`Phase::Abort`), or `closing` changed (the endpoint's
/// health changed, with `close_connections_on_health_change`).
///
/// A connection starts in its own task ([`copy_both_ways`]); one that goes on past
/// [`HAND_OVER_AFTER`] reads moves to the thread's [`Engine`], whose event loop moves each
/// request's bytes for about a quarter of the user-space instructions (docs/BENCHMARKS.md,
/// session 17). The task then only watches the drain and the endpoint's health.
pub async fn splice(
    client: TcpStream,
    upstream: TcpStream,
    idle: Option<Duration>,
    stats: &Arc<L4Stats>,
    phase: watch::Receiver<Phase>,
    closing: Option<watch::Receiver<u64>>,
) -> Spliced {
    let engine = Engine::current().map(|e| (e, HAND_OVER_AFTER));
    splice_handing_over(client, upstream, idle, stats, phase, closing, engine).await
}

/// [`splice`], handing over to `engine` after its count of reads (never without one).
async fn splice_handing_over(
    mut client: TcpStream,
    mut upstream: TcpStream,
    idle: Option<Duration>,
    stats: &Arc<L4Stats>,
    phase: watch::Receiver<Phase>,
    closing: Option<watch::Receiver<u64>>,
    engine: Option<(Engine, u32)>,
) -> Spliced {
    let mut watches = match Watches::new(phase, closing, stats) {
        Ok(w) => w,
        Err(end) => return Spliced { end, received: 0, sent: 0 },
    };
    let hand_over = engine.as_ref().map(|(_, after)| *after);
    let (stop, received, sent) = {
        let (cr, cw) = client.split();
        let (ur, uw) = upstream.split();
        copy_both_ways((cr, cw), (ur, uw), Wakers::PerDirection, idle, stats, &mut watches, hand_over).await
    };
    let end = match (stop, engine) {
        (Stop::HandOver, Some((engine, _))) => {
            let mut s = on_engine(&engine, client, upstream, idle, stats, &mut watches).await;
            (s.received, s.sent) = (s.received + received, s.sent + sent);
            return s;
        }
        (Stop::HandOver, None) => unreachable!("no hand-over without an engine"),
        (Stop::End(end), _) => end,
    };
    if let End::Failed(e) = &end {
        tracing::debug!(error = %e, "tcp proxy ended with an error");
        pass_reset_on(e, &[&client, &upstream]);
    }
    Spliced { end, received, sent }
}

/// The rest of [`splice`] on the thread's [`Engine`]: the engine moves the bytes, this task ends
/// the connection when the listener's drain runs out or the endpoint's health changes.
async fn on_engine(
    engine: &Engine,
    client: TcpStream,
    upstream: TcpStream,
    idle: Option<Duration>,
    stats: &Arc<L4Stats>,
    watches: &mut Watches<'_>,
) -> Spliced {
    // Out of this thread's tokio driver, into the engine's epoll.
    let (client, upstream) = match (client.into_std(), upstream.into_std()) {
        (Ok(c), Ok(u)) => (c, u),
        (Err(e), _) | (_, Err(e)) => return Spliced { end: End::Failed(e), received: 0, sent: 0 },
    };
    let mut running = engine.splice(client, upstream, idle, stats.clone());
    let ended = std::future::poll_fn(|cx| {
        if let Poll::Ready(spliced) = running.poll_ended(cx) {
            return Poll::Ready(Ok(spliced));
        }
        match watches.poll(cx) {
            Some(end) => Poll::Ready(Err(end)),
            None => Poll::Pending,
        }
    })
    .await;
    let spliced = match ended {
        Ok(spliced) => spliced,
        Err(end) => {
            running.close(end);
            std::future::poll_fn(|cx| running.poll_ended(cx)).await
        }
    };
    match &spliced.end {
        End::IdleTimeout => tracing::debug!("idle timeout, closing"),
        End::Failed(e) => tracing::debug!(error = %e, "tcp proxy ended with an error"),
        _ => {}
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
    closing: Option<watch::Receiver<u64>>,
) -> Spliced {
    let mut watches = match Watches::new(phase, closing, stats) {
        Ok(w) => w,
        Err(end) => return Spliced { end, received: 0, sent: 0 },
    };
    let (ur, uw) = tokio::io::split(upstream);
    let (stop, received, sent) = {
        let (cr, cw) = client.split();
        // One TLS stream behind both halves: its two directions may register with one socket's
        // slot, which keeps only the last waker, so both are polled on every wake-up.
        copy_both_ways((cr, cw), (ur, uw), Wakers::Task, idle, stats, &mut watches, None).await
    };
    let end = match stop {
        Stop::End(end) => end,
        Stop::HandOver => unreachable!("no hand-over was asked for"),
    };
    if let End::Failed(e) = &end {
        tracing::debug!(error = %e, "tcp proxy (upstream TLS) ended with an error");
        pass_reset_on(e, &[&client]);
    }
    Spliced { end, received, sent }
}

/// What ends a splice from outside: the listener's drain running out, the endpoint's health.
struct Watches<'a> {
    phase: PhaseWatch,
    /// The health version when the connection was made, and its changes.
    closing: Option<(u64, WatchPoll<u64>)>,
    stats: &'a L4Stats,
}

impl<'a> Watches<'a> {
    /// `Err` when the endpoint's health changed while the connection was being made (`closing`
    /// was taken before the connect): it ends before a byte moves.
    fn new(
        phase: watch::Receiver<Phase>,
        closing: Option<watch::Receiver<u64>>,
        stats: &'a L4Stats,
    ) -> Result<Watches<'a>, End> {
        let closing = match closing {
            Some(rx) if rx.has_changed().unwrap_or(false) => {
                stats.health_closes.fetch_add(1, Ordering::Relaxed);
                return Err(End::HealthChange);
            }
            Some(rx) => {
                let now = *rx.borrow();
                Some((now, WatchPoll::new(rx, now)))
            }
            None => None,
        };
        Ok(Watches { phase: PhaseWatch::of_listener(phase), closing, stats })
    }

    /// How the connection is to end, if it is; the task is woken when that changes.
    /// Draining leaves established connections alone; only abort (or a gone listener) cuts.
    #[inline]
    fn poll(&mut self, cx: &mut Context<'_>) -> Option<End> {
        if self.phase.poll(cx) == Phase::Abort {
            return Some(End::Aborted);
        }
        if let Some((opened_at, closing)) = &mut self.closing {
            if closing.poll(cx) != *opened_at {
                self.stats.health_closes.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("endpoint health changed, closing");
                return Some(End::HealthChange);
            }
        }
        None
    }
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
    /// The endpoint's health changed (`close_connections_on_health_change`).
    HealthChange,
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
            End::HealthChange => "health_change",
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

/// Which waker each direction is polled with.
#[derive(Clone, Copy)]
enum Wakers {
    /// One of [`FlagWakers`] each, and a direction is polled only when its own fired. Only for
    /// halves whose directions never share a waker slot (plain sockets: one reads the client and
    /// writes the endpoint, the other the reverse).
    PerDirection,
    /// The task's: both directions on every wake-up.
    Task,
}

/// Polls one direction if it is `due`, with its own `waker` if it has one. Not due: `Pending`, its
/// waker is still registered wherever the direction waits.
fn poll_direction(
    due: bool,
    waker: Option<&Waker>,
    cx: &mut Context<'_>,
    copy: impl FnOnce(&mut Context<'_>) -> Poll<io::Result<()>>,
) -> Poll<io::Result<()>> {
    match (due, waker) {
        (false, _) => Poll::Pending,
        (true, Some(waker)) => copy(&mut Context::from_waker(waker)),
        (true, None) => copy(cx),
    }
}

/// Where [`copy_both_ways`] stopped.
enum Stop {
    End(End),
    /// Past the reads it was given, with nothing in flight: the engine takes the connection on.
    HandOver,
}

/// The loop of [`splice`] over any two (read, write) halves; gives the bytes moved each way.
async fn copy_both_ways<CR, CW, UR, UW>(
    (mut cr, mut cw): (CR, CW),
    (mut ur, mut uw): (UR, UW),
    wakers: Wakers,
    idle: Option<Duration>,
    stats: &L4Stats,
    watches: &mut Watches<'_>,
    hand_over_after: Option<u32>,
) -> (Stop, u64, u64)
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    UR: AsyncRead + Unpin,
    UW: AsyncWrite + Unpin,
{
    let mut to_upstream = Pump::new(&stats.bytes_from_clients);
    let mut to_client = Pump::new(&stats.bytes_to_clients);
    let mut direction_wakers = FlagWakers::<2>::default();
    // Idle: the time of the last byte moved, read against one timer.
    let mut last_activity = idle.map(|_| Instant::now());
    let mut idle_timer = idle.map(|d| (d, Box::pin(tokio::time::sleep(d))));
    let stop = std::future::poll_fn(|cx| {
        if let Some(end) = watches.poll(cx) {
            return Poll::Ready(Stop::End(end));
        }
        let (due, own) = match wakers {
            Wakers::PerDirection => {
                let (due, own) = direction_wakers.take(cx);
                (due, Some(own))
            }
            Wakers::Task => (0b11, None),
        };
        // The first error ends both directions: both sockets are then closed by the caller.
        let up = poll_direction(due & 1 != 0, own.map(|w| &w[0]), cx, |cx| {
            to_upstream.poll_copy(cx, &mut cr, &mut uw, &mut last_activity)
        });
        if let Poll::Ready(Err(e)) = up {
            return Poll::Ready(Stop::End(End::Failed(e)));
        }
        let down = poll_direction(due & 2 != 0, own.map(|w| &w[1]), cx, |cx| {
            to_client.poll_copy(cx, &mut ur, &mut cw, &mut last_activity)
        });
        if let Poll::Ready(Err(e)) = down {
            return Poll::Ready(Stop::End(End::Failed(e)));
        }
        if to_upstream.done && to_client.done {
            return Poll::Ready(Stop::End(End::Closed));
        }
        if let Some(after) = hand_over_after {
            if to_upstream.reads + to_client.reads >= after && to_upstream.idle() && to_client.idle() {
                return Poll::Ready(Stop::HandOver);
            }
        }
        if let (Some((idle, timer)), Some(last)) = (&mut idle_timer, last_activity) {
            while timer.as_mut().poll(cx).is_ready() {
                let deadline = last + *idle;
                if Instant::now() >= deadline {
                    stats.idle_timeouts.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("idle timeout, closing");
                    return Poll::Ready(Stop::End(End::IdleTimeout));
                }
                timer.as_mut().reset(deadline);
            }
        }
        Poll::Pending
    })
    .await;
    (stop, to_upstream.bytes.total, to_client.bytes.total)
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
    /// Reads that gave bytes.
    reads: u32,
    bytes: Meter,
    /// The listener's counter for this direction.
    shared: &'a AtomicU64,
}

impl<'a> Pump<'a> {
    fn new(shared: &'a AtomicU64) -> Pump<'a> {
        Pump {
            buf: vec![0u8; BUFFER].into_boxed_slice(),
            pos: 0,
            len: 0,
            eof: false,
            done: false,
            unflushed: false,
            reads: 0,
            bytes: Meter::default(),
            shared,
        }
    }

    /// Nothing read and not yet written, and the stream goes on.
    fn idle(&self) -> bool {
        self.pos == self.len && !self.eof && !self.unflushed
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
                self.bytes.add(self.len, self.shared);
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
                n => {
                    self.len = n;
                    self.reads = self.reads.saturating_add(1);
                }
            }
        }
    }
}

impl Drop for Pump<'_> {
    /// However the copy ends, its bytes reach the listener's counter.
    fn drop(&mut self) {
        self.bytes.flush(self.shared);
    }
}

#[cfg(test)]
#[path = "tests_splice.rs"]
mod tests;
