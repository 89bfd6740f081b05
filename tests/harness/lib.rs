//! Shared helpers for the end-to-end tests: start the real `sluice` binary on ephemeral loopback
//! ports, talk to its REST API, run small backends, and wait on conditions with a deadline.
//!
//! Everything here panics with a clear message on failure: it only runs inside tests.

pub mod api;
pub mod backends;
pub mod compose;
pub mod l7;
pub mod postgres;
pub mod process;
pub mod tls;

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

pub use api::Api;
pub use backends::{http_get, HttpBackend, TcpEcho};
pub use postgres::TempDatabase;
pub use process::{cli, cli_in, cli_with_env, write_file, CliOutput, Sluice, ADMIN_TOKEN};

/// Ports handed out by [`free_addr`]: below the kernel's ephemeral range (32768 and up here), so
/// that no outgoing connection of a running test can be using one as its source port by the time
/// a listener binds it (bind-to-port-0 ports come from that range and raced exactly so).
const PORTS: std::ops::Range<u32> = 20_000..32_000;

/// A loopback address whose port was free (TCP and UDP) a moment ago and that this process has not
/// handed out before.
pub fn free_addr() -> SocketAddr {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = PORTS.end - PORTS.start;
    // Test binaries run one after another: each starts at its own offset.
    let _ = NEXT.compare_exchange(0, 1 + (std::process::id() * 7_919) % span, Ordering::Relaxed, Ordering::Relaxed);
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (PORTS.start + n % span) as u16;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if TcpListener::bind(addr).is_ok() && std::net::UdpSocket::bind(addr).is_ok() {
            return addr;
        }
    }
    let l = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    l.local_addr().expect("local_addr")
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after `timeout` naming `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn eventually_returns_the_first_value() {
        let mut n = 0;
        let v = eventually(Duration::from_secs(5), "n to reach 3", || {
            n += 1;
            let v = n;
            async move { (v >= 3).then_some(v) }
        })
        .await;
        assert_eq!(v, 3);
    }

    #[tokio::test]
    #[should_panic(expected = "waiting for never")]
    async fn eventually_panics_on_timeout() {
        eventually(Duration::from_millis(120), "never", || async { None::<()> }).await;
    }
}
