//! Shared helpers for the end-to-end tests: start the real `sluice` binary on ephemeral loopback
//! ports, talk to its REST API, run small backends, and wait on conditions with a deadline.
//!
//! Everything here panics with a clear message on failure: it only runs inside tests.

pub mod api;
pub mod backends;
pub mod l7;
pub mod process;
pub mod tls;

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

pub use api::Api;
pub use backends::{http_get, HttpBackend, TcpEcho};
pub use process::{cli, cli_in, cli_with_env, write_file, CliOutput, Sluice, ADMIN_TOKEN};

/// A loopback address with a port that was free a moment ago (bind to port 0, then release it).
pub fn free_addr() -> SocketAddr {
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
