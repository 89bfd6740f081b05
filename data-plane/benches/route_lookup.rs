//! Route lookup with 10, 1,000 and 10,000 routes, and compile time for 10,000 routes.
//!
//! The route mix: one host per 20 routes (`sN.example.com`), per host mostly prefixes, some exact
//! paths, one regex, one header-conditioned prefix and one `*.tN.example.com` wildcard route, plus
//! two routes without hosts. Requests: 80% aimed at a route (below its prefix), 20% misses
//! (unknown host or path), cycling through 1,024 pre-built requests.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, HeaderValue, Method};
use sluice_data_plane::table::{compile, RequestView};
use sluice_shared::validate::parse_json;
use sluice_shared::Config;

fn route_json(i: usize, hosts: usize) -> String {
    // Each host gets a block of 20 consecutive routes, one of each kind.
    let (h, n) = ((i / 20) % hosts, i);
    let (host, matcher) = match i % 20 {
        0..=11 => (format!("s{h}.example.com"), format!(r#""path":{{"prefix":"/api/v{}/r{n}/"}}"#, n % 3)),
        12..=16 => (format!("s{h}.example.com"), format!(r#""path":{{"exact":"/items/{n}"}}"#)),
        17 => (format!("s{h}.example.com"), format!(r#""path":{{"regex":"^/v[0-9]+/x{n}/"}}"#)),
        18 => (
            format!("s{h}.example.com"),
            format!(r#""path":{{"prefix":"/api/"}},"headers":[{{"name":"x-canary","exact":"{n}"}}]"#),
        ),
        _ => (format!("*.t{h}.example.com"), format!(r#""path":{{"prefix":"/t/{n}/"}}"#)),
    };
    format!(
        r#"{{"listener":"web","priority":{},"match":{{"hosts":["{host}"],{matcher}}},"backends":[{{"cluster":"c{}","weight":90}},{{"cluster":"c{}","weight":10}}]}}"#,
        i32::from(i.is_multiple_of(50)),
        i % 50,
        (i + 1) % 50
    )
}

fn config(routes: usize) -> Config {
    let mut cfg = Config::default();
    for c in 0..50 {
        let json = format!(r#"{{"endpoints":[{{"address":"10.0.{c}.1:80"}},{{"address":"10.0.{c}.2:80"}}]}}"#);
        cfg.clusters.insert(format!("c{c}"), parse_json(json.as_bytes()).unwrap());
    }
    cfg.listeners.insert("web".into(), parse_json(br#"{"address":"127.0.0.1:8080","protocol":"http"}"#).unwrap());
    let hosts = (routes / 20).max(1);
    for i in 0..routes.saturating_sub(2) {
        cfg.routes.insert(format!("r{i:05}"), parse_json(route_json(i, hosts).as_bytes()).unwrap());
    }
    for (name, json) in [
        ("fallback", r#"{"listener":"web","match":{"path":{"prefix":"/"}},"backends":[{"cluster":"c0"}]}"#),
        ("healthz", r#"{"listener":"web","match":{"path":{"exact":"/healthz"}},"backends":[{"cluster":"c1"}]}"#),
    ] {
        cfg.routes.insert(name.into(), parse_json(json.as_bytes()).unwrap());
    }
    cfg.validate().unwrap();
    cfg
}

struct OwnedRequest {
    host: Option<String>,
    path: String,
    headers: HeaderMap,
}

impl OwnedRequest {
    fn view(&self) -> RequestView<'_> {
        RequestView {
            method: &Method::GET,
            host: self.host.as_deref(),
            path: &self.path,
            query: None,
            headers: &self.headers,
        }
    }
}

/// wyhash-style mixing for a deterministic request mix.
fn mix(x: u64) -> u64 {
    let t = u128::from(x.wrapping_add(0xa076_1d64_78bd_642f)) * u128::from(x ^ 0xe703_7ed1_a0b4_28db);
    ((t >> 64) as u64) ^ (t as u64)
}

fn requests(routes: usize) -> Vec<OwnedRequest> {
    let hosts = (routes / 20).max(1);
    (0..1024u64)
        .map(|k| {
            let r = mix(k) as usize;
            let i = r % routes.saturating_sub(2).max(1);
            let (h, n) = ((i / 20) % hosts, i);
            let mut headers = HeaderMap::new();
            let (host, path) = match (r >> 32) % 10 {
                8 => (format!("unknown{k}.example.org"), "/api/v1/r1/x".to_string()),
                9 => (format!("s{h}.example.com"), "/nothing/here".to_string()),
                _ => match i % 20 {
                    0..=11 => (format!("s{h}.example.com"), format!("/api/v{}/r{n}/items/42", n % 3)),
                    12..=16 => (format!("s{h}.example.com"), format!("/items/{n}")),
                    17 => (format!("s{h}.example.com"), format!("/v2/x{n}/y")),
                    18 => {
                        headers.insert("x-canary", HeaderValue::from_str(&n.to_string()).unwrap());
                        (format!("s{h}.example.com"), "/api/z".to_string())
                    }
                    _ => (format!("app.t{h}.example.com"), format!("/t/{n}/page")),
                },
            };
            OwnedRequest { host: Some(host), path, headers }
        })
        .collect()
}

fn lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_lookup");
    for size in [10usize, 1_000, 10_000] {
        let table = compile(&config(size), None).unwrap();
        let web = table.listener("web").unwrap();
        let reqs = requests(size);
        let matched = reqs
            .iter()
            .filter(|r| {
                let view = r.view();
                web.find(&view).is_some_and(|e| e.name() != "fallback")
            })
            .count();
        eprintln!("{size} routes: {matched} of {} requests hit a specific route", reqs.len());
        group.bench_with_input(BenchmarkId::from_parameter(size), &reqs, |b, reqs| {
            let mut k = 0usize;
            b.iter(|| {
                let r = &reqs[k % reqs.len()];
                k += 1;
                let view = r.view();
                black_box(web.find(black_box(&view)).map(|e| e.pick_cluster().map_or(0, |c| c.name().len())))
            })
        });
    }
    group.finish();
}

fn compile_10k(c: &mut Criterion) {
    let cfg = config(10_000);
    let previous = compile(&cfg, None).unwrap();
    let mut group = c.benchmark_group("compile");
    group.sample_size(10);
    group.bench_function("10000_routes", |b| b.iter(|| black_box(compile(black_box(&cfg), None).unwrap())));
    group.bench_function("10000_routes_with_previous", |b| {
        b.iter(|| black_box(compile(black_box(&cfg), Some(&previous)).unwrap()))
    });
    group.finish();
}

criterion_group!(benches, lookup, compile_10k);
criterion_main!(benches);
