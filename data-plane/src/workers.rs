//! The data path's threads: one single-threaded tokio runtime per core, each running the accept
//! loops of its share of the `SO_REUSEPORT` sockets and every connection those accept.
//!
//! A connection and its upstream exchanges then all live on one thread (the upstream client runs
//! in the connection's own task): waking them is a local wake, never a cross-thread unpark (the
//! multi-thread scheduler woke an idle worker with a futex on most task wake-ups, which dominated
//! the proxy's CPU per request), and the upstream pool of that thread needs no lock. The kernel
//! spreads accepted connections over the sockets, so over the threads. The control side (config
//! stream, admin, installs) stays on the process's main runtime.

use std::future::Future;

use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Task polls between two looks at the I/O driver (tokio's default is 61). A proxied request
/// takes about two task polls, so this bounds how many requests go by before new socket events
/// are taken in. Measured at L7 against 61 (peers.sh, c64, same run): +12% req/s, -9% CPU per
/// request, same p99 (docs/BENCHMARKS.md, session 9).
const EVENT_INTERVAL: u32 = 16;

pub struct Workers {
    handles: Vec<Handle>,
    /// Dropped with `Workers`: each thread then leaves its runtime (dropping its tasks) and ends.
    _stop: Vec<oneshot::Sender<()>>,
}

impl Workers {
    /// Starts `count` worker threads. If none can be started, tasks run on the caller's runtime.
    pub fn new(count: usize) -> Workers {
        let mut handles = Vec::with_capacity(count);
        let mut stop = Vec::with_capacity(count);
        for i in 0..count {
            let runtime =
                match tokio::runtime::Builder::new_current_thread().enable_all().event_interval(EVENT_INTERVAL).build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot start a worker runtime");
                        break;
                    }
                };
            let handle = runtime.handle().clone();
            let (tx, rx) = oneshot::channel::<()>();
            let spawned = std::thread::Builder::new().name(format!("sluice-worker-{i}")).spawn(move || {
                runtime.block_on(async {
                    let _ = rx.await;
                });
            });
            match spawned {
                Ok(_) => {
                    handles.push(handle);
                    stop.push(tx);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start a worker thread");
                    break;
                }
            }
        }
        Workers { handles, _stop: stop }
    }

    /// Runs `task` on worker `i` (modulo the number of workers).
    pub fn spawn<F>(&self, i: usize, task: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        match self.handles.len() {
            0 => tokio::spawn(task),
            n => self.handles[i % n].spawn(task),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tasks_run_on_their_worker_thread() {
        let workers = Workers::new(2);
        let name = |i| {
            workers.spawn(i, async move {
                let n = std::thread::current().name().map(str::to_string);
                assert_eq!(n.as_deref(), Some(format!("sluice-worker-{}", i % 2).as_str()));
            })
        };
        for i in 0..4 {
            name(i).await.unwrap();
        }
    }
}
