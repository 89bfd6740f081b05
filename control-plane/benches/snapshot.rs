//! Building and encoding one group's snapshot for a large config: 10,000 routes over 1,000 clusters.
//! `build+encode` is what a group pays once per changed revision; `per-node message` is what each
//! node of the group adds (header + copy of the shared encoding); `rebuild unchanged` is what a
//! revision that leaves the group's content alone costs (hash, no conversion).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use sluice_control_plane::stream::GroupSnapshot;
use sluice_shared::model::{Cluster, Listener, Route};
use sluice_shared::validate::parse_json;
use sluice_shared::Config;

const ROUTES: usize = 10_000;
const CLUSTERS: usize = 1_000;
const NONCE: &str = "0123456789abcdef0123456789abcdef";
/// A sticky-cookie key as the store holds one (32 bytes).
static KEY: prost::bytes::Bytes = prost::bytes::Bytes::from_static(&[7; 32]);

fn json<T: serde::de::DeserializeOwned>(s: &str) -> T {
    parse_json(s.as_bytes()).unwrap()
}

fn large_config() -> Config {
    let mut c = Config::default();
    for i in 0..CLUSTERS {
        let (a, b) = (10_000 + 2 * i, 10_001 + 2 * i);
        let spec = format!(
            r#"{{"lb_policy":"least_request","endpoints":[{{"address":"10.0.{}.{}:{a}"}},{{"address":"10.1.{}.{}:{b}","weight":2}}],
                "health_check":{{"http":{{"path":"/healthz"}}}}}}"#,
            i / 250,
            i % 250,
            i / 250,
            i % 250
        );
        c.clusters.insert(format!("svc-{i}"), json::<Cluster>(&spec));
    }
    for l in 0..10 {
        let spec = format!(r#"{{"address":"0.0.0.0:{}","protocol":"http"}}"#, 8000 + l);
        c.listeners.insert(format!("web-{l}"), json::<Listener>(&spec));
    }
    for i in 0..ROUTES {
        let spec = format!(
            r#"{{"listener":"web-{}","priority":{},"match":{{"hosts":["shop-{}.example.com","*.shop-{}.example.com"],
                "path":{{"prefix":"/api/v{}/items-{i}/"}},"methods":["GET","POST"],"headers":[{{"name":"x-canary","exact":"1"}}]}},
                "backends":[{{"cluster":"svc-{}","weight":90}},{{"cluster":"svc-{}","weight":10}}],"timeout_ms":15000,
                "retries":{{"attempts":2,"on":["connect_failure","5xx"]}}}}"#,
            i % 10,
            i % 3,
            i % 100,
            i % 100,
            i % 7,
            i % CLUSTERS,
            (i + 1) % CLUSTERS
        );
        c.routes.insert(format!("route-{i}"), json::<Route>(&spec));
    }
    c
}

fn snapshot(c: &mut Criterion) {
    let config = large_config();
    config.validate().unwrap();
    let built = GroupSnapshot::build(&config, "default", 1, None);
    let mut encoded = Vec::new();
    built.outgoing(NONCE.into(), "cp-bench", &KEY).encode(&mut encoded);
    let decoded = built.message(NONCE.into(), "cp-bench");
    assert_eq!(decoded.routes.len(), ROUTES);
    assert_eq!(decoded.clusters.len(), CLUSTERS);
    println!(
        "group snapshot: {ROUTES} routes, {CLUSTERS} clusters -> {} bytes encoded ({:.2} MiB)",
        encoded.len(),
        encoded.len() as f64 / (1024.0 * 1024.0)
    );

    let mut g = c.benchmark_group("group_snapshot_10k_routes_1k_clusters");
    g.sample_size(20);
    g.bench_function("build+encode", |b| {
        b.iter(|| {
            let s = GroupSnapshot::build(black_box(&config), "default", 2, None);
            let mut buf = Vec::with_capacity(s.encoded.len() + 64);
            s.outgoing(NONCE.into(), "cp-bench", &KEY).encode(&mut buf);
            black_box(buf)
        })
    });
    g.bench_function("per-node message (shared encoding)", |b| {
        b.iter(|| {
            let mut buf = Vec::with_capacity(built.encoded.len() + 64);
            built.outgoing(NONCE.into(), "cp-bench", &KEY).encode(&mut buf);
            black_box(buf)
        })
    });
    g.bench_function("rebuild unchanged (hash, reuse)", |b| {
        b.iter(|| black_box(GroupSnapshot::build(black_box(&config), "default", 3, Some(&built))))
    });
    g.finish();
}

criterion_group!(benches, snapshot);
criterion_main!(benches);
