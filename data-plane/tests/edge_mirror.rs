//! Request mirroring end to end: the mirror cluster gets a copy (method, path, body, headers, a
//! `-shadow` Host), the client gets the real endpoint's answer and never waits for the mirror,
//! and a share of the requests is copied as configured.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

/// A mirror that answers after 2 s: a client waiting on it would show.
async fn slow_mirror() -> (std::net::SocketAddr, Controlled) {
    let mirror = Controlled::start("mirror").await;
    mirror.set_delay(Duration::from_secs(2));
    (mirror.addr, mirror)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_goes_to_the_mirror_and_the_client_never_waits_for_it() {
    let app = Backend::start("app").await;
    let copies = Backend::start("copy").await;
    let (slow_addr, slow) = slow_mirror().await;
    let listener = free_addr();
    let cfg = config(json!({
        "clusters": {
            "app": {"endpoints": [{"address": app.addr.to_string()}]},
            "copy": {"endpoints": [{"address": copies.addr.to_string()}]},
            "slow": {"endpoints": [{"address": slow_addr.to_string()}]}
        },
        "listeners": {"web": {"address": listener.to_string(), "protocol": "http"}},
        "routes": {
            "all": {"listener": "web", "match": {"hosts": ["all.test"]}, "backends": [{"cluster": "app"}],
                    "mirror": {"cluster": "copy"}},
            "slow": {"listener": "web", "match": {"hosts": ["slow.test"]}, "backends": [{"cluster": "app"}],
                     "mirror": {"cluster": "slow"}},
            "half": {"listener": "web", "match": {"hosts": ["half.test"]}, "backends": [{"cluster": "app"}],
                     "mirror": {"cluster": "copy", "percent": 50}}
        }
    }));
    let (_cp, node) = node_with(&cfg).await;

    let r = raw(
        listener,
        b"POST /orders?x=1 HTTP/1.1\r\nHost: all.test\r\nContent-Length: 5\r\nX-Trace: t1\r\nConnection: close\r\n\r\nhello",
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.body.starts_with("backend=app\n"), "the client gets the real answer: {}", r.body);
    // The copy arrives on its own: the mirror's own log of what it got.
    eventually("the copy at the mirror", || async { (copies.hits() == 1).then_some(()) }).await;
    let copy = copies.last_request();
    assert!(copy.contains("path=/orders\n") && copy.contains("body=hello\n"), "{copy}");
    assert!(copy.contains("host: all.test-shadow\n") && copy.contains("x-trace: t1\n"), "{copy}");
    assert!(copy.contains("x-forwarded-for: 127.0.0.1\n"), "{copy}");

    // A mirror that takes 2 s to answer: the client's requests take what the endpoint takes.
    let started = Instant::now();
    for _ in 0..5 {
        assert_eq!(get(listener, "slow.test", "/").await.status, 200);
    }
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    eventually("the slow mirror got its copies", || async { (slow.hits() == 5).then_some(()) }).await;

    // Half of the requests, give or take chance.
    let before = copies.hits();
    for _ in 0..200 {
        assert_eq!(get(listener, "half.test", "/").await.status, 200);
    }
    let mirrored = metric(&node, "sluice_route_mirrored_total", &[("route", "half")]).await.unwrap() as usize;
    assert!((60..=140).contains(&mirrored), "{mirrored} of 200");
    eventually("every half copy arrived", || async { (copies.hits() == before + mirrored).then_some(()) }).await;
}
