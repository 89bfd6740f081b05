//! Endpoints by DNS name, end to end: a node resolving through a DNS server of the test's own
//! (real UDP on loopback) balances over every address of the answer, follows a changed answer
//! within the TTL bound, and keeps the last good answer while the server fails.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use sluice_data_plane::{DnsOptions, Node, NodeOptions};
use support::*;
use tokio::net::{TcpListener, UdpSocket};

/// What the DNS server answers to an A query: these addresses with this TTL, or SERVFAIL.
#[derive(Clone)]
enum Answer {
    A(Vec<Ipv4Addr>, u32),
    ServFail,
}

struct DnsServer {
    addr: SocketAddr,
    answer: Arc<Mutex<Answer>>,
    queries: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl DnsServer {
    async fn start(answer: Answer) -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let answer = Arc::new(Mutex::new(answer));
        let queries = Arc::new(AtomicUsize::new(0));
        let (a, q) = (answer.clone(), queries.clone());
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else { return };
                q.fetch_add(1, Ordering::SeqCst);
                let current = a.lock().unwrap().clone();
                if let Some(reply) = reply(&buf[..n], &current) {
                    let _ = socket.send_to(&reply, from).await;
                }
            }
        });
        DnsServer { addr, answer, queries, task }
    }

    fn set(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A response to one query (RFC 1035 §4.1): the question echoed, then A records for an A query,
/// no records (NODATA) for any other type.
fn reply(query: &[u8], answer: &Answer) -> Option<Vec<u8>> {
    let mut at = 12;
    while *query.get(at)? != 0 {
        at += 1 + usize::from(query[at]);
    }
    let question_end = at + 5;
    let qtype = u16::from_be_bytes([*query.get(at + 1)?, *query.get(at + 2)?]);
    let mut out = query[..2].to_vec();
    let (flags, records): (u16, &[Ipv4Addr]) = match answer {
        Answer::ServFail => (0x8182, &[]),
        Answer::A(ips, _) if qtype == 1 => (0x8180, ips),
        Answer::A(..) => (0x8180, &[]),
    };
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(records.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(query.get(12..question_end)?);
    let ttl = match answer {
        Answer::A(_, ttl) => *ttl,
        Answer::ServFail => 0,
    };
    for ip in records {
        out.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        out.extend_from_slice(&ttl.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&ip.octets());
    }
    Some(out)
}

/// Two backends on one port, at 127.0.0.1 and 127.0.0.2 (a name's answer carries addresses,
/// the port is the endpoint's).
async fn backends_on_one_port() -> (Backend, Backend, u16) {
    for _ in 0..20 {
        let one = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = one.local_addr().unwrap().port();
        if let Ok(two) = TcpListener::bind(("127.0.0.2", port)).await {
            return (Backend::start_on("one", one), Backend::start_on("two", two), port);
        }
    }
    panic!("no port free on both 127.0.0.1 and 127.0.0.2");
}

/// Which backend each of `n` requests reached.
async fn spread(listener: SocketAddr, n: usize) -> (usize, usize) {
    let (mut one, mut two) = (0, 0);
    for _ in 0..n {
        let r = get(listener, "api.test", "/").await;
        assert_eq!(r.status, 200, "{}", r.raw);
        if r.body.contains("backend=one") {
            one += 1;
        } else if r.body.contains("backend=two") {
            two += 1;
        }
    }
    (one, two)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_balances_over_its_answer_follows_changes_and_survives_a_failing_server() {
    let (one, two, port) = backends_on_one_port().await;
    let ips = |v: &[[u8; 4]]| v.iter().map(|o| Ipv4Addr::from(*o)).collect::<Vec<_>>();
    let dns = DnsServer::start(Answer::A(ips(&[[127, 0, 0, 1], [127, 0, 0, 2]]), 1)).await;
    let listener = free_addr();
    let cfg = config(json!({
        "clusters": {"api": {"endpoints": [{"address": format!("api.test:{port}")}]}},
        "listeners": {"web": {"address": listener.to_string(), "protocol": "http"}},
        "routes": {"api": {"listener": "web", "backends": [{"cluster": "api"}]}}
    }));
    let cp = ControlPlane::start(Some(snapshot(&cfg, 1))).await;
    let max_ttl = Duration::from_secs(1);
    let node = Node::start(NodeOptions {
        control_planes: vec![cp.url()],
        node_id: "dns-node".into(),
        group: "default".into(),
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        cache_dir: None,
        control_plane_tls: None,
        dns: DnsOptions {
            servers: vec![dns.addr],
            min_ttl: Duration::from_millis(100),
            max_ttl,
            timeout: Duration::from_millis(500),
        },
        upgrade_socket: None,
        shutdown_drain: Some(Duration::from_secs(5)),
    })
    .await
    .unwrap();
    cp.expect_ack(1).await;

    // Both addresses of the answer take traffic.
    let (to_one, to_two) = spread(listener, 40).await;
    assert!(to_one > 5 && to_two > 5, "one {to_one}, two {to_two}");

    // The answer changes: within the TTL (1 s, plus a lookup) every request goes to the new set.
    dns.set(Answer::A(ips(&[[127, 0, 0, 2]]), 1));
    let changed = Instant::now();
    eventually("traffic follows the new answer", || async { (spread(listener, 10).await.0 == 0).then_some(()) }).await;
    let moved_after = changed.elapsed();
    println!("traffic followed a changed answer after {moved_after:?}");
    assert!(moved_after < max_ttl + Duration::from_secs(1), "{moved_after:?}");
    let hits_one = one.hits();
    assert_eq!(spread(listener, 20).await, (0, 20));
    assert_eq!(one.hits(), hits_one);

    // The server fails: lookups go on (and fail), the last good answer keeps serving.
    dns.set(Answer::ServFail);
    let before = dns.queries();
    eventually("failed lookups", || async { (dns.queries() >= before + 2).then_some(()) }).await;
    assert_eq!(spread(listener, 20).await, (0, 20));
    assert!(two.hits() >= 40);

    // It answers again, with another address: traffic moves there.
    dns.set(Answer::A(ips(&[[127, 0, 0, 1]]), 1));
    eventually("traffic follows the recovered server", || async { (spread(listener, 10).await.1 == 0).then_some(()) })
        .await;
    node.shutdown().await;
}
