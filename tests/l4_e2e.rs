//! L4 end to end through the real binary: tcp and udp listeners configured over the REST API
//! (`sluice dev`), hashing on the client IP, the limits and drain fields, a config change with an
//! open connection, and `psql` through a tcp listener when a local Postgres answers.

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;
use sluice_e2e::{eventually, free_addr, Sluice};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const WAIT: Duration = Duration::from_secs(30);

/// A TCP backend: greets with `name\n`, then echoes.
async fn tagged_echo(name: &'static str) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((mut s, _)) = listener.accept().await {
            while conns.try_join_next().is_some() {}
            conns.spawn(async move {
                if s.write_all(format!("{name}\n").as_bytes()).await.is_ok() {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
        }
    });
    (addr, task)
}

/// Connects and returns (backend name, connection), or `None` if nothing answered.
async fn open(addr: SocketAddr) -> Option<(String, BufReader<TcpStream>)> {
    let s = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await.ok()?.ok()?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    let n = tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line)).await.ok()?.ok()?;
    (n > 0).then(|| (line.trim().to_string(), r))
}

async fn echo(conn: &mut BufReader<TcpStream>, msg: &str) -> Option<String> {
    conn.get_mut().write_all(msg.as_bytes()).await.ok()?;
    let mut buf = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), conn.read_exact(&mut buf)).await.ok()?.ok()?;
    Some(String::from_utf8_lossy(&buf).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_and_udp_listeners_over_the_api() {
    let dev = Sluice::dev(BIN, &[]).await;
    let api = dev.api();
    let (a, _ta) = tagged_echo("a").await;
    let (b, _tb) = tagged_echo("b").await;
    let udp_backend = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let udp_addr = udp_backend.local_addr().unwrap();
    let _tu = tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while let Ok((n, from)) = udp_backend.recv_from(&mut buf).await {
            let reply = [b"udp:".as_slice(), &buf[..n]].concat();
            let _ = udp_backend.send_to(&reply, from).await;
        }
    });

    let replicas =
        json!({"lb_policy": "maglev", "endpoints": [{"address": a.to_string()}, {"address": b.to_string()}]});
    api.put("clusters", "replicas", replicas).await;
    api.put("clusters", "dns", json!({"endpoints": [{"address": udp_addr.to_string()}]})).await;
    let tcp = free_addr();
    let db = json!({"address": tcp.to_string(), "protocol": "tcp", "cluster": "replicas",
        "hash_on": {"source_ip": true}, "idle_timeout_ms": 60000, "max_connections": 100, "drain_ms": 2000,
        "tcp_keepalive": {"idle_ms": 30000}});
    api.put("listeners", "db", db).await;
    let udp = loop {
        let a = free_addr();
        if std::net::UdpSocket::bind(a).is_ok() {
            break a;
        }
    };
    api.put("listeners", "resolver", json!({"address": udp.to_string(), "protocol": "udp", "cluster": "dns"})).await;
    let (_, got) = api.get("/v1/listeners/db").await;
    assert_eq!((got["max_connections"].as_u64(), got["drain_ms"].as_u64()), (Some(100), Some(2000)), "{got}");
    // Unset keepalive timings come back as the defaults the node applies.
    assert_eq!(got["tcp_keepalive"], json!({"idle_ms": 30000, "interval_ms": 10000, "probes": 3}), "{got}");
    // PROXY protocol: an unknown version, or a listener kind that has no connection to start
    // with a header, is refused with the field named and changes nothing.
    let before = api.revision().await;
    let v3 =
        json!({"address": free_addr().to_string(), "protocol": "tcp", "cluster": "replicas", "proxy_protocol": "v3"});
    let udp_pp =
        json!({"address": free_addr().to_string(), "protocol": "udp", "cluster": "dns", "proxy_protocol": "v1"});
    for bad in [v3, udp_pp] {
        let (status, err) = api.call(Method::PUT, "/v1/listeners/pp", Some(&bad)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
        assert_eq!(err["error"]["field"], "proxy_protocol", "{err}");
    }
    assert_eq!(api.revision().await, before);

    // One client IP, one endpoint (maglev on the source IP).
    let (first, mut held) = eventually(WAIT, "the tcp listener", || open(tcp)).await;
    for _ in 0..5 {
        let (name, _c) = open(tcp).await.expect("tcp through the listener");
        assert_eq!(name, first);
    }
    // UDP round trip.
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let reply = eventually(WAIT, "a udp reply", || {
        let client = &client;
        async move {
            client.send_to(b"ping", udp).await.ok()?;
            let mut buf = [0u8; 64];
            let n = tokio::time::timeout(Duration::from_millis(500), client.recv(&mut buf)).await.ok()?.ok()?;
            Some(String::from_utf8_lossy(&buf[..n]).into_owned())
        }
    })
    .await;
    assert_eq!(reply, "udp:ping");

    // The held connection's endpoint leaves the cluster: it keeps working, new ones go elsewhere.
    let (other, other_name) = if first == "a" { (b, "b") } else { (a, "a") };
    api.put("clusters", "replicas", json!({"lb_policy": "maglev", "endpoints": [{"address": other.to_string()}]}))
        .await;
    eventually(WAIT, "new connections on the remaining endpoint", || async {
        let (name, _c) = open(tcp).await?;
        (name == other_name).then_some(())
    })
    .await;
    assert_eq!(echo(&mut held, "still open").await.as_deref(), Some("still open"));

    // /metrics of the dev node reports the L4 counters.
    let metrics =
        reqwest::get(format!("http://{}/metrics", dev.admin_addr.unwrap())).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("sluice_l4_connections_total{listener=\"db\"}"), "{metrics}");
    assert!(metrics.contains("sluice_l4_connections_total{listener=\"resolver\"} 1"), "{metrics}");

    // A real database through a tcp listener, when the local Postgres answers.
    let pg: SocketAddr = "127.0.0.1:5432".parse().unwrap();
    if TcpStream::connect(pg).await.is_err() {
        eprintln!("SKIPPED: no Postgres at {pg}");
        return;
    }
    api.put("clusters", "pg", json!({"endpoints": [{"address": pg.to_string()}]})).await;
    let pg_listener = free_addr();
    api.put("listeners", "pg", json!({"address": pg_listener.to_string(), "protocol": "tcp", "cluster": "pg"})).await;
    let out = eventually(WAIT, "psql through the listener", || async {
        let out = tokio::process::Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &pg_listener.port().to_string(),
                "-U",
                "postgres",
                "-Atc",
                "select 1",
                "test",
            ])
            .env("PGCONNECT_TIMEOUT", "5")
            .output()
            .await
            .ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    })
    .await;
    assert_eq!(out, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l4_connections_get_an_access_line_each_saying_how_they_ended() {
    let dev = Sluice::dev(BIN, &["--access-log".to_string()]).await;
    let api = dev.api();
    let (a, _ta) = tagged_echo("a").await;
    // Nothing listens there: connects are refused.
    let refusing = free_addr();
    api.put("clusters", "replicas", json!({"endpoints": [{"address": a.to_string()}]})).await;
    api.put("clusters", "down", json!({"endpoints": [{"address": refusing.to_string()}]})).await;
    let (db, gone) = (free_addr(), free_addr());
    api.put(
        "listeners",
        "db",
        json!({"address": db.to_string(), "protocol": "tcp", "cluster": "replicas",
        "max_connections": 1, "idle_timeout_ms": 60000}),
    )
    .await;
    api.put("listeners", "gone", json!({"address": gone.to_string(), "protocol": "tcp", "cluster": "down"})).await;
    // Behind another balancer: one takes a header from anyone, one only from 192.0.2.0/24.
    let (behind, guarded) = (free_addr(), free_addr());
    api.put(
        "listeners",
        "behind",
        json!({"address": behind.to_string(), "protocol": "tcp", "cluster": "replicas", "accept_proxy_protocol": true}),
    )
    .await;
    api.put(
        "listeners",
        "guarded",
        json!({"address": guarded.to_string(), "protocol": "tcp", "cluster": "replicas",
        "accept_proxy_protocol": true, "proxy_protocol_from": ["192.0.2.0/24"]}),
    )
    .await;

    let (_, mut held) = eventually(WAIT, "the tcp listener", || open(db)).await;
    // Past 32 reads: the connection moves from its task to the worker's splice engine, and the
    // line counts the bytes of both.
    for _ in 0..21 {
        assert_eq!(echo(&mut held, "ping").await.as_deref(), Some("ping"));
    }
    // Over max_connections: closed at once.
    let mut refused = TcpStream::connect(db).await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), refused.read_to_end(&mut rest)).await;
    // No reachable endpoint.
    let mut unreachable =
        eventually(WAIT, "the second tcp listener", || async { TcpStream::connect(gone).await.ok() }).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), unreachable.read_to_end(&mut rest)).await;
    // No PROXY header where one is due, and a header from a sender not listed.
    let header: &[u8] = b"PROXY TCP4 192.0.2.9 10.0.0.1 5000 5432\r\n";
    for (addr, sent) in [(behind, &b"hello\r\n"[..]), (guarded, header)] {
        let mut c =
            eventually(WAIT, "a listener behind a balancer", || async { TcpStream::connect(addr).await.ok() }).await;
        let _ = c.write_all(sent).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut rest)).await;
    }
    // The held one ends cleanly: FIN from the client, the echo answers with its own.
    held.get_mut().shutdown().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), held.read_to_end(&mut rest)).await;

    let line = |end: &'static str| {
        let dev = &dev;
        async move {
            let log = dev.log();
            log.lines()
                .find(|l| l.contains("sluice::access") && l.contains(&format!("end=\"{end}\"")))
                .map(str::to_string)
        }
    };
    let closed = eventually(WAIT, "the closed connection's line", || line("closed")).await;
    let client = held.get_ref().local_addr().unwrap().to_string();
    for field in [
        "listener=\"db\"".to_string(),
        format!("client={client}"),
        "cluster=\"replicas\"".to_string(),
        format!("endpoint=\"{a}\""),
        // 21 "ping" in; "a\n" and 21 "ping" out.
        "received=84".to_string(),
        "sent=86".to_string(),
        "sni=\"-\"".to_string(),
    ] {
        assert!(closed.contains(&field), "{field} missing: {closed}");
    }
    let rejected = eventually(WAIT, "the rejected connection's line", || line("max_connections")).await;
    assert!(rejected.contains("endpoint=\"-\"") && rejected.contains("received=0"), "{rejected}");
    let no_endpoint = eventually(WAIT, "the unreachable connection's line", || line("no_endpoint")).await;
    assert!(no_endpoint.contains("listener=\"gone\""), "{no_endpoint}");
    let untrusted = eventually(WAIT, "the untrusted sender's line", || line("proxy_sender_untrusted")).await;
    assert!(untrusted.contains("listener=\"guarded\"") && untrusted.contains("endpoint=\"-\""), "{untrusted}");
    let invalid = eventually(WAIT, "the headerless connection's line", || line("proxy_header_invalid")).await;
    assert!(invalid.contains("listener=\"behind\""), "{invalid}");
}
