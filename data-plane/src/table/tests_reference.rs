//! Property-style check: `find` agrees with a naive reference (scan every route, rank by the rules
//! of DESIGN §3 written out directly) over random route sets and requests, from a fixed seed.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
use std::sync::{LazyLock, Mutex};

use http::{HeaderMap, HeaderValue, Method};
use sluice_shared::model::{PathKind, PathMatch, Route, RouteMatch, ValueKind, ValueMatch, WeightedCluster};

use super::tests_precedence::config;
use super::*;

/// SplitMix64: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

const HOST_PATTERNS: &[&str] = &["a.com", "b.a.com", "x.b.a.com", "c.org", "*.a.com", "*.b.a.com", "*.org", "*.com"];
const HOSTS: &[&str] = &["a.com", "b.a.com", "x.b.a.com", "y.b.a.com", "z.a.com", "c.org", "d.c.org", "org", "q.net"];
const EXACT_PATHS: &[&str] = &["/", "/a", "/a/b", "/ab", "/a/b/c"];
const PREFIXES: &[&str] = &["/", "/a", "/a/", "/a/b", "/ab", "/b", "/a/b/c"];
const REGEXES: &[&str] = &["^/a", "b$", "^/a/b/c$", "[0-9]"];
const PATHS: &[&str] = &["/", "/a", "/a/", "/a/b", "/a/b/c", "/a/b/c/d", "/ab", "/abc", "/b", "/c1", "/b/b"];
const VALUES: &[&str] = &["1", "2", "3"];

/// The reference compiles each pattern of the fixed pools once (debug-build regex compiles are slow).
fn re(pattern: &str) -> regex::Regex {
    static CACHE: LazyLock<Mutex<HashMap<String, regex::Regex>>> = LazyLock::new(Default::default);
    let mut cache = CACHE.lock().unwrap();
    cache.entry(pattern.to_string()).or_insert_with(|| regex::Regex::new(pattern).unwrap()).clone()
}

fn value_match(rng: &mut Rng, names: &[&str]) -> ValueMatch {
    let name = rng.pick(names).to_string();
    match rng.below(4) {
        0 => ValueMatch { name, exact: Some(rng.pick(VALUES).into()), ..Default::default() },
        1 => ValueMatch { name, regex: Some("^[12]$".into()), ..Default::default() },
        p => ValueMatch { name, present: Some(p == 2), ..Default::default() },
    }
}

fn random_route(rng: &mut Rng) -> Route {
    let mut m = RouteMatch::default();
    if rng.chance(60) {
        m.hosts = (0..1 + rng.below(2)).map(|_| rng.pick(HOST_PATTERNS).to_string()).collect();
    }
    m.path = match rng.below(5) {
        0 => None,
        1 => Some(PathMatch { exact: Some(rng.pick(EXACT_PATHS).into()), ..Default::default() }),
        2 => Some(PathMatch { regex: Some(rng.pick(REGEXES).into()), ..Default::default() }),
        _ => Some(PathMatch { prefix: Some(rng.pick(PREFIXES).into()), ..Default::default() }),
    };
    if rng.chance(25) {
        m.methods = if rng.chance(50) { vec!["GET".into()] } else { vec!["GET".into(), "POST".into()] };
    }
    m.headers = (0..rng.below(3).saturating_sub(1)).map(|_| value_match(rng, &["x-a", "X-B"])).collect();
    m.query = (0..rng.below(3).saturating_sub(1)).map(|_| value_match(rng, &["q", "r s"])).collect();
    Route {
        listener: "web".into(),
        priority: [0, 0, 0, 1, -1][rng.below(5)],
        matcher: m,
        backends: vec![WeightedCluster { cluster: "a".into(), weight: 1 }],
        timeout_ms: None,
        sticky: None,
        hash_on: None,
        retries: None,
        https_redirect: None,
        max_request_body_bytes: None,
        allow_from: Vec::new(),
        deny_from: Vec::new(),
        direct_response: None,
        redirect: None,
        rewrite: None,
        request_headers: None,
        response_headers: None,
        rate_limit: None,
        mirror: None,
    }
}

/// Host tier of the best pattern that matches: exact (2) > wildcard (1, longer suffix first) > any (0).
fn host_tier(hosts: &[String], host: Option<&str>) -> Option<(u8, usize)> {
    if hosts.is_empty() {
        return Some((0, 0));
    }
    let host = host?;
    hosts
        .iter()
        .filter_map(|p| match p.strip_prefix("*.") {
            Some(s) => {
                let matches = host.len() > s.len() + 1
                    && host.ends_with(s)
                    && host[..host.len() - s.len()].ends_with('.')
                    && !host.starts_with('.');
                matches.then_some((1, s.len()))
            }
            None => (p == host).then_some((2, 0)),
        })
        .max()
}

fn path_tier(m: &RouteMatch, path: &str) -> Option<(u8, usize)> {
    match m.path.as_ref().map(|p| p.kind().unwrap()) {
        None => Some((0, 0)),
        Some(PathKind::Regex(r)) => re(r).is_match(path).then_some((1, 0)),
        Some(PathKind::Prefix(p)) => path.starts_with(p).then_some((2, p.len())),
        Some(PathKind::Exact(p)) => (path == p).then_some((3, 0)),
    }
}

fn value_ok(kind: ValueKind<'_>, mut values: Vec<String>) -> bool {
    match kind {
        ValueKind::Present(p) => values.is_empty() != p,
        ValueKind::Exact(e) => values.iter().any(|v| v == e),
        ValueKind::Regex(r) => values.iter_mut().any(|v| re(r).is_match(v)),
    }
}

/// Query decoding written independently of the module's: `+` is a space, `%XX` a byte.
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let (mut out, mut i) = (Vec::new(), 0);
    while i < b.len() {
        if b[i] == b'%' && i + 3 <= b.len() {
            if let Ok(v) = u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn reference<'r>(routes: &'r [(String, Route)], req: &RequestView<'_>) -> Option<&'r str> {
    let pairs: Vec<(String, String)> = req
        .query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (n, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(n), decode(v))
        })
        .collect();
    routes
        .iter()
        .filter_map(|(name, r)| {
            let m = &r.matcher;
            let host = host_tier(&m.hosts, req.host)?;
            let path = path_tier(m, req.path)?;
            if !m.methods.is_empty() && !m.methods.iter().any(|x| x == req.method.as_str()) {
                return None;
            }
            for h in &m.headers {
                let values = req.headers.get_all(h.name.to_lowercase()).iter();
                let values = values.map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).collect();
                if !value_ok(h.kind().unwrap(), values) {
                    return None;
                }
            }
            for q in &m.query {
                let values = pairs.iter().filter(|(n, _)| *n == q.name).map(|(_, v)| v.clone()).collect();
                if !value_ok(q.kind().unwrap(), values) {
                    return None;
                }
            }
            let count = usize::from(!m.methods.is_empty()) + m.headers.len() + m.query.len();
            Some(((r.priority, host, path, count, Reverse(name.as_str())), name.as_str()))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, name)| name)
}

#[test]
fn find_agrees_with_reference() {
    let mut rng = Rng(0x5eed_1234);
    let mut checked = 0;
    for _ in 0..150 {
        let mut cfg = config(&[]);
        let count = 1 + rng.below(40);
        let mut names = BTreeSet::new();
        while names.len() < count {
            names.insert(format!("r{}", rng.below(1000)));
        }
        for name in names {
            cfg.routes.insert(name, random_route(&mut rng));
        }
        cfg.validate().unwrap();
        let table = compile(&cfg, None).unwrap();
        let web = table.listener("web").unwrap();
        let routes: Vec<(String, Route)> = cfg.routes.into_iter().collect();
        for _ in 0..200 {
            let method = [Method::GET, Method::POST, Method::PUT][rng.below(3)].clone();
            let host = if rng.chance(90) { Some(rng.pick(HOSTS)) } else { None };
            let path = rng.pick(PATHS);
            let mut headers = HeaderMap::new();
            for name in ["x-a", "x-b"] {
                for _ in 0..rng.below(3).saturating_sub(1) {
                    headers.append(name, HeaderValue::from_static(rng.pick(VALUES)));
                }
            }
            let query: String = (0..rng.below(4))
                .map(|_| {
                    let name = rng.pick(&["q", "r+s", "r%20s", "x", "q%3D"]);
                    match rng.below(3) {
                        0 => name.to_string(),
                        _ => format!("{name}={}", rng.pick(&["1", "2", "%31", "3+"])),
                    }
                })
                .collect::<Vec<_>>()
                .join("&");
            let query = if query.is_empty() && rng.chance(50) { None } else { Some(query.as_str()) };
            let req = RequestView { method: &method, host, path, query, headers: &headers };
            let got = web.find(&req).map(|r| r.name());
            assert_eq!(got, reference(&routes, &req), "request {req:?}\nroutes {routes:#?}");
            checked += usize::from(got.is_some());
        }
    }
    assert!(checked > 5_000, "the generator should produce plenty of matches, got {checked}");
}
