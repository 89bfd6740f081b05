//! HTTP/2 end to end: h2c (prior knowledge) and h2 (ALPN) clients, HTTP/1.1 and HTTP/2
//! endpoints in every mix, gRPC (tonic's health and reflection services) through the proxy, and
//! the rapid-reset defence.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use sluice_data_plane::Node;
use support::*;
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// An HTTP/2-only (h2c) endpoint answering its name, the request's version, path, headers and
/// body; it counts the connections it accepted.
async fn h2c_backend(name: &'static str) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| async move {
                    let mut text = format!("backend={name}\nversion={:?}\npath={}\n", req.version(), req.uri().path());
                    if let Some(a) = req.uri().authority() {
                        text.push_str(&format!("authority={a}\n"));
                    }
                    for (k, v) in req.headers() {
                        text.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
                    }
                    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    text.push_str(&format!("body={}\n", String::from_utf8_lossy(&body)));
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(text))))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, accepted)
}

/// A tonic server with the gRPC health service (unary Check, server-streaming Watch) and the
/// reflection service (bidi streaming); `svc` starts SERVING.
async fn grpc_backend() -> (SocketAddr, tonic_health::server::HealthReporter) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_service_status("svc", tonic_health::ServingStatus::Serving).await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .add_service(reflection)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (addr, reporter)
}

struct Setup {
    cp: ControlPlane,
    _node: Node,
    listener: SocketAddr,
    /// `http2.idle_timeout_ms` 300, and `max_connection_age_ms` 500.
    idle: SocketAddr,
    aged: SocketAddr,
    h2_accepted: Arc<AtomicUsize>,
    health: tonic_health::server::HealthReporter,
    config: serde_json::Value,
    h1: Backend,
    _held: (socket2::Socket, (socket2::Socket, std::net::TcpStream)),
}

async fn setup() -> Setup {
    let h1 = Backend::start("h1").await;
    let (h2, h2_accepted) = h2c_backend("h2").await;
    let (grpc, health) = grpc_backend().await;
    let (dead, dead_socket) = refusing_addr();
    let (silent, silent_socket) = silent_addr();
    let (listener, idle, aged) = (free_addr(), free_addr(), free_addr());
    let target = |v: &str| json!([{"name": "x-target", "exact": v}]);
    let config = json!({
        "clusters": {
            "h1": {"endpoints": [{"address": h1.addr.to_string()}]},
            "h2": {"endpoints": [{"address": h2.to_string()}], "protocol": "http2"},
            "grpc": {"endpoints": [{"address": grpc.to_string()}], "protocol": "http2"},
            "dead": {"endpoints": [{"address": dead.to_string()}], "protocol": "http2"},
            "silent": {"endpoints": [{"address": silent.to_string()}], "protocol": "http2"},
            "empty": {"endpoints": [], "protocol": "http2"},
            "checked": {"endpoints": [{"address": grpc.to_string()}], "protocol": "http2",
                        "health_check": {"grpc": {"service": "svc"}, "interval_ms": 50,
                                         "healthy_threshold": 1, "unhealthy_threshold": 1}}
        },
        "listeners": {
            "main": {"address": listener.to_string(), "protocol": "http"},
            "idle": {"address": idle.to_string(), "protocol": "http", "http2": {"idle_timeout_ms": 300}},
            "aged": {"address": aged.to_string(), "protocol": "http", "http2": {"max_connection_age_ms": 500}}
        },
        "routes": {
            "h1": {"listener": "main", "match": {"hosts": ["h1.test"]}, "backends": [{"cluster": "h1"}]},
            "idle": {"listener": "idle", "backends": [{"cluster": "h1"}]},
            "aged": {"listener": "aged", "backends": [{"cluster": "h1"}]},
            "h2": {"listener": "main", "match": {"hosts": ["h2.test"]}, "backends": [{"cluster": "h2"}]},
            "grpc": {"listener": "main", "match": {"path": {"prefix": "/grpc."}}, "backends": [{"cluster": "grpc"}]},
            "grpc-empty": {"listener": "main", "priority": 10, "backends": [{"cluster": "empty"}],
                           "match": {"path": {"prefix": "/grpc."}, "headers": target("empty")}},
            "grpc-dead": {"listener": "main", "priority": 10, "backends": [{"cluster": "dead"}],
                          "match": {"path": {"prefix": "/grpc."}, "headers": target("dead")}},
            "grpc-slow": {"listener": "main", "priority": 10, "backends": [{"cluster": "silent"}], "timeout_ms": 300,
                          "match": {"path": {"prefix": "/grpc."}, "headers": target("slow")}},
            "grpc-checked": {"listener": "main", "priority": 10, "backends": [{"cluster": "checked"}],
                             "match": {"path": {"prefix": "/grpc."}, "headers": target("checked")}},
            "grpc-patient": {"listener": "main", "priority": 10, "backends": [{"cluster": "silent"}],
                             "timeout_ms": 30000,
                             "match": {"path": {"prefix": "/grpc."}, "headers": target("patient")}}
        }
    });
    let cp = ControlPlane::start(Some(snapshot(&support::config(config.clone()), 1))).await;
    let node = start_node(vec![cp.url()], None).await;
    cp.expect_ack(1).await;
    eventually("listener up", || async { try_get(listener, "h1.test", "/").await }).await;
    Setup {
        cp,
        _node: node,
        listener,
        idle,
        aged,
        h2_accepted,
        health,
        config,
        h1,
        _held: (dead_socket, silent_socket),
    }
}

/// `curl ARGS -w '\n%{http_version}'`: its output, the HTTP version on the last line.
async fn curl(args: Vec<String>) -> String {
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(["-s", "--max-time", "10", "-w", "\n%{http_version}"])
            .args(&args)
            .output()
    })
    .await
    .unwrap()
    .expect("curl runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

type H2Sender = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

/// An h2c connection with prior knowledge.
async fn h2c(addr: SocketAddr) -> H2Sender {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    send
}

struct Answer {
    status: u16,
    headers: http::HeaderMap,
    body: String,
    trailers: Option<http::HeaderMap>,
}

async fn send(client: &mut H2Sender, req: http::Request<Full<Bytes>>) -> Answer {
    client.ready().await.unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), client.send_request(req)).await.unwrap().unwrap();
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    let body = String::from_utf8_lossy(&collected.to_bytes()).into_owned();
    Answer { status: parts.status.as_u16(), headers: parts.headers, body, trailers }
}

fn get(authority: &str, path: &str) -> http::Request<Full<Bytes>> {
    http::Request::get(format!("http://{authority}{path}")).body(Full::default()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_and_http1_clients_reach_http1_and_http2_endpoints() {
    let s = setup().await;
    let mut client = h2c(s.listener).await;

    // A burst of streams to an HTTP/2 endpoint with no connection yet: they share the one being
    // made rather than each opening its own.
    let calls = (0..64).map(|i| {
        let mut c = client.clone();
        async move { send(&mut c, get("h2.test", &format!("/cold/{i}"))).await }
    });
    for (i, a) in futures::future::join_all(calls).await.iter().enumerate() {
        assert_eq!(a.status, 200);
        assert!(a.body.contains(&format!("path=/cold/{i}")), "{}", a.body);
    }
    let cold = s.h2_accepted.load(Ordering::SeqCst);
    assert!(cold <= 2, "a cold burst of 64 streams opened {cold} endpoint connections");

    // curl with prior knowledge, to both kinds of endpoint.
    for host in ["h1.test", "h2.test"] {
        let url = format!("http://{}/curl", s.listener);
        let out = curl(vec!["--http2-prior-knowledge".into(), "-H".into(), format!("Host: {host}"), url]).await;
        assert!(out.ends_with("\n2"), "not HTTP/2: {out}");
        assert!(out.contains(&format!("backend={}", &host[..2])) && out.contains("path=/curl"), "{out}");
    }

    // h2c to an HTTP/1.1 endpoint: :authority becomes Host, split cookies are joined.
    let mut req = get("h1.test", "/a?b=1");
    req.headers_mut().append("cookie", "a=1".parse().unwrap());
    req.headers_mut().append("cookie", "b=2".parse().unwrap());
    let r = send(&mut client, req).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("backend=h1") && r.body.contains("path=/a"), "{}", r.body);
    assert!(r.body.contains("host: h1.test"), "{}", r.body);
    assert!(r.body.contains("cookie: a=1; b=2"), "{}", r.body);
    assert!(r.body.contains("x-forwarded-proto: http"), "{}", r.body);
    assert!(r.headers.get("connection").is_none());

    // A body, both ways.
    let post = http::Request::post("http://h1.test/up").body(Full::new(Bytes::from("hello h2"))).unwrap();
    let r = send(&mut client, post).await;
    assert!(r.body.contains("body=hello h2"), "{}", r.body);

    // h2c to an HTTP/2 endpoint.
    let r = send(&mut client, get("h2.test", "/b")).await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("backend=h2") && r.body.contains("version=HTTP/2.0"), "{}", r.body);
    assert!(r.body.contains("authority=h2.test"), "{}", r.body);

    // HTTP/1.1 to an HTTP/2 endpoint: Host becomes :authority.
    let r = support::get(s.listener, "h2.test", "/c").await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert!(r.body.contains("version=HTTP/2.0") && r.body.contains("authority=h2.test"), "{}", r.body);

    // Many streams at once on one client connection, multiplexed on few endpoint connections.
    let before = s.h2_accepted.load(Ordering::SeqCst);
    let calls = (0..64).map(|i| {
        let mut c = client.clone();
        async move { send(&mut c, get("h2.test", &format!("/many/{i}"))).await }
    });
    let answers = futures::future::join_all(calls).await;
    for (i, a) in answers.iter().enumerate() {
        assert_eq!(a.status, 200);
        assert!(a.body.contains(&format!("path=/many/{i}")), "{}", a.body);
    }
    let opened = s.h2_accepted.load(Ordering::SeqCst) - before;
    assert!(opened <= 2, "64 streams took {opened} new endpoint connections");

    // No route over h2: the same 404 as HTTP/1.1.
    let r = send(&mut client, get("nothing.test", "/")).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.body.trim(), "no route");
}

async fn grpc_channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap()
}

fn check(service: &str, target: Option<&str>) -> tonic::Request<HealthCheckRequest> {
    let mut req = tonic::Request::new(HealthCheckRequest { service: service.into() });
    if let Some(t) = target {
        req.metadata_mut().insert("x-target", t.parse().unwrap());
    }
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_stream_through_and_proxy_errors_are_grpc_statuses() {
    let s = setup().await;
    let mut health = HealthClient::new(grpc_channel(s.listener).await);

    // Unary.
    let r = health.check(check("svc", None)).await.unwrap();
    assert_eq!(r.into_inner().status(), ServingStatus::Serving);
    // The endpoint's own error status travels in its trailers.
    let e = health.check(check("unknown", None)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");

    // Server streaming: each status change arrives while the call stays open.
    let mut watch = health.watch(check("svc", None)).await.unwrap().into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);
    s.health.set_service_status("svc", tonic_health::ServingStatus::NotServing).await;
    let second = tokio::time::timeout(Duration::from_secs(5), watch.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(second.status(), ServingStatus::NotServing);
    s.health.set_service_status("svc", tonic_health::ServingStatus::Serving).await;

    // The proxy's own errors: gRPC statuses, never an HTTP error page.
    let cases = [
        ("empty", tonic::Code::Unavailable),
        ("dead", tonic::Code::Unavailable),
        ("slow", tonic::Code::DeadlineExceeded),
    ];
    for (target, code) in cases {
        let e = health.check(check("svc", Some(target))).await.unwrap_err();
        assert_eq!(e.code(), code, "{target}: {e:?}");
    }
    // grpc-timeout bounds the call below the route's timeout (30 s). (A raw call: tonic's
    // client would give up by itself at the same moment.)
    let mut client = h2c(s.listener).await;
    let call = |path: &str, timeout: Option<&str>, target: Option<&str>| {
        let mut req = http::Request::post(format!("http://{}{path}", s.listener))
            .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
            .unwrap();
        let h = req.headers_mut();
        h.insert("content-type", "application/grpc".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        if let Some(t) = timeout {
            h.insert("grpc-timeout", t.parse().unwrap());
        }
        if let Some(t) = target {
            h.insert("x-target", t.parse().unwrap());
        }
        req
    };
    let started = Instant::now();
    let r = send(&mut client, call("/grpc.health.v1.Health/Check", Some("200m"), Some("patient"))).await;
    assert_eq!((r.status, &r.headers["grpc-status"]), (200, &"4".parse::<http::HeaderValue>().unwrap()));
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(200) && took < Duration::from_secs(5), "{took:?}");

    // An endpoint's status in trailers reaches the raw client as trailers.
    let r = send(&mut client, call("/grpc.health.v1.Health/Check", None, None)).await;
    assert_eq!(r.status, 200);
    let trailers = r.trailers.expect("trailers");
    assert!(trailers.contains_key("grpc-status"), "{trailers:?}");

    // No route: UNIMPLEMENTED, as a trailers-only 200.
    let r = send(&mut client, call("/nope.Service/Call", None, None)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["grpc-status"], "12");
    assert_eq!(r.headers["grpc-message"], "no route");

    // Every call's status is counted, from the trailers of streamed answers too.
    let count = |route: &'static str, cluster: &'static str, status: &'static str| {
        let node = &s._node;
        async move {
            let labels = [("route", route), ("cluster", cluster), ("grpc_status", status)];
            metric(node, "sluice_grpc_responses_total", &labels).await.unwrap_or(0.0)
        }
    };
    // Check "svc" (twice), Watch (ended by the client: no trailers), the raw Check "".
    assert!(count("grpc", "grpc", "0").await >= 2.0);
    assert_eq!(count("grpc", "grpc", "5").await, 1.0, "NOT_FOUND from the endpoint's trailers");
    assert_eq!(count("grpc-empty", "empty", "14").await, 1.0);
    assert_eq!(count("grpc-dead", "dead", "14").await, 1.0);
    assert_eq!(count("grpc-slow", "silent", "4").await, 1.0);
    assert_eq!(count("grpc-patient", "silent", "4").await, 1.0);
    assert_eq!(count("", "", "12").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_checks_mark_an_endpoint_down_and_up() {
    let s = setup().await;
    let health = HealthClient::new(grpc_channel(s.listener).await);
    let code = || {
        let mut health = health.clone();
        async move { health.check(check("", Some("checked"))).await.err().map(|e| e.code()) }
    };
    eventually("the checked endpoint serves", || async { code().await.is_none().then_some(()) }).await;
    s.health.set_service_status("svc", tonic_health::ServingStatus::NotServing).await;
    eventually("NOT_SERVING marks it down", || async {
        (code().await == Some(tonic::Code::Unavailable)).then_some(())
    })
    .await;
    s.health.set_service_status("svc", tonic_health::ServingStatus::Serving).await;
    eventually("SERVING marks it up", || async { code().await.is_none().then_some(()) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bidi_stream_stays_up_across_config_swaps() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let s = setup().await;
    let mut client = ServerReflectionClient::new(grpc_channel(s.listener).await);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let ask = || ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    tx.send(ask()).await.unwrap();
    let mut answers =
        client.server_reflection_info(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    let services = |r: tonic_reflection::pb::v1::ServerReflectionResponse| match r.message_response {
        Some(MessageResponse::ListServicesResponse(l)) => l.service.into_iter().map(|s| s.name).collect::<Vec<_>>(),
        other => panic!("unexpected answer {other:?}"),
    };
    let first = answers.message().await.unwrap().unwrap();
    assert!(services(first).contains(&"grpc.health.v1.Health".to_string()));

    // New revisions (a route added, then the grpc route's cluster list rewritten) while the
    // stream is open: it goes on.
    let mut cfg = s.config.clone();
    cfg["routes"]["extra"] =
        json!({"listener": "main", "match": {"hosts": ["extra.test"]}, "backends": [{"cluster": "h1"}]});
    s.cp.send_snapshot(snapshot(&support::config(cfg.clone()), 2)).await;
    s.cp.expect_ack(2).await;
    cfg["routes"]["grpc"]["backends"] = json!([{"cluster": "grpc", "weight": 5}]);
    s.cp.send_snapshot(snapshot(&support::config(cfg), 3)).await;
    s.cp.expect_ack(3).await;
    for _ in 0..3 {
        tx.send(ask()).await.unwrap();
        let next = tokio::time::timeout(Duration::from_secs(5), answers.message()).await.unwrap().unwrap().unwrap();
        assert!(services(next).contains(&"grpc.health.v1.Health".to_string()));
    }
    drop(tx);
    assert!(tokio::time::timeout(Duration::from_secs(5), answers.message()).await.unwrap().unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resetting_its_streams_gets_goaway_and_others_are_served() {
    let s = setup().await;
    let stream = TcpStream::connect(s.listener).await.unwrap();
    let (sender, conn) = h2::client::handshake(stream).await.unwrap();
    let conn = tokio::spawn(conn);
    let attack = async move {
        let mut send = sender;
        for i in 0..10_000u32 {
            send = match send.ready().await {
                Ok(s) => s,
                Err(_) => return i,
            };
            let req = http::Request::get("http://h1.test/").body(()).unwrap();
            match send.send_request(req, true) {
                // Dropping the response future resets the stream (RST_STREAM CANCEL).
                Ok((response, _)) => drop(response),
                Err(_) => return i,
            }
        }
        10_000
    };
    let sent = tokio::time::timeout(Duration::from_secs(20), attack).await.expect("the attack was not stopped");
    let ended = tokio::time::timeout(Duration::from_secs(10), conn).await.expect("the connection stayed open").unwrap();
    let e = ended.expect_err("the proxy ended the connection");
    assert!(sent < 10_000, "all 10,000 streams were taken");
    // The GOAWAY, unless the close overtook it (the client still writing meets a reset).
    assert!(e.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM) || e.is_io(), "{e:?}");

    // Other clients are served as before.
    let mut other = h2c(s.listener).await;
    let r = send(&mut other, get("h1.test", "/")).await;
    assert_eq!(r.status, 200);
}

/// A TLS endpoint offering `alpn` that answers as [`h2c_backend`] does, in whichever HTTP
/// version ALPN chose.
async fn tls_backend(name: &'static str, cert: &sluice_e2e::tls::Pem, alpn: &[&[u8]]) -> SocketAddr {
    use rustls::pki_types::PrivateKeyDer;
    let key = PrivateKeyDer::try_from(rcgen::KeyPair::from_pem(&cert.key).unwrap().serialize_der()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(sluice_e2e::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der.clone()], key)
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| async move {
                    let text = format!("backend={name}\nversion={:?}\n", req.version());
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(text))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_offers_h2_by_alpn_and_auto_clusters_follow_the_endpoints_alpn() {
    use sluice_e2e::tls::{any_cert_client_config, self_signed, tls_connect};

    let cert = self_signed(&["backend.test"]);
    let h2_only = tls_backend("tls-h2", &cert, &[b"h2"]).await;
    let h1_only = tls_backend("tls-h1", &cert, &[b"http/1.1"]).await;
    let both = tls_backend("tls-both", &cert, &[b"h2", b"http/1.1"]).await;
    let site = self_signed(&["site.test"]);
    let (h2_listener, h1_listener) = (free_addr(), free_addr());
    let tls = json!({"ca_pem": cert.cert, "server_name": "backend.test"});
    let cfg = support::config(json!({
        "certificates": {"site": site.json()},
        "clusters": {
            "auto-h2": {"endpoints": [{"address": h2_only.to_string()}], "protocol": "auto", "tls": tls},
            "auto-h1": {"endpoints": [{"address": h1_only.to_string()}], "protocol": "auto", "tls": tls},
            "http1": {"endpoints": [{"address": both.to_string()}], "tls": tls},
            "http2": {"endpoints": [{"address": both.to_string()}], "protocol": "http2", "tls": tls}
        },
        "listeners": {
            "web": {"address": h2_listener.to_string(), "protocol": "https", "certificates": ["site"]},
            "web1": {"address": h1_listener.to_string(), "protocol": "https", "certificates": ["site"],
                     "http_versions": ["http1"]}
        },
        "routes": {
            "a": {"listener": "web", "match": {"hosts": ["a.test"]}, "backends": [{"cluster": "auto-h2"}]},
            "b": {"listener": "web", "match": {"hosts": ["b.test"]}, "backends": [{"cluster": "auto-h1"}]},
            "c": {"listener": "web", "match": {"hosts": ["c.test"]}, "backends": [{"cluster": "http1"}]},
            "d": {"listener": "web", "match": {"hosts": ["d.test"]}, "backends": [{"cluster": "http2"}]},
            "e": {"listener": "web1", "backends": [{"cluster": "http1"}]}
        }
    }));
    let cp = ControlPlane::start(Some(snapshot(&cfg, 1))).await;
    let _node = start_node(vec![cp.url()], None).await;
    cp.expect_ack(1).await;

    let connector = tokio_rustls::TlsConnector::from(Arc::new(any_cert_client_config(
        &[&rustls::version::TLS13],
        &[b"h2", b"http/1.1"],
    )));
    let tls =
        eventually("https listener up", || async { tls_connect(&connector, h2_listener, "site.test").await.ok() })
            .await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut client, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    for (host, want) in [
        ("a.test", "backend=tls-h2\nversion=HTTP/2.0"),
        ("b.test", "backend=tls-h1\nversion=HTTP/1.1"),
        ("b.test", "backend=tls-h1\nversion=HTTP/1.1"),
        ("c.test", "backend=tls-both\nversion=HTTP/1.1"),
        ("d.test", "backend=tls-both\nversion=HTTP/2.0"),
    ] {
        let r = send(&mut client, http::Request::get(format!("https://{host}/")).body(Full::default()).unwrap()).await;
        assert_eq!(r.status, 200, "{host}: {}", r.body);
        assert!(r.body.starts_with(want), "{host}: {}", r.body);
    }

    // curl negotiating h2 by ALPN (and HTTP/1.1 when asked to).
    let url = format!("https://site.test:{}/", h2_listener.port());
    let resolve = format!("site.test:{}:127.0.0.1", h2_listener.port());
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let args = vec![
            flag.into(),
            "-k".into(),
            "--resolve".into(),
            resolve.clone(),
            "-H".into(),
            "Host: d.test".into(),
            url.clone(),
        ];
        let out = curl(args).await;
        assert!(out.ends_with(&format!("\n{version}")), "{flag}: {out}");
        assert!(out.starts_with("backend=tls-both\nversion=HTTP/2.0"), "{flag}: {out}");
    }

    // A listener restricted to HTTP/1.1 offers only that.
    let tls =
        eventually("second listener up", || async { tls_connect(&connector, h1_listener, "site.test").await.ok() })
            .await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_head_limits_hold_for_http2_and_quiet_or_old_connections_get_goaway() {
    let s = setup().await;
    let mut client = h2c(s.listener).await;
    let long = format!("/{}", "a".repeat(9 * 1024));
    let r = send(&mut client, get("h1.test", &long)).await;
    assert_eq!(r.status, 414);
    let mut many = get("h1.test", "/");
    for i in 0..101 {
        many.headers_mut().insert(http::HeaderName::try_from(format!("x-h{i}")).unwrap(), "1".parse().unwrap());
    }
    assert_eq!(send(&mut client, many).await.status, 431);
    // 150 cookie crumbs are one field once joined: not over the limit.
    let mut crumbs = get("h1.test", "/");
    for i in 0..150 {
        crumbs.headers_mut().append("cookie", format!("c{i}=1").parse().unwrap());
    }
    let r = send(&mut client, crumbs).await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("c0=1; c1=1") && r.body.contains("c149=1"), "{}", r.body);

    // A connection with no stream for the idle timeout gets a graceful GOAWAY, then closes.
    eventually("idle listener up", || async { TcpStream::connect(s.idle).await.ok() }).await;
    let started = Instant::now();
    let stream = TcpStream::connect(s.idle).await.unwrap();
    let (_send, conn) = h2::client::handshake(stream).await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await.expect("the idle connection stayed open");
    assert!(ended.is_ok(), "a graceful close, not an error: {ended:?}");
    assert!(started.elapsed() >= Duration::from_millis(300), "{:?}", started.elapsed());

    // One past its maximum age is retired the same way, though busy; its streams are answered.
    eventually("aged listener up", || async { TcpStream::connect(s.aged).await.ok() }).await;
    let mut aged = h2c(s.aged).await;
    let started = Instant::now();
    let mut answered = 0;
    while started.elapsed() < Duration::from_secs(5) {
        if aged.ready().await.is_err() {
            break;
        }
        let Ok(resp) = aged.send_request(get("h1.test", "/")).await else { break };
        assert_eq!(resp.status(), 200);
        answered += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed();
    assert!(answered > 5, "{answered}");
    assert!(took >= Duration::from_millis(500) && took < Duration::from_secs(3), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_listener_finishes_its_streams_then_says_goaway() {
    let s = setup().await;
    let stream = TcpStream::connect(s.listener).await.unwrap();
    let (client, conn) = h2::client::handshake(stream).await.unwrap();
    let conn = tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    // In flight when the listener goes: the backend answers /slow after 2 s.
    let before = s.h1.hits();
    let (slow, _) = client.send_request(http::Request::get("http://h1.test/slow").body(()).unwrap(), true).unwrap();
    // Routed and at the endpoint before the listener is withdrawn, so the drain is what is tested.
    eventually("the slow request reached the endpoint", || async { (s.h1.hits() > before).then_some(()) }).await;

    let mut cfg = s.config.clone();
    cfg["listeners"].as_object_mut().unwrap().remove("main");
    cfg["routes"].as_object_mut().unwrap().retain(|_, r| r["listener"] != "main");
    s.cp.send_snapshot(snapshot(&support::config(cfg), 2)).await;
    s.cp.expect_ack(2).await;

    let resp = tokio::time::timeout(Duration::from_secs(10), slow).await.expect("the stream was answered").unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = Vec::new();
    while let Some(chunk) = body.data().await {
        got.extend_from_slice(&chunk.unwrap());
    }
    assert!(String::from_utf8_lossy(&got).contains("path=/slow"));
    // Then the connection ends gracefully: GOAWAY (NO_ERROR) and a close, no stream cut.
    let ended = tokio::time::timeout(Duration::from_secs(10), conn).await.expect("the connection ended").unwrap();
    assert!(ended.is_ok(), "{ended:?}");
}
