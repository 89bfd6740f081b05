//! A small gRPC load tool for the benchmarks (scripts/bench-grpc.sh), on tonic:
//!
//! ```text
//! grpc-load serve ADDR                        the gRPC health service, "" SERVING, on ADDR
//! grpc-load call URL CONNS STREAMS SECONDS    unary Check calls: CONNS HTTP/2 connections with
//!                                             STREAMS calls in flight each, for SECONDS
//! ```
//! `call` prints `calls N ok N failed N seconds S rate R`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Server};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["serve", addr] => serve(addr.parse()?).await,
        ["call", url, conns, streams, seconds] => {
            call(url, conns.parse()?, streams.parse()?, Duration::from_secs(seconds.parse()?)).await
        }
        _ => anyhow::bail!("usage: grpc-load serve ADDR | grpc-load call URL CONNS STREAMS SECONDS"),
    }
}

async fn serve(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let (_reporter, health) = tonic_health::server::health_reporter();
    Server::builder().add_service(health).serve(addr).await?;
    Ok(())
}

async fn call(url: &str, conns: usize, streams: usize, length: Duration) -> anyhow::Result<()> {
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let started = Instant::now();
    let end = started + length;
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let channel = Channel::from_shared(url.to_string())?.connect().await?;
        for _ in 0..streams {
            let mut client = HealthClient::new(channel.clone());
            let (ok, failed) = (ok.clone(), failed.clone());
            tasks.push(tokio::spawn(async move {
                while Instant::now() < end {
                    match client.check(HealthCheckRequest { service: String::new() }).await {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            }));
        }
    }
    for t in tasks {
        t.await?;
    }
    let secs = started.elapsed().as_secs_f64();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("calls {} ok {ok} failed {failed} seconds {secs:.2} rate {:.0}", ok + failed, ok as f64 / secs);
    Ok(())
}
