//! The byte pump of an L4 connection: both directions in one hand-written poll loop, with
//! half-close, reset passing, idle timeout, the listener's drain, and byte counters.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::access_log::L4Entry;
use crate::flag_waker::FlagWakers;
use crate::l4_stats::L4Stats;
use crate::listeners::Phase;
use crate::phase_watch::{PhaseWatch, WatchPoll};

const BUFFER: usize = 32 * 1024;

/// Copies both ways until both directions ended, either side failed, the connection was idle for
/// `idle`, the listener's drain ran out (`Phase::Abort`), or `closing` changed (the endpoint's
/// health changed, with `close_connections_on_health_change`).
///
/// One hand-written poll loop instead of `select!` over `try_join!` of two copy futures: a wake-up
/// costs one read (and one write) for the direction that was woken and nothing else. Each
/// direction and the phase's change stream are polled with a waker of their own and only when it
/// fired (one atomic load otherwise, see [`FlagWakers`]); the idle timeout is one timer per
/// connection, re-armed only when it fires before the real deadline.
pub async fn splice(
    mut client: TcpStream,
    mut upstream: TcpStream,
    idle: Option<Duration>,
    stats: &L4Stats,
    phase: watch::Receiver<Phase>,
    closing: Option<watch::Receiver<u64>>,
) -> Spliced {
    let spliced = {
        let (cr, cw) = client.split();
        let (ur, uw) = upstream.split();
        copy_both_ways((cr, cw), (ur, uw), Wakers::PerDirection, idle, stats, phase, closing).await
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
    closing: Option<watch::Receiver<u64>>,
) -> Spliced {
    let (ur, uw) = tokio::io::split(upstream);
    let spliced = {
        let (cr, cw) = client.split();
        // One TLS stream behind both halves: its two directions may register with one socket's
        // slot, which keeps only the last waker, so both are polled on every wake-up.
        copy_both_ways((cr, cw), (ur, uw), Wakers::Task, idle, stats, phase, closing).await
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

/// The loop of [`splice`] over any two (read, write) halves.
async fn copy_both_ways<CR, CW, UR, UW>(
    (mut cr, mut cw): (CR, CW),
    (mut ur, mut uw): (UR, UW),
    wakers: Wakers,
    idle: Option<Duration>,
    stats: &L4Stats,
    phase: watch::Receiver<Phase>,
    closing: Option<watch::Receiver<u64>>,
) -> Spliced
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    UR: AsyncRead + Unpin,
    UW: AsyncWrite + Unpin,
{
    let mut to_upstream = Pump::new(&stats.bytes_from_clients);
    let mut to_client = Pump::new(&stats.bytes_to_clients);
    let mut direction_wakers = FlagWakers::<2>::default();
    // Draining leaves established connections alone; only abort (or a gone listener) cuts.
    let mut phase = PhaseWatch::of_listener(phase);
    let mut closing = match closing {
        // A close requested while the connection was being made (the receiver was taken before
        // the connect): it ends before a byte moves.
        Some(rx) if rx.has_changed().unwrap_or(false) => {
            stats.health_closes.fetch_add(1, Ordering::Relaxed);
            return Spliced { end: End::HealthChange, received: 0, sent: 0 };
        }
        Some(rx) => {
            let now = *rx.borrow();
            Some((now, WatchPoll::new(rx, now)))
        }
        None => None,
    };
    // Idle: the time of the last byte moved, read against one timer.
    let mut last_activity = idle.map(|_| Instant::now());
    let mut idle_timer = idle.map(|d| (d, Box::pin(tokio::time::sleep(d))));
    let end = std::future::poll_fn(|cx| {
        if phase.poll(cx) == Phase::Abort {
            return Poll::Ready(End::Aborted);
        }
        if let Some((opened_at, closing)) = &mut closing {
            if closing.poll(cx) != *opened_at {
                stats.health_closes.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("endpoint health changed, closing");
                return Poll::Ready(End::HealthChange);
            }
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
            return Poll::Ready(End::Failed(e));
        }
        let down = poll_direction(due & 2 != 0, own.map(|w| &w[1]), cx, |cx| {
            to_client.poll_copy(cx, &mut ur, &mut cw, &mut last_activity)
        });
        if let Poll::Ready(Err(e)) = down {
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

    /// A close requested while the connection was being made, and one requested while it runs:
    /// both end it, neither is missed.
    #[tokio::test]
    async fn health_closes_end_the_splice_whenever_they_come() {
        let (_phase_tx, phase) = watch::channel(Phase::Serving);
        let stats = L4Stats::default();
        let (closes, _) = watch::channel(0u64);
        // Taken before the connect; the close comes before the splice starts.
        let early = closes.subscribe();
        closes.send_modify(|n| *n += 1);
        let (client, _client_peer) = tokio::io::duplex(64);
        let (upstream, _upstream_peer) = tokio::io::duplex(64);
        let halves = (tokio::io::split(client), tokio::io::split(upstream));
        let splice = copy_both_ways(halves.0, halves.1, Wakers::Task, None, &stats, phase.clone(), Some(early));
        let spliced = tokio::time::timeout(Duration::from_secs(5), splice).await.expect("the early close was missed");
        assert!(matches!(spliced.end, End::HealthChange));
        // Taken now; the close comes while bytes flow.
        let (client, mut client_peer) = tokio::io::duplex(64);
        let (upstream, mut upstream_peer) = tokio::io::duplex(64);
        let running = closes.subscribe();
        let halves = (tokio::io::split(client), tokio::io::split(upstream));
        let splice = copy_both_ways(halves.0, halves.1, Wakers::Task, None, &stats, phase, Some(running));
        let traffic = async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            client_peer.write_all(b"ping").await.unwrap();
            let mut buf = [0u8; 4];
            upstream_peer.read_exact(&mut buf).await.unwrap();
            closes.send_modify(|n| *n += 1);
            std::future::pending::<()>().await
        };
        let spliced = tokio::select! {
            s = splice => s,
            _ = traffic => unreachable!(),
        };
        assert!(matches!(spliced.end, End::HealthChange));
        assert_eq!((spliced.received, stats.health_closes.load(Ordering::Relaxed)), (4, 2));
    }

    /// No source's wake-up may be swallowed: here the first poll finds the task's budget spent
    /// (tokio then wakes the source's waker instead of registering it with the socket or the
    /// channel), so only polling that source again on that wake-up registers it. A loop that
    /// skipped it then (no new phase version, no direction's waker fired as far as it knew) never
    /// heard of the bytes or of the `Abort` sent while it waited. With the task's waker and with a
    /// waker per direction.
    #[tokio::test]
    async fn abort_reaches_a_splice_whose_phase_wakeup_was_a_yield() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        for wakers in [Wakers::Task, Wakers::PerDirection] {
            let (client, mut client_peer) = tokio::io::duplex(64);
            let (upstream, mut upstream_peer) = tokio::io::duplex(64);
            let (tx, rx) = watch::channel(Phase::Serving);
            let stats = L4Stats::default();
            let splice =
                copy_both_ways(tokio::io::split(client), tokio::io::split(upstream), wakers, None, &stats, rx, None);
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
            // While this task waits on the splice alone: a byte each way, then the listener
            // drains and runs out.
            tokio::spawn(async move {
                let mut byte = [0u8];
                client_peer.write_all(b"u").await.unwrap();
                upstream_peer.read_exact(&mut byte).await.unwrap();
                upstream_peer.write_all(b"c").await.unwrap();
                client_peer.read_exact(&mut byte).await.unwrap();
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
            assert!(ended, "bytes or the Abort did not reach the splice");
        }
    }

    /// Two connected sockets on loopback.
    async fn socket_pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let connect = TcpStream::connect(listener.local_addr().unwrap());
        let (connected, accepted) = tokio::join!(connect, listener.accept());
        (connected.unwrap(), accepted.unwrap().0)
    }

    /// Writes `bulk` and reads as many bytes back at once, which must be `bulk`.
    async fn exchange(socket: &mut TcpStream, bulk: &[u8], who: &str) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut rx, mut tx) = socket.split();
        let mut got = vec![0u8; bulk.len()];
        let (sent, read) = tokio::join!(tx.write_all(bulk), rx.read_exact(&mut got));
        sent.unwrap();
        read.unwrap();
        assert!(got == bulk, "bytes to the {who} changed on the way");
    }

    /// Each direction is polled only when its own waker fired: a direction left alone while the
    /// other works must still hear of its next bytes, in ping-pong, in both at once, and at the end.
    #[tokio::test]
    async fn per_direction_wakers_miss_no_wakeup() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, client_side) = socket_pair().await;
        let (upstream_side, mut endpoint) = socket_pair().await;
        let (_tx, rx) = watch::channel(Phase::Serving);
        let stats = std::sync::Arc::new(L4Stats::default());
        let splice = tokio::spawn({
            let stats = stats.clone();
            async move { splice(client_side, upstream_side, None, &stats, rx, None).await.received }
        });
        fn within<F: Future>(f: F) -> tokio::time::Timeout<F> {
            tokio::time::timeout(Duration::from_secs(10), f)
        }
        let mut buf = [0u8; 64];
        within(async {
            // One direction busy while the other waits, then the other way round.
            for i in 0..50u8 {
                client.write_all(&[i; 10]).await.unwrap();
                endpoint.read_exact(&mut buf[..10]).await.unwrap();
                assert_eq!(buf[..10], [i; 10]);
            }
            for i in 0..50u8 {
                endpoint.write_all(&[i; 7]).await.unwrap();
                client.read_exact(&mut buf[..7]).await.unwrap();
                assert_eq!(buf[..7], [i; 7]);
            }
            // Ping-pong, then both ways at once with more than the sockets buffer.
            for i in 0..50u8 {
                client.write_all(&[i]).await.unwrap();
                endpoint.read_exact(&mut buf[..1]).await.unwrap();
                endpoint.write_all(&buf[..1]).await.unwrap();
                client.read_exact(&mut buf[..1]).await.unwrap();
                assert_eq!(buf[0], i);
            }
        })
        .await
        .unwrap();
        let bulk = vec![7u8; 4 << 20];
        let ((), ()) = within(async {
            tokio::join!(exchange(&mut client, &bulk, "client"), exchange(&mut endpoint, &bulk, "endpoint"))
        })
        .await
        .unwrap();
        // The end: FIN from the client reaches the endpoint, then the endpoint's.
        client.shutdown().await.unwrap();
        assert_eq!(within(endpoint.read(&mut buf)).await.unwrap().unwrap(), 0);
        endpoint.shutdown().await.unwrap();
        assert_eq!(within(client.read(&mut buf)).await.unwrap().unwrap(), 0);
        let received = within(splice).await.unwrap().unwrap();
        assert_eq!(received, 500 + 50 + (4 << 20));
    }
}
