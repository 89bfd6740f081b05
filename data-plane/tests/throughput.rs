//! A rough throughput probe, not run by default (numbers depend on the machine):
//! `cargo test --release -p sluice-data-plane --test throughput -- --ignored --nocapture`
//! Keep-alive clients hammer one route through a real node; prints requests per second.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::json;
use sluice_shared::proto::v1 as pb;
use support::*;

#[tokio::test(flavor = "multi_thread")]
#[ignore = "load probe; run by hand in release mode"]
async fn keep_alive_requests_per_second() {
    let backend = Backend::start("b").await;
    let listener = free_addr();
    let cfg = config(json!({
        "clusters": {"b": {"endpoints": [{"address": backend.addr.to_string()}]}},
        "listeners": {"main": {"address": listener.to_string(), "protocol": "http"}},
        "routes": {"r": {"listener": "main", "match": {"hosts": ["bench.test"]}, "backends": [{"cluster": "b"}]}}
    }));
    let cp = ControlPlane::start(Some(snapshot(&cfg, 1))).await;
    let node = start_node(vec![cp.url()], None).await;
    assert!(matches!(cp.reply_to(1).await, pb::node_message::Msg::Ack(_)));
    eventually("listener up", || async { try_get(listener, "bench.test", "/").await }).await;

    let done = Arc::new(AtomicU64::new(0));
    let run_for = Duration::from_secs(3);
    let start = Instant::now();
    let clients: Vec<_> = (0..32)
        .map(|_| {
            let done = done.clone();
            tokio::spawn(async move {
                let stream = tokio::net::TcpStream::connect(listener).await.unwrap();
                stream.set_nodelay(true).unwrap();
                let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
                tokio::spawn(conn);
                while start.elapsed() < run_for {
                    let req =
                        hyper::Request::get("/").header("host", "bench.test").body(Empty::<Bytes>::new()).unwrap();
                    let resp = send.send_request(req).await.unwrap();
                    assert_eq!(resp.status(), 200);
                    resp.into_body().collect().await.unwrap();
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    let n = done.load(Ordering::Relaxed);
    println!("{n} requests in {:?}: {:.0} req/s", start.elapsed(), n as f64 / start.elapsed().as_secs_f64());
    node.shutdown().await;
    cp.stop().await;
}
