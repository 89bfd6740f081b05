//! `sluice dev --demo`: built-in backends on ephemeral loopback ports and the seed config of
//! DESIGN.md §2 (host myshop.com with five routes, plus a TCP echo listener). The api service shows
//! health checks, outlier ejection and retries; /login is sticky.

use std::convert::Infallible;
use std::net::SocketAddr;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::client::Client;

/// The demo's HTTP services; each is a cluster of two backends answering `<service>-<n>\n`.
pub const SERVICES: [&str; 5] = ["api", "auth", "products", "media", "admin"];
pub const HOST: &str = "myshop.com";

/// The running demo backends; dropping this stops them.
pub struct Backends {
    /// (service, addresses of its two backends)
    pub http: Vec<(&'static str, Vec<SocketAddr>)>,
    pub tcp: Vec<SocketAddr>,
    _tasks: JoinSet<()>,
}

pub async fn start_backends() -> anyhow::Result<Backends> {
    let mut tasks = JoinSet::new();
    let mut http = Vec::new();
    for service in SERVICES {
        let mut addrs = Vec::new();
        for i in 1..=2 {
            let l = TcpListener::bind("127.0.0.1:0").await.context("binding a demo backend")?;
            addrs.push(l.local_addr()?);
            tasks.spawn(serve_http(l, Bytes::from(format!("{service}-{i}\n"))));
        }
        http.push((service, addrs));
    }
    let mut tcp = Vec::new();
    for i in 1..=2 {
        let l = TcpListener::bind("127.0.0.1:0").await.context("binding a demo echo backend")?;
        tcp.push(l.local_addr()?);
        tasks.spawn(serve_echo(l, Bytes::from(format!("echo-{i}\n"))));
    }
    Ok(Backends { http, tcp, _tasks: tasks })
}

/// One backend on `listener` (what `sluice demo-backend` runs): HTTP answering `NAME\n`, or with
/// `tcp` an echo server greeting with it.
pub async fn serve(listener: TcpListener, name: &str, tcp: bool) {
    let text = Bytes::from(format!("{name}\n"));
    if tcp {
        serve_echo(listener, text).await
    } else {
        serve_http(listener, text).await
    }
}

/// Answers every request with `body`.
async fn serve_http(listener: TcpListener, body: Bytes) {
    loop {
        let Some(stream) = accept(&listener).await else { continue };
        let _ = stream.set_nodelay(true);
        let body = body.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                let body = body.clone();
                async move {
                    let mut resp = Response::new(Full::new(body));
                    resp.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static("text/plain"));
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

/// One accepted connection; on an error (e.g. out of file descriptors) pauses briefly instead of spinning.
async fn accept(listener: &TcpListener) -> Option<TcpStream> {
    match listener.accept().await {
        Ok((stream, _)) => Some(stream),
        Err(_) => {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            None
        }
    }
}

/// Greets each connection with `greeting` (so you can see which backend answered), then echoes.
async fn serve_echo(listener: TcpListener, greeting: Bytes) {
    loop {
        let Some(stream) = accept(&listener).await else { continue };
        tokio::spawn(echo(stream, greeting.clone()));
    }
}

async fn echo(mut stream: TcpStream, greeting: Bytes) {
    if stream.write_all(&greeting).await.is_err() {
        return;
    }
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The seed config as `(plural kind, name, spec)` in dependency order.
pub fn seed(b: &Backends, http_addr: SocketAddr, tcp_addr: SocketAddr) -> Vec<(&'static str, String, Value)> {
    let endpoints =
        |addrs: &[SocketAddr]| addrs.iter().map(|a| json!({"address": a.to_string(), "weight": 1})).collect::<Vec<_>>();
    let mut out = Vec::new();
    for (service, addrs) in &b.http {
        let mut cluster = json!({"lb_policy": "round_robin", "endpoints": endpoints(addrs)});
        if *service == "api" {
            // The failover kit: active checks, passive ejection (the route adds retries).
            cluster["health_check"] = json!({"http": {"path": "/healthz"}, "interval_ms": 2000});
            cluster["outlier_detection"] = json!({"consecutive_failures": 3, "ejection_ms": 10000});
        }
        out.push(("clusters", service.to_string(), cluster));
    }
    out.push(("clusters", "echo".to_string(), json!({"lb_policy": "round_robin", "endpoints": endpoints(&b.tcp)})));
    out.push(("listeners", "web".to_string(), json!({"address": http_addr.to_string(), "protocol": "http"})));
    out.push((
        "listeners",
        "echo".to_string(),
        json!({"address": tcp_addr.to_string(), "protocol": "tcp", "cluster": "echo"}),
    ));
    let routes = [
        ("api", json!({"prefix": "/api/"}), "api"),
        ("login", json!({"exact": "/login"}), "auth"),
        ("products", json!({"prefix": "/products"}), "products"),
        ("images", json!({"prefix": "/images/"}), "media"),
        ("admin", json!({"prefix": "/admin"}), "admin"),
    ];
    for (name, path, cluster) in routes {
        let mut route = json!({"listener": "web", "match": {"hosts": [HOST], "path": path},
                               "backends": [{"cluster": cluster, "weight": 1}]});
        match name {
            "api" => route["retries"] = json!({"attempts": 1, "on": ["connect_failure", "reset", "5xx"]}),
            // A login session stays on the backend that started it.
            "login" => route["sticky"] = json!({"cookie": "sluice_sticky", "ttl_s": 3600}),
            _ => {}
        }
        out.push(("routes", name.to_string(), route));
    }
    out
}

/// Registers the seed config through the REST API, as a user would.
pub async fn register(client: &Client, seed: &[(&'static str, String, Value)]) -> anyhow::Result<u64> {
    let mut revision = 0;
    for (kind, name, spec) in seed {
        let answer = client
            .call(Method::PUT, &format!("/v1/{kind}/{name}"), Some(spec))
            .await
            .with_context(|| format!("registering demo {kind}/{name}"))?;
        revision = crate::client::revision_of(&answer).unwrap_or(revision);
    }
    Ok(revision)
}

/// What to try, printed once the demo is up.
pub fn instructions(http_addr: SocketAddr, tcp_addr: SocketAddr) -> String {
    let mut s = String::from("Demo: host myshop.com, two backends per service:\n");
    for path in ["/api/orders", "/login", "/products", "/images/logo.png", "/admin"] {
        s.push_str(&format!("  curl -H 'Host: {HOST}' http://{http_addr}{path}\n"));
    }
    s.push_str(&format!(
        "  curl -i -H 'Host: {HOST}' http://{http_addr}/login    # Set-Cookie: sluice_sticky=... pins you\n"
    ));
    s.push_str(&format!("  nc {} {}    # TCP echo, greets with its backend's name\n", tcp_addr.ip(), tcp_addr.port()));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_shared::{Cluster, Config, Listener, Route};

    #[tokio::test]
    async fn seed_is_a_valid_config_and_backends_answer() {
        let b = start_backends().await.unwrap();
        let seed = seed(&b, "127.0.0.1:8080".parse().unwrap(), "127.0.0.1:15432".parse().unwrap());
        let mut cfg = Config::default();
        for (kind, name, spec) in seed {
            match kind {
                "clusters" => drop(cfg.clusters.insert(name, serde_json::from_value::<Cluster>(spec).unwrap())),
                "listeners" => drop(cfg.listeners.insert(name, serde_json::from_value::<Listener>(spec).unwrap())),
                _ => drop(cfg.routes.insert(name, serde_json::from_value::<Route>(spec).unwrap())),
            }
        }
        cfg.validate().unwrap();
        assert_eq!(cfg.routes.len(), 5);

        let mut s = TcpStream::connect(b.tcp[0]).await.unwrap();
        s.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 11];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"echo-1\nping");

        let addr = b.http[0].1[1];
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200") && out.ends_with("api-2\n"), "{out}");
    }
}
