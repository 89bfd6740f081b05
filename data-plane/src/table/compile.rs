//! Config -> [`Table`]: done once per revision, off the hot path.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice_shared::cidr::CidrError;
use sluice_shared::endpoint_address::EndpointAddress;
use sluice_shared::model::{Cluster, Route};
use sluice_shared::Config;

use super::breaker::Breaker;
use super::http_options::HttpOptions;
use super::index::RouteIndex;
use super::lb::{ClusterLb, EndpointState, LbEndpoint};
use super::matcher::Conditions;
use super::outlier::OutlierPolicy;
use super::retry::RetryPolicy;
use super::route::{RouteEntry, WeightedBackend};
use super::sni::SniMap;
use super::RateLimiter;
use super::{CompileError, ListenerTable, Table};

/// Compiles a (validated) config into an immutable table. Live state is carried over from
/// `previous`: endpoint states per (cluster name, address) and route counters per route name.
/// Anything that would make lookup or balancing misbehave is an error rather than a panic later.
pub fn compile(cfg: &Config, previous: Option<&Table>) -> Result<Table, CompileError> {
    let mut clusters = HashMap::with_capacity(cfg.clusters.len());
    for (name, c) in &cfg.clusters {
        let reuse = previous.and_then(|p| p.clusters.get(name.as_str()));
        clusters.insert(name.clone(), Arc::new(compile_cluster(name, c, reuse)?));
    }
    let old_routes: HashMap<&str, &RouteEntry> = previous
        .map(|p| p.listeners.values().flat_map(|l| l.routes.iter()).map(|r| (r.name(), r)).collect())
        .unwrap_or_default();

    // Routes by listener, in name order (BTreeMap order), which the index's tie-break relies on.
    let mut by_listener: BTreeMap<&str, Vec<(&str, &Route)>> = BTreeMap::new();
    for (name, r) in &cfg.routes {
        if !cfg.listeners.contains_key(&r.listener) {
            return Err(CompileError::new(
                format!("routes.{name}.listener"),
                format!("listener {} does not exist", r.listener),
            ));
        }
        by_listener.entry(r.listener.as_str()).or_default().push((name, r));
    }

    let mut listeners = BTreeMap::new();
    for (name, l) in &cfg.listeners {
        let field = format!("listeners.{name}");
        let address: SocketAddr = l
            .address
            .parse()
            .map_err(|_| CompileError::new(format!("{field}.address"), format!("{:?} is not IP:port", l.address)))?;
        let cluster = match &l.cluster {
            Some(c) => Some(lookup(&clusters, &format!("{field}.cluster"), c)?),
            None => None,
        };
        let mut proxy_protocol_from = Vec::with_capacity(l.proxy_protocol_from.len());
        for (i, net) in l.proxy_protocol_from.iter().enumerate() {
            let net = net.parse().map_err(|e: CidrError| {
                CompileError::new(format!("{field}.proxy_protocol_from[{i}]"), e.to_string())
            })?;
            proxy_protocol_from.push(net);
        }
        let mut sni = SniMap::default();
        for (host, c) in &l.sni {
            sni.insert(host, lookup(&clusters, &format!("{field}.sni.{host}"), c)?);
        }
        let mut routes = Vec::new();
        let mut hosts = Vec::new();
        for (route_name, r) in by_listener.remove(name.as_str()).unwrap_or_default() {
            routes.push(compile_route(route_name, r, &clusters, old_routes.get(route_name).copied())?);
            let mut patterns: Vec<String> = r.matcher.hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
            patterns.sort();
            patterns.dedup();
            hosts.push(patterns);
        }
        let index = RouteIndex::build(&routes, &hosts);
        listeners.insert(
            name.clone(),
            ListenerTable {
                name: name.as_str().into(),
                address,
                protocol: l.protocol,
                cluster,
                idle_timeout: l.idle_timeout_ms.map(Duration::from_millis),
                max_connections: l.max_connections,
                drain: l.drain_ms.map(Duration::from_millis),
                hash_source_ip: l.hash_on.as_ref().is_some_and(|h| h.source_ip),
                proxy_protocol: l.proxy_protocol,
                accept_proxy_protocol: l.accept_proxy_protocol.then(|| proxy_protocol_from.into()),
                tcp_keepalive: l.tcp_keepalive,
                clients: super::IpPolicy::new(&l.allow_from, &l.deny_from)
                    .map_err(|(f, why)| CompileError::new(format!("{field}.{f}"), why))?,
                http: HttpOptions::of(l),
                sni,
                routes,
                index,
            },
        );
    }
    Ok(Table { revision: 0, listeners, clusters })
}

fn lookup(clusters: &HashMap<String, Arc<ClusterLb>>, field: &str, name: &str) -> Result<Arc<ClusterLb>, CompileError> {
    clusters.get(name).cloned().ok_or_else(|| CompileError::new(field, format!("cluster {name} does not exist")))
}

fn compile_cluster(name: &str, c: &Cluster, previous: Option<&Arc<ClusterLb>>) -> Result<ClusterLb, CompileError> {
    let old: HashMap<SocketAddr, &Arc<EndpointState>> =
        previous.map(|p| p.endpoints().iter().map(|e| (e.state.address(), &e.state)).collect()).unwrap_or_default();
    let mut endpoints = Vec::with_capacity(c.endpoints.len());
    for (i, e) in c.endpoints.iter().enumerate() {
        let address = match EndpointAddress::parse(&e.address) {
            Ok(EndpointAddress::Ip(a)) => a,
            // A name `dns::expand` had no answer for: no endpoint until it resolves.
            Ok(EndpointAddress::Name { .. }) => continue,
            Err(why) => return Err(CompileError::new(format!("clusters.{name}.endpoints[{i}].address"), why)),
        };
        let state = old.get(&address).map(|s| Arc::clone(s)).unwrap_or_else(|| Arc::new(EndpointState::new(address)));
        endpoints.push(LbEndpoint {
            state,
            weight: e.weight,
            name: e.name.as_deref().map(Arc::from),
            backup: e.backup,
            max_connections: e.max_connections,
        });
    }
    let outlier = c.outlier_detection.as_ref().map(OutlierPolicy::from);
    // Same limits: keep the live counts (requests in flight, connection permits held).
    let breaker = c.circuit_breaker.map(|limits| match previous.and_then(|p| p.breaker()) {
        Some(b) if *b.limits() == limits => Arc::clone(b),
        _ => Arc::new(Breaker::new(limits)),
    });
    Ok(ClusterLb::new(name, c.lb_policy, endpoints)
        .with_health(c.health_check.clone(), outlier, c.panic_mode)
        .with_breaker(breaker)
        .with_connect_timeout(c.connect_timeout_ms.map(Duration::from_millis))
        .with_closes_on_health_change(c.close_connections_on_health_change)
        .with_protocol(c.protocol))
}

fn compile_route(
    name: &str,
    r: &Route,
    clusters: &HashMap<String, Arc<ClusterLb>>,
    previous: Option<&RouteEntry>,
) -> Result<RouteEntry, CompileError> {
    let field = format!("routes.{name}");
    let stats = previous.map(|p| Arc::clone(p.stats())).unwrap_or_default();
    let rate_limiter = match r.rate_limit.as_deref() {
        None => None,
        Some(spec) => match previous.and_then(|p| p.rate_limiter()).filter(|l| l.spec() == spec) {
            Some(same) => Some(Arc::clone(same)),
            None => Some(Arc::new(RateLimiter::new(spec).ok_or_else(|| {
                CompileError::new(format!("{field}.rate_limit.header"), "needs a valid header name")
            })?)),
        },
    };
    let conditions = Conditions::compile(&field, &r.matcher)?;
    let mut backends = Vec::with_capacity(r.backends.len());
    let mut cumulative = Vec::with_capacity(r.backends.len());
    let mut sum = 0u64;
    for (i, b) in r.backends.iter().enumerate() {
        let cluster = lookup(clusters, &format!("{field}.backends[{i}].cluster"), &b.cluster)?;
        sum += u64::from(b.weight);
        cumulative.push(sum);
        backends.push(WeightedBackend { cluster, weight: b.weight });
    }
    if sum == 0 && !r.answers_itself() {
        // Also covers "no backends": `pick_cluster` relies on a positive weight sum.
        return Err(CompileError::new(format!("{field}.backends"), "needs a backend with a non-zero weight"));
    }
    Ok(RouteEntry {
        name: name.into(),
        priority: r.priority,
        conditions,
        backends,
        cumulative,
        timeout: r.timeout_ms.map(Duration::from_millis),
        retries: r.retries.as_ref().map(RetryPolicy::from),
        sticky: r.sticky.clone(),
        hash_on: r.hash_on.clone(),
        https_redirect: r.https_redirect,
        max_request_body: r.max_request_body_bytes,
        direct_response: r.direct_response.clone().map(Arc::new),
        ip_policy: super::IpPolicy::new(&r.allow_from, &r.deny_from)
            .map_err(|(f, why)| CompileError::new(format!("{field}.{f}"), why))?,
        transforms: super::Transforms::compile(&field, r)?,
        rate_limiter,
        mirror: match r.mirror.as_deref() {
            Some(m) => Some((lookup(clusters, &format!("{field}.mirror.cluster"), &m.cluster)?, m.percent)),
            None => None,
        },
        stats,
    })
}
