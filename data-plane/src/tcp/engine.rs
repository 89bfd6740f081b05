//! The splice engine: a thread beside each worker that moves the bytes of plain tcp connections
//! in an event loop of its own (mio, edge-triggered epoll), as nginx's and HAProxy's workers do.
//!
//! Why not a tokio task per connection: on a request/response load, tokio's readiness bookkeeping
//! (a readiness check, and a waker stored under a lock, around each socket call), its task
//! machinery and the driver's wake-ups cost more user-space instructions per request than the
//! whole of nginx stream's event handling (callgrind: 2,757 against 1,919 per request, of which
//! about 1,700 in tokio). Here a wake-up is an event for a socket, and handling it is a read and a
//! write: no task, waker, lock or budget in between.
//!
//! The division of work: the connection's tokio task accepts, connects, keeps every guard
//! (listener slot, endpoint, breaker permit), watches the listener's drain and the endpoint's
//! health, and writes the access log. It splices the first exchanges itself, then hands the two
//! sockets over ([`Engine::splice`], from `splice.rs`, once the connection has shown it is not
//! a short one) and waits for the [`Spliced`] result. The engine moves bytes, passes half-close and resets on, and
//! enforces the idle timeout; [`Running::close`] ends a connection early, and dropping the
//! [`Running`] handle (the task was dropped) closes it too.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::future::Future;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::task::{ready, Context, Poll as TaskPoll};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use tokio::sync::oneshot;

use super::meter::Meter;
use super::splice::{End, Spliced, BUFFER};
use crate::l4_stats::L4Stats;

/// Reads per direction per turn of the loop before other connections get theirs (a bulk transfer
/// would otherwise hold the thread for as long as both peers keep up).
const READS_PER_TURN: u32 = 16;
const WAKER: Token = Token(usize::MAX);

/// A handle on one engine thread; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    commands: mpsc::Sender<Command>,
    waker: Arc<Waker>,
    ids: Arc<AtomicU64>,
    /// Cleared when the loop ends (it cannot poll any more); the thread then starts another.
    running: Arc<AtomicBool>,
}

enum Command {
    Splice(Box<Job>),
    Close { id: u64, end: End },
    Stop,
}

struct Job {
    id: u64,
    client: std::net::TcpStream,
    upstream: std::net::TcpStream,
    idle: Option<Duration>,
    stats: Arc<L4Stats>,
    done: oneshot::Sender<Spliced>,
}

/// Stops the thread's engine when the thread ends.
struct ThreadEngine(Option<Engine>);

impl Drop for ThreadEngine {
    fn drop(&mut self) {
        if let Some(engine) = &self.0 {
            engine.send(Command::Stop);
        }
    }
}

thread_local! {
    static CURRENT: RefCell<Option<ThreadEngine>> = const { RefCell::new(None) };
}

impl Engine {
    /// The engine of the calling thread, started on first use; `None` if it cannot be started
    /// (the caller then splices in its own task).
    pub fn current() -> Option<Engine> {
        CURRENT.with(|current| {
            let mut current = current.borrow_mut();
            if current.as_ref().and_then(|e| e.0.as_ref()).is_some_and(|e| !e.running.load(Ordering::Relaxed)) {
                *current = None;
            }
            let engine = current.get_or_insert_with(|| {
                let name = std::thread::current().name().unwrap_or("sluice").to_string();
                ThreadEngine(
                    Engine::start(&format!("{name}-splice"))
                        .map_err(|e| {
                            tracing::warn!(error = %e, "cannot start a splice engine; splicing in tasks");
                        })
                        .ok(),
                )
            });
            engine.0.clone()
        })
    }

    fn start(name: &str) -> io::Result<Engine> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (commands, inbox) = mpsc::channel();
        let running = Arc::new(AtomicBool::new(true));
        let flag = running.clone();
        std::thread::Builder::new().name(name.to_string()).spawn(move || {
            Loop::new(poll, inbox).run();
            flag.store(false, Ordering::Relaxed);
        })?;
        Ok(Engine { commands, waker, ids: Arc::new(AtomicU64::new(0)), running })
    }

    /// Hands a connection's two sockets to the engine, which splices them until both directions
    /// ended, either side failed, `idle` passed without a byte, or [`Running::close`].
    pub fn splice(
        &self,
        client: std::net::TcpStream,
        upstream: std::net::TcpStream,
        idle: Option<Duration>,
        stats: Arc<L4Stats>,
    ) -> Running {
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let (done, result) = oneshot::channel();
        self.send(Command::Splice(Box::new(Job { id, client, upstream, idle, stats, done })));
        Running { engine: self.clone(), id, result, finished: false }
    }

    fn send(&self, command: Command) {
        // A stopped engine dropped its end: the job's `done` went with it, which its task reads as
        // an abort.
        if self.commands.send(command).is_ok() {
            let _ = self.waker.wake();
        }
    }
}

/// A connection on the engine, as its task sees it.
pub struct Running {
    engine: Engine,
    id: u64,
    result: oneshot::Receiver<Spliced>,
    finished: bool,
}

impl Running {
    /// How the splice ended (an engine gone counts as aborted).
    pub fn poll_ended(&mut self, cx: &mut Context<'_>) -> TaskPoll<Spliced> {
        let spliced = ready!(Pin::new(&mut self.result).poll(cx));
        self.finished = true;
        TaskPoll::Ready(spliced.unwrap_or(Spliced { end: End::Aborted, received: 0, sent: 0 }))
    }

    /// Ends the connection with `end` (its result still comes through [`Running::poll_ended`]).
    pub fn close(&self, end: End) {
        self.engine.send(Command::Close { id: self.id, end });
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.finished {
            self.close(End::Aborted);
        }
    }
}

/// The engine thread's state.
struct Loop {
    poll: Poll,
    inbox: mpsc::Receiver<Command>,
    conns: Slab<Conn>,
    /// Job id to slab key, for closes.
    keys: HashMap<u64, usize>,
    /// Idle deadlines, checked lazily: an entry names a connection whose deadline may since have
    /// moved on.
    deadlines: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    /// Connections that stopped at [`READS_PER_TURN`] with bytes still to read.
    again: Vec<usize>,
}

struct Conn {
    id: u64,
    sockets: [TcpStream; 2],
    ready: [Readiness; 2],
    /// `[0]` client to endpoint, `[1]` endpoint to client.
    pumps: [Pump; 2],
    /// The loop time of the last byte moved.
    last: Instant,
    idle: Option<Duration>,
    stats: Arc<L4Stats>,
    done: Option<oneshot::Sender<Spliced>>,
    queued: bool,
}

#[derive(Default)]
struct Readiness {
    readable: bool,
    /// The peer ended its stream (or the socket failed): final, so a short read does not clear
    /// `readable` (no further edge would come).
    read_closed: bool,
    writable: bool,
}

struct Pump {
    buf: Box<[u8]>,
    /// `buf[pos..len]` is read and not written yet.
    pos: usize,
    len: usize,
    eof: bool,
    done: bool,
    bytes: Meter,
}

impl Loop {
    fn new(poll: Poll, inbox: mpsc::Receiver<Command>) -> Loop {
        Loop { poll, inbox, conns: Slab::new(), keys: HashMap::new(), deadlines: BinaryHeap::new(), again: Vec::new() }
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(256);
        let mut now = Instant::now();
        loop {
            let timeout = if self.again.is_empty() {
                self.deadlines.peek().map(|Reverse((at, _, _))| at.saturating_duration_since(now))
            } else {
                Some(Duration::ZERO)
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(error = %e, "splice engine cannot poll; closing its connections");
                    return;
                }
            }
            now = Instant::now();
            let mut commands = false;
            for event in events.iter() {
                if event.token() == WAKER {
                    commands = true;
                    continue;
                }
                let (key, side) = (event.token().0 >> 1, event.token().0 & 1);
                if let Some(conn) = self.conns.get_mut(key) {
                    let ready = &mut conn.ready[side];
                    if event.is_readable() || event.is_read_closed() || event.is_error() {
                        ready.readable = true;
                    }
                    if event.is_read_closed() || event.is_error() {
                        ready.read_closed = true;
                    }
                    if event.is_writable() || event.is_write_closed() || event.is_error() {
                        ready.writable = true;
                    }
                    self.drive(key, now);
                }
            }
            for key in std::mem::take(&mut self.again) {
                if let Some(conn) = self.conns.get_mut(key) {
                    conn.queued = false;
                    self.drive(key, now);
                }
            }
            if commands && !self.take_commands(now) {
                return;
            }
            self.expire(now);
        }
    }

    /// Takes every queued command; `false` when the engine is to stop.
    fn take_commands(&mut self, now: Instant) -> bool {
        loop {
            match self.inbox.try_recv() {
                Ok(Command::Splice(job)) => self.add(*job, now),
                Ok(Command::Close { id, end }) => {
                    if let Some(&key) = self.keys.get(&id) {
                        self.finish(key, end);
                    }
                }
                Ok(Command::Stop) | Err(mpsc::TryRecvError::Disconnected) => return false,
                Err(mpsc::TryRecvError::Empty) => return true,
            }
        }
    }

    fn add(&mut self, job: Job, now: Instant) {
        let Job { id, client, upstream, idle, stats, done } = job;
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        let mut sockets = [TcpStream::from_std(client), TcpStream::from_std(upstream)];
        for (side, socket) in sockets.iter_mut().enumerate() {
            let token = Token(key << 1 | side);
            if let Err(e) = self.poll.registry().register(socket, token, Interest::READABLE | Interest::WRITABLE) {
                let _ = done.send(Spliced { end: End::Failed(e), received: 0, sent: 0 });
                return;
            }
        }
        // Registering reports what is already readable; writes are tried until refused.
        let ready = [(); 2].map(|()| Readiness { writable: true, ..Readiness::default() });
        entry.insert(Conn {
            id,
            sockets,
            ready,
            pumps: [Pump::new(), Pump::new()],
            last: now,
            idle,
            stats,
            done: Some(done),
            queued: false,
        });
        self.keys.insert(id, key);
        if let Some(idle) = idle {
            self.deadlines.push(Reverse((now + idle, key, id)));
        }
    }

    /// Moves what can be moved both ways, and ends the connection if it is over.
    fn drive(&mut self, key: usize, now: Instant) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        let mut more = false;
        let mut end = None;
        let counters = [&conn.stats.bytes_from_clients, &conn.stats.bytes_to_clients];
        for (from, pump) in conn.pumps.iter_mut().enumerate() {
            match pump.run(&conn.sockets, from, &mut conn.ready, counters[from]) {
                Ok(Moved { bytes, budget_spent }) => {
                    if bytes {
                        conn.last = now;
                    }
                    more |= budget_spent;
                }
                Err(e) => {
                    end = Some(End::Failed(e));
                    break;
                }
            }
        }
        if end.is_none() && conn.pumps.iter().all(|p| p.done) {
            end = Some(End::Closed);
        }
        match end {
            Some(end) => self.finish(key, end),
            None if more && !conn.queued => {
                conn.queued = true;
                self.again.push(key);
            }
            None => {}
        }
    }

    /// Closes idle connections whose deadline has come; re-arms the others.
    fn expire(&mut self, now: Instant) {
        while let Some(&Reverse((at, key, id))) = self.deadlines.peek() {
            if at > now {
                return;
            }
            self.deadlines.pop();
            let Some(conn) = self.conns.get(key).filter(|c| c.id == id) else { continue };
            let Some(idle) = conn.idle else { continue };
            let deadline = conn.last + idle;
            if deadline <= now {
                conn.stats.idle_timeouts.fetch_add(1, Ordering::Relaxed);
                self.finish(key, End::IdleTimeout);
            } else {
                self.deadlines.push(Reverse((deadline, key, id)));
            }
        }
    }

    /// Closes both sockets and reports how the splice ended.
    fn finish(&mut self, key: usize, end: End) {
        let Some(mut conn) = self.conns.try_remove(key) else { return };
        self.keys.remove(&conn.id);
        // The connection's task logs how it ended, in its span.
        if let End::Failed(e) = &end {
            // A reset on one side becomes a reset on the other.
            if e.kind() == io::ErrorKind::ConnectionReset {
                for s in &conn.sockets {
                    let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
                }
            }
        }
        for socket in &mut conn.sockets {
            let _ = self.poll.registry().deregister(socket);
        }
        let [up, down] = &mut conn.pumps;
        up.bytes.flush(&conn.stats.bytes_from_clients);
        down.bytes.flush(&conn.stats.bytes_to_clients);
        let spliced = Spliced { end, received: up.bytes.total, sent: down.bytes.total };
        if let Some(done) = conn.done.take() {
            let _ = done.send(spliced);
        }
    }
}

struct Moved {
    bytes: bool,
    budget_spent: bool,
}

impl Pump {
    fn new() -> Pump {
        Pump {
            buf: vec![0u8; BUFFER].into_boxed_slice(),
            pos: 0,
            len: 0,
            eof: false,
            done: false,
            bytes: Meter::default(),
        }
    }

    /// Reads from `sockets[from]` and writes to the other socket until one of them would block,
    /// the stream ended (then the writer's sending side is shut down) or the turn's reads are
    /// spent. `counter` is the listener's for this direction.
    fn run(
        &mut self,
        sockets: &[TcpStream; 2],
        from: usize,
        ready: &mut [Readiness; 2],
        counter: &AtomicU64,
    ) -> io::Result<Moved> {
        let to = 1 - from;
        let mut moved = Moved { bytes: false, budget_spent: false };
        let mut reads = 0;
        while !self.done {
            while self.pos < self.len {
                if !ready[to].writable {
                    return Ok(moved);
                }
                match (&sockets[to]).write(&self.buf[self.pos..self.len]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => self.pos += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        ready[to].writable = false;
                        return Ok(moved);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if self.len > 0 {
                self.bytes.add(self.len, counter);
                (self.pos, self.len) = (0, 0);
                moved.bytes = true;
            }
            if self.eof {
                // The peer may have gone already; its other direction reports that.
                let _ = sockets[to].shutdown(Shutdown::Write);
                self.done = true;
                break;
            }
            if !ready[from].readable {
                break;
            }
            if reads == READS_PER_TURN {
                moved.budget_spent = true;
                break;
            }
            reads += 1;
            match (&sockets[from]).read(&mut self.buf) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    self.len = n;
                    // A short read emptied the socket: the next bytes come with an edge.
                    if n < self.buf.len() && !ready[from].read_closed {
                        ready[from].readable = false;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready[from].readable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(moved)
    }
}
