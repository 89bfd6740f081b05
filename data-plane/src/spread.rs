//! Evens out a listener's connections over the worker threads.
//!
//! `SO_REUSEPORT` hashes each new connection to one worker's socket whatever the load: 64
//! connections often split 40/24, and the busier thread then sets the pace of every client on it
//! while the other has CPU to spare (measured: one worker at 230 CPU ticks, the other at 122, in
//! the same run). A worker that accepts a connection while it serves more of the listener's
//! connections than the least loaded worker hands the socket to that worker instead; the cost is
//! one cross-thread message per such connection, nothing per request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

/// A connection accepted by one worker for another to serve.
pub struct Handed {
    pub stream: std::net::TcpStream,
    pub peer: SocketAddr,
}

/// Per listener: open connections per worker, and a queue into each worker.
pub struct Spread {
    open: Vec<AtomicUsize>,
    queues: Vec<mpsc::UnboundedSender<Handed>>,
}

impl Spread {
    /// For `workers` workers; the receivers go to each worker's hand-off task, in order.
    pub fn new(workers: usize) -> (Arc<Spread>, Vec<mpsc::UnboundedReceiver<Handed>>) {
        let (queues, receivers) = (0..workers).map(|_| mpsc::unbounded_channel()).unzip();
        let spread = Spread { open: (0..workers).map(|_| AtomicUsize::new(0)).collect(), queues };
        (Arc::new(spread), receivers)
    }

    /// The worker that should serve a connection `me` just accepted: `me` unless another worker
    /// has fewer open connections of this listener.
    pub fn choose(&self, me: usize) -> usize {
        let load = |i: usize| self.open.get(i).map_or(usize::MAX, |c| c.load(Ordering::Relaxed));
        let mine = load(me);
        match (0..self.open.len()).min_by_key(|&i| load(i)) {
            Some(least) if load(least) < mine => least,
            _ => me,
        }
    }

    /// Queues `handed` for worker `to`; gives it back if that worker is gone.
    pub fn hand(&self, to: usize, handed: Handed) -> Result<(), Handed> {
        match self.queues.get(to) {
            Some(q) => q.send(handed).map_err(|e| e.0),
            None => Err(handed),
        }
    }

    /// Counts a connection served by `worker` until the guard drops.
    pub fn opened(self: &Arc<Self>, worker: usize) -> Served {
        if let Some(c) = self.open.get(worker) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        Served { spread: Arc::clone(self), worker }
    }
}

pub struct Served {
    spread: Arc<Spread>,
    worker: usize,
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(c) = self.spread.open.get(self.worker) {
            c.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_go_to_the_least_loaded_worker() {
        let (spread, _rx) = Spread::new(3);
        let mut held = Vec::new();
        // Worker 0 accepts everything (as an unlucky hash would have it): the load still evens out.
        for _ in 0..30 {
            let to = spread.choose(0);
            held.push(spread.opened(to));
        }
        let per_worker: Vec<usize> = spread.open.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        assert_eq!(per_worker, vec![10, 10, 10]);
        // Ties stay where they were accepted: no hand-off without a gain.
        assert_eq!(spread.choose(1), 1);
        drop(held.pop());
        assert_eq!(spread.choose(0), spread.choose(2), "the worker that lost one takes the next");
    }

    #[tokio::test]
    async fn handed_connections_arrive_on_the_chosen_queue() {
        let (spread, mut rx) = Spread::new(2);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (stream, peer) = listener.accept().unwrap();
        assert!(spread.hand(1, Handed { stream, peer }).is_ok());
        let got = rx[1].recv().await.unwrap();
        assert_eq!(got.peer, client.local_addr().unwrap());
        assert!(rx[0].try_recv().is_err());
    }
}
