//! The splice both ways, wherever it runs: in the connection's task, on the engine, or moved
//! from one to the other mid-connection.

use super::*;

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
        let mut watches = Watches::new(rx, None, &stats).unwrap_or_else(|_| unreachable!());
        let (client, upstream) = (tokio::io::split(client), tokio::io::split(upstream));
        let splice = copy_both_ways(client, upstream, wakers, None, &stats, &mut watches, None);
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

/// Which of the two splices a test runs.
#[derive(Clone, Copy, Debug)]
enum Via {
    /// In the connection's task, with a waker per direction.
    Task,
    /// On the thread's [`Engine`] from the start.
    Engine,
    /// In the task for a few reads, then on the engine.
    HandOver,
}

async fn splice_via(
    via: Via,
    (client, upstream): (TcpStream, TcpStream),
    idle: Option<Duration>,
    stats: Arc<L4Stats>,
    phase: watch::Receiver<Phase>,
    closing: Option<watch::Receiver<u64>>,
) -> Spliced {
    let engine = |after| Some((Engine::current().expect("an engine"), after));
    let engine = match via {
        Via::Task => None,
        Via::Engine => engine(0),
        Via::HandOver => engine(4),
    };
    splice_handing_over(client, upstream, idle, &stats, phase, closing, engine).await
}

fn within<F: Future>(f: F) -> tokio::time::Timeout<F> {
    tokio::time::timeout(Duration::from_secs(10), f)
}

/// A client and an endpoint with a splice between them, running in a task of its own.
async fn spliced(
    via: Via,
    idle: Option<Duration>,
    phase: watch::Receiver<Phase>,
    closing: Option<watch::Receiver<u64>>,
) -> (TcpStream, TcpStream, Arc<L4Stats>, tokio::task::JoinHandle<Spliced>) {
    let (client, client_side) = socket_pair().await;
    let (upstream_side, endpoint) = socket_pair().await;
    let stats = Arc::new(L4Stats::default());
    let splice = tokio::spawn(splice_via(via, (client_side, upstream_side), idle, stats.clone(), phase, closing));
    (client, endpoint, stats, splice)
}

/// No wake-up may be missed, by the task (each direction is polled only when its own waker
/// fired) or by the engine (edge-triggered: a socket is read again only after a new edge,
/// unless its last read filled the buffer): a direction left alone while the other works
/// must still hear of its next bytes, in ping-pong, in both at once, and at the end.
#[tokio::test]
async fn no_wakeup_is_missed() {
    for via in [Via::Task, Via::Engine, Via::HandOver] {
        no_wakeup_is_missed_via(via).await;
    }
}

async fn no_wakeup_is_missed_via(via: Via) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_tx, rx) = watch::channel(Phase::Serving);
    let (mut client, mut endpoint, stats, splice) = spliced(via, None, rx, None).await;
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
    let spliced = within(splice).await.unwrap().unwrap();
    assert!(matches!(spliced.end, End::Closed), "{via:?}");
    let total = 500 + 50 + (4 << 20);
    assert_eq!((spliced.received, spliced.sent), (total, 350 + 50 + (4 << 20)), "{via:?}");
    assert_eq!(stats.bytes_from_clients.load(Ordering::Relaxed), total, "{via:?}");
}

/// A reset on one side is passed on as a reset, not a clean end.
#[tokio::test]
async fn a_reset_passes_on() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for via in [Via::Task, Via::Engine, Via::HandOver] {
        let (_tx, rx) = watch::channel(Phase::Serving);
        let (mut client, mut endpoint, _stats, splice) = spliced(via, None, rx, None).await;
        client.write_all(b"x").await.unwrap();
        let mut buf = [0u8; 8];
        within(endpoint.read_exact(&mut buf[..1])).await.unwrap().unwrap();
        socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO)).unwrap();
        drop(client);
        let read = within(endpoint.read(&mut buf)).await.unwrap();
        assert_eq!(read.map_err(|e| e.kind()).err(), Some(io::ErrorKind::ConnectionReset), "{via:?}");
        let spliced = within(splice).await.unwrap().unwrap();
        assert!(matches!(spliced.end, End::Failed(ref e) if e.kind() == io::ErrorKind::ConnectionReset), "{via:?}");
    }
}

/// Bytes keep a connection open past its idle timeout; silence closes it, counted.
#[tokio::test]
async fn idle_connections_close_and_busy_ones_stay() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let idle = Duration::from_millis(300);
    for via in [Via::Task, Via::Engine, Via::HandOver] {
        let (_tx, rx) = watch::channel(Phase::Serving);
        let (mut client, mut endpoint, stats, mut splice) = spliced(via, Some(idle), rx, None).await;
        let mut buf = [0u8; 8];
        let started = std::time::Instant::now();
        for _ in 0..6 {
            tokio::time::sleep(idle / 3).await;
            client.write_all(b"x").await.unwrap();
            within(endpoint.read_exact(&mut buf[..1])).await.unwrap().unwrap();
        }
        assert!(started.elapsed() > idle * 2);
        assert!(!splice.is_finished(), "{via:?}: closed while bytes moved");
        let spliced = within(&mut splice).await.unwrap().unwrap();
        assert!(matches!(spliced.end, End::IdleTimeout), "{via:?}");
        assert_eq!(stats.idle_timeouts.load(Ordering::Relaxed), 1, "{via:?}");
        assert_eq!(within(endpoint.read(&mut buf)).await.unwrap().unwrap(), 0, "{via:?}");
        assert_eq!(within(client.read(&mut buf)).await.unwrap().unwrap(), 0, "{via:?}");
    }
}

/// The listener's drain running out and the endpoint's health changing end a splice, wherever
/// it runs, with the bytes it moved and both sockets closed; so does a health change while the
/// connection was being made, before a byte moves.
#[tokio::test]
async fn abort_and_health_closes_end_every_splice() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for via in [Via::Task, Via::Engine, Via::HandOver] {
        let (phase_tx, phase) = watch::channel(Phase::Serving);
        let (closes, _) = watch::channel(0u64);
        let early = closes.subscribe();
        closes.send_modify(|v| *v += 1);
        let (_client, _endpoint, stats, splice) = spliced(via, None, phase.clone(), Some(early)).await;
        let early = within(splice).await.unwrap().unwrap();
        assert!(matches!(early.end, End::HealthChange), "{via:?}: the early close was missed");
        assert_eq!((early.received, stats.health_closes.load(Ordering::Relaxed)), (0, 1));
        for (n, expected) in [(5, "health"), (9, "aborted")] {
            let (mut client, mut endpoint, stats, splice) =
                spliced(via, None, phase.clone(), Some(closes.subscribe())).await;
            // Enough exchanges for the hand-over to have happened.
            let mut buf = [0u8; 16];
            for _ in 0..n {
                client.write_all(b"x").await.unwrap();
                within(endpoint.read_exact(&mut buf[..1])).await.unwrap().unwrap();
                endpoint.write_all(b"y").await.unwrap();
                within(client.read_exact(&mut buf[..1])).await.unwrap().unwrap();
            }
            match expected {
                "aborted" => phase_tx.send(Phase::Abort).unwrap(),
                _ => closes.send_modify(|v| *v += 1),
            }
            let ended = within(splice).await.unwrap().unwrap();
            match expected {
                "aborted" => assert!(matches!(ended.end, End::Aborted), "{via:?}"),
                _ => {
                    assert!(matches!(ended.end, End::HealthChange), "{via:?}");
                    assert_eq!(stats.health_closes.load(Ordering::Relaxed), 1);
                }
            }
            assert_eq!((ended.received, ended.sent), (n as u64, n as u64), "{via:?}");
            assert_eq!(within(endpoint.read(&mut buf)).await.unwrap().unwrap(), 0, "{via:?}");
            assert_eq!(within(client.read(&mut buf)).await.unwrap().unwrap(), 0, "{via:?}");
        }
    }
}

/// A connection whose task is dropped (its listener's tasks were) does not stay open on the
/// engine.
#[tokio::test]
async fn a_dropped_task_closes_its_engine_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_tx, rx) = watch::channel(Phase::Serving);
    let (mut client, mut endpoint, _stats, splice) = spliced(Via::HandOver, None, rx, None).await;
    let mut buf = [0u8; 8];
    for _ in 0..8 {
        client.write_all(b"x").await.unwrap();
        within(endpoint.read_exact(&mut buf[..1])).await.unwrap().unwrap();
    }
    splice.abort();
    assert_eq!(within(endpoint.read(&mut buf)).await.unwrap().unwrap(), 0);
    assert_eq!(within(client.read(&mut buf)).await.unwrap().unwrap(), 0);
}

/// One connection moving bulk bytes as fast as both peers go does not hold the engine from
/// the others: a ping-pong beside it keeps answering.
#[tokio::test]
async fn a_bulk_transfer_leaves_room_for_others() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_tx, rx) = watch::channel(Phase::Serving);
    let (mut bulk_client, mut bulk_endpoint, _s1, _bulk) = spliced(Via::Engine, None, rx.clone(), None).await;
    let (mut client, mut endpoint, _s2, _small) = spliced(Via::Engine, None, rx, None).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = tokio::spawn({
        let stop = stop.clone();
        async move {
            let chunk = vec![0u8; 256 * 1024];
            while !stop.load(Ordering::Relaxed) {
                if bulk_client.write_all(&chunk).await.is_err() {
                    break;
                }
            }
        }
    });
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 256 * 1024];
        while matches!(bulk_endpoint.read(&mut buf).await, Ok(n) if n > 0) {}
    });
    let mut buf = [0u8; 1];
    within(async {
        for i in 0..100u8 {
            client.write_all(&[i]).await.unwrap();
            endpoint.read_exact(&mut buf).await.unwrap();
            endpoint.write_all(&buf).await.unwrap();
            client.read_exact(&mut buf).await.unwrap();
            assert_eq!(buf[0], i);
        }
    })
    .await
    .expect("the ping-pong stalled beside a bulk transfer");
    stop.store(true, Ordering::Relaxed);
    writer.abort();
    reader.abort();
}
