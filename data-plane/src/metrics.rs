//! Node metrics, exported as Prometheus text on the admin server's `/metrics`.
//!
//! Counters are plain atomics. The registry (a mutex over name-keyed maps) is touched only when a
//! config is installed (to hand each route/cluster/listener its counters) and on a scrape; the
//! request path reaches its counters through a [`StatsIndex`] built with the table, so it takes no
//! lock. Counters are keyed by name and reused across revisions, so they never reset on a change.

use std::collections::BTreeMap;

use crate::fast_hash::FastMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::table::{Breaker, ClusterLb, Overflow, RouteStats, Table};

/// Upper bounds of the upstream latency histogram, in seconds.
const LATENCY_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Responses by status class (`1xx` … `5xx`) for one (route, cluster) pair.
#[derive(Debug, Default)]
pub struct ResponseCounts {
    by_class: [AtomicU64; 5],
    /// gRPC calls by the `grpc-status` they ended with (0-16; anything else counts as 2, UNKNOWN).
    by_grpc_status: [AtomicU64; 17],
}

impl ResponseCounts {
    pub fn record(&self, status: u16) {
        let i = usize::from((status / 100).clamp(1, 5) - 1);
        self.by_class[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_grpc(&self, status: u8) {
        let i = if status <= 16 { usize::from(status) } else { 2 };
        self.by_grpc_status[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn grpc(&self, status: u8) -> u64 {
        self.by_grpc_status.get(usize::from(status)).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    pub fn get(&self, class: u8) -> u64 {
        usize::from(class).checked_sub(1).and_then(|i| self.by_class.get(i)).map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

/// Time from sending a request upstream to its response head, per cluster.
#[derive(Debug, Default)]
pub struct Latency {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Latency {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        // Cumulative buckets are summed at scrape time; one increment here.
        if let Some(i) = LATENCY_BUCKETS.iter().position(|&le| secs <= le) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

/// Connections of one listener.
#[derive(Debug, Default)]
pub struct ConnectionCounts {
    pub active: AtomicI64,
    pub accepted: AtomicU64,
    /// Closed for a missing, malformed or late PROXY protocol header (`accept_proxy_protocol`).
    pub proxy_header_errors: AtomicU64,
    /// http/https: closed at once, over the listener's or the process's connection cap.
    pub refused: AtomicU64,
    /// Closed (udp: datagrams dropped) for a client outside `allow_from` or inside `deny_from`.
    pub denied: AtomicU64,
}

/// Keeps a listener's active-connection gauge up for as long as it lives.
pub struct ActiveConnection(Arc<ConnectionCounts>);

impl ActiveConnection {
    pub fn new(counts: &Arc<ConnectionCounts>) -> Self {
        counts.accepted.fetch_add(1, Ordering::Relaxed);
        counts.active.fetch_add(1, Ordering::Relaxed);
        ActiveConnection(counts.clone())
    }
}

impl Drop for ActiveConnection {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Default)]
struct Registry {
    responses: BTreeMap<(String, String), Arc<ResponseCounts>>,
    latency: BTreeMap<String, Arc<Latency>>,
    connections: BTreeMap<String, Arc<ConnectionCounts>>,
    /// The installed table's clusters, for the endpoint health gauges (replaced on each install).
    clusters: Vec<Arc<ClusterLb>>,
    /// The installed table's routes with a retry policy, for the retry counters.
    retrying_routes: Vec<(String, Arc<RouteStats>)>,
    /// Routes with a rate limit, by name.
    limited_routes: Vec<(String, Arc<RouteStats>)>,
    /// Routes that mirror, by name.
    mirroring_routes: Vec<(String, Arc<RouteStats>)>,
}

#[derive(Default)]
pub struct Metrics {
    registry: Mutex<Registry>,
    /// Requests answered without a route or before a route was chosen (404, refused heads).
    pub unrouted: Arc<ResponseCounts>,
    pub revision: AtomicU64,
    pub config_applies: AtomicU64,
    pub config_rejects: AtomicU64,
    pub ready: std::sync::atomic::AtomicBool,
    /// tcp/udp counters and listener drain state (`l4_stats.rs`).
    pub l4: crate::l4_stats::L4Metrics,
}

/// Per-table handles to the counters of every route and cluster, for the request path.
#[derive(Default)]
pub struct StatsIndex {
    /// route -> [(cluster, counts)], a short list scanned by name.
    routes: FastMap<String, Vec<(String, Arc<ResponseCounts>)>>,
    clusters: FastMap<String, Arc<Latency>>,
}

impl StatsIndex {
    pub fn responses(&self, route: &str, cluster: &str) -> Option<&Arc<ResponseCounts>> {
        self.routes.get(route)?.iter().find(|(c, _)| c == cluster).map(|(_, r)| r)
    }

    pub fn latency(&self, cluster: &str) -> Option<&Arc<Latency>> {
        self.clusters.get(cluster)
    }
}

impl Metrics {
    /// Builds the request path's handles for a freshly compiled table.
    pub fn index(&self, table: &Table) -> StatsIndex {
        let mut reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        let mut index = StatsIndex::default();
        for (_, listener) in table.listeners() {
            for route in listener.routes() {
                let slots = route
                    .backends()
                    .iter()
                    .map(|b| {
                        let key = (route.name().to_string(), b.cluster.name().to_string());
                        let counts = reg.responses.entry(key).or_default().clone();
                        (b.cluster.name().to_string(), counts)
                    })
                    .collect();
                index.routes.insert(route.name().to_string(), slots);
            }
        }
        reg.retrying_routes = table
            .listeners()
            .flat_map(|(_, l)| l.routes())
            .filter(|r| r.retries().is_some())
            .map(|r| (r.name().to_string(), Arc::clone(r.stats())))
            .collect();
        reg.retrying_routes.sort_by(|a, b| a.0.cmp(&b.0));
        let routes_where = |keep: fn(&crate::table::RouteEntry) -> bool| {
            let mut v: Vec<_> = table
                .listeners()
                .flat_map(|(_, l)| l.routes())
                .filter(|r| keep(r))
                .map(|r| (r.name().to_string(), Arc::clone(r.stats())))
                .collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        reg.limited_routes = routes_where(|r| r.rate_limiter().is_some());
        reg.mirroring_routes = routes_where(|r| r.mirrors());
        for (name, _) in table.clusters() {
            index.clusters.insert(name.to_string(), reg.latency.entry(name.to_string()).or_default().clone());
        }
        reg.clusters = table.clusters().map(|(_, c)| c.clone()).collect();
        reg.clusters.sort_by(|a, b| a.name().cmp(b.name()));
        index
    }

    /// HTTP responses since the node started, all routes together: (all, 5xx).
    pub fn traffic_totals(&self) -> (u64, u64) {
        let reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        let rows = std::iter::once(self.unrouted.as_ref()).chain(reg.responses.values().map(Arc::as_ref));
        rows.fold((0, 0), |(all, errors), c| (all + (1..=5).map(|class| c.get(class)).sum::<u64>(), errors + c.get(5)))
    }

    pub fn connections(&self, listener: &str) -> Arc<ConnectionCounts> {
        let mut reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        reg.connections.entry(listener.to_string()).or_default().clone()
    }

    /// The Prometheus text exposition of everything.
    pub fn render(&self) -> String {
        let reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::with_capacity(4096);
        let classes = ["1xx", "2xx", "3xx", "4xx", "5xx"];

        header(&mut out, "sluice_requests_total", "counter", "HTTP responses by route, cluster and status class.");
        let mut rows: Vec<(&str, &str, &ResponseCounts)> = vec![("", "", &self.unrouted)];
        rows.extend(reg.responses.iter().map(|((r, c), v)| (r.as_str(), c.as_str(), v.as_ref())));
        for &(route, cluster, counts) in &rows {
            for (i, class) in classes.iter().enumerate() {
                let n = counts.get(i as u8 + 1);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "sluice_requests_total{{route=\"{}\",cluster=\"{}\",class=\"{class}\"}} {n}",
                        esc(route),
                        esc(cluster)
                    );
                }
            }
        }

        header(&mut out, "sluice_grpc_responses_total", "counter", "gRPC calls by route, cluster and grpc-status.");
        for &(route, cluster, counts) in &rows {
            for status in 0..=16u8 {
                let n = counts.grpc(status);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "sluice_grpc_responses_total{{route=\"{}\",cluster=\"{}\",grpc_status=\"{status}\"}} {n}",
                        esc(route),
                        esc(cluster)
                    );
                }
            }
        }

        header(&mut out, "sluice_upstream_latency_seconds", "histogram", "Upstream response-head latency by cluster.");
        for (cluster, h) in &reg.latency {
            let c = esc(cluster);
            let mut cumulative = 0;
            for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
                cumulative += h.buckets[i].load(Ordering::Relaxed);
                let _ =
                    writeln!(out, "sluice_upstream_latency_seconds_bucket{{cluster=\"{c}\",le=\"{le}\"}} {cumulative}");
            }
            let count = h.count.load(Ordering::Relaxed);
            let sum = h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(out, "sluice_upstream_latency_seconds_bucket{{cluster=\"{c}\",le=\"+Inf\"}} {count}");
            let _ = writeln!(out, "sluice_upstream_latency_seconds_sum{{cluster=\"{c}\"}} {sum}");
            let _ = writeln!(out, "sluice_upstream_latency_seconds_count{{cluster=\"{c}\"}} {count}");
        }

        header(&mut out, "sluice_active_connections", "gauge", "Open downstream connections by listener.");
        for (listener, c) in &reg.connections {
            let _ = writeln!(
                out,
                "sluice_active_connections{{listener=\"{}\"}} {}",
                esc(listener),
                c.active.load(Ordering::Relaxed)
            );
        }
        type Counter = fn(&ConnectionCounts) -> &AtomicU64;
        let counters: [(&str, &str, Counter); 4] = [
            ("sluice_connections_total", "Accepted downstream connections by listener.", |c| &c.accepted),
            (
                "sluice_connections_refused_total",
                "http/https connections closed at once, over the listener's max_connections or the process's cap.",
                |c| &c.refused,
            ),
            (
                "sluice_proxy_protocol_errors_total",
                "Connections closed for a missing, malformed or late PROXY protocol header, by listener.",
                |c| &c.proxy_header_errors,
            ),
            (
                "sluice_connections_denied_total",
                "Connections closed (udp: datagrams dropped) for a client the listener's allow_from or deny_from refuses.",
                |c| &c.denied,
            ),
        ];
        for (name, help, counter) in counters {
            header(&mut out, name, "counter", help);
            for (listener, c) in &reg.connections {
                let _ =
                    writeln!(out, "{name}{{listener=\"{}\"}} {}", esc(listener), counter(c).load(Ordering::Relaxed));
            }
        }

        let gauges = [
            (
                "sluice_config_revision",
                "gauge",
                "Config revision installed (or advanced to).",
                self.revision.load(Ordering::Relaxed),
            ),
            (
                "sluice_config_applies_total",
                "counter",
                "Snapshots installed.",
                self.config_applies.load(Ordering::Relaxed),
            ),
            (
                "sluice_config_rejects_total",
                "counter",
                "Snapshots refused (NACKed).",
                self.config_rejects.load(Ordering::Relaxed),
            ),
            (
                "sluice_ready",
                "gauge",
                "1 once a valid table is installed.",
                u64::from(self.ready.load(Ordering::Relaxed)),
            ),
        ];
        for (name, kind, help, v) in gauges {
            header(&mut out, name, kind, help);
            let _ = writeln!(out, "{name} {v}");
        }
        render_endpoints(&mut out, &reg.clusters);
        render_retries(&mut out, &reg.retrying_routes);
        let limited = reg.limited_routes.iter().map(|(r, s)| (format!("route=\"{}\"", esc(r)), s.rate_limited()));
        family(
            &mut out,
            "sluice_route_rate_limited_total",
            "counter",
            "Requests refused with 429 by the route's rate limit.",
            limited,
        );
        let mirrored = reg.mirroring_routes.iter().map(|(r, s)| (format!("route=\"{}\"", esc(r)), s.mirrored()));
        family(
            &mut out,
            "sluice_route_mirrored_total",
            "counter",
            "Requests copied to the route's mirror cluster.",
            mirrored,
        );
        render_breakers(&mut out, &reg.clusters);
        drop(reg);
        self.l4.render(&mut out);
        out
    }
}

/// Retries per route with a retry policy, and the retries its budget refused.
fn render_retries(out: &mut String, routes: &[(String, Arc<RouteStats>)]) {
    type Counter = fn(&RouteStats) -> u64;
    let series: [(&str, &str, Counter); 2] = [
        ("sluice_route_retries_total", "Retries sent (tries after the first).", RouteStats::retries),
        (
            "sluice_route_retry_budget_exhausted_total",
            "Retries the policy allowed but the retry budget refused.",
            RouteStats::budget_exhausted,
        ),
    ];
    for (name, help, value) in series {
        let samples = routes.iter().map(|(route, stats)| (format!("route=\"{}\"", esc(route)), value(stats)));
        family(out, name, "counter", help, samples);
    }
}

/// Circuit breakers: what each cluster with one has in use, and the requests it turned away.
fn render_breakers(out: &mut String, clusters: &[Arc<ClusterLb>]) {
    let breakers: Vec<(String, &Breaker)> =
        clusters.iter().filter_map(|c| Some((esc(c.name()), c.breaker()?.as_ref()))).collect();
    header(
        out,
        "sluice_cluster_overflow_total",
        "counter",
        "Requests, L4 connections and UDP sessions refused by the circuit breaker, by limit.",
    );
    for (c, b) in &breakers {
        for o in Overflow::ALL {
            let _ = writeln!(
                out,
                "sluice_cluster_overflow_total{{cluster=\"{c}\",limit=\"{}\"}} {}",
                o.as_str(),
                b.overflows(o)
            );
        }
    }
    type Gauge = fn(&Breaker) -> usize;
    let gauges: [(&str, &str, Gauge); 3] = [
        (
            "sluice_cluster_requests_active",
            "Requests in flight (clusters with a circuit breaker).",
            Breaker::requests_active,
        ),
        ("sluice_cluster_pending", "Requests and L4 connections waiting for an upstream connection.", Breaker::pending),
        (
            "sluice_cluster_connections",
            "Upstream connections open, HTTP and L4 (UDP sessions included; clusters with max_connections).",
            Breaker::connections_open,
        ),
    ];
    for (name, help, value) in gauges {
        let samples = breakers.iter().map(|(c, b)| (format!("cluster=\"{c}\""), value(b) as u64));
        family(out, name, "gauge", help, samples);
    }
}

/// One metric family: its header, then one sample per (labels, value).
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: impl Iterator<Item = (String, u64)>) {
    header(out, name, kind, help);
    for (labels, v) in samples {
        let _ = writeln!(out, "{name}{{{labels}}} {v}");
    }
}

/// Endpoint health of the installed table (active checks and outlier ejection).
fn render_endpoints(out: &mut String, clusters: &[Arc<ClusterLb>]) {
    type Gauge = fn(&crate::table::EndpointState) -> u64;
    let series: [(&str, &str, &str, Gauge); 4] = [
        (
            "sluice_endpoint_healthy",
            "gauge",
            "1 while the endpoint takes new traffic (passes health checks, not ejected).",
            |e| u64::from(e.is_healthy()),
        ),
        ("sluice_endpoint_ejected", "gauge", "1 while outlier detection ejects the endpoint.", |e| {
            u64::from(e.is_ejected())
        }),
        ("sluice_endpoint_ejections_total", "counter", "Outlier ejections of the endpoint.", |e| e.ejections_total()),
        (
            "sluice_endpoint_active_requests",
            "gauge",
            "Requests (L7) or connections (L4) in flight to the endpoint.",
            |e| e.active() as u64,
        ),
    ];
    for (name, kind, help, value) in series {
        header(out, name, kind, help);
        for c in clusters {
            let cluster = esc(c.name());
            for e in c.endpoints() {
                let v = value(&e.state);
                let _ = writeln!(out, "{name}{{cluster=\"{cluster}\",endpoint=\"{}\"}} {v}", e.state.address());
            }
        }
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Label values escaped per the text format (names are already restricted, but be safe).
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histogram() {
        let m = Metrics::default();
        m.unrouted.record(404);
        let conns = m.connections("web");
        let guard = ActiveConnection::new(&conns);
        {
            let mut reg = m.registry.lock().unwrap();
            reg.responses.entry(("api".into(), "api-blue".into())).or_default().record(200);
            reg.latency.entry("api-blue".into()).or_default().observe(Duration::from_millis(3));
        }
        let text = m.render();
        assert!(text.contains("sluice_requests_total{route=\"\",cluster=\"\",class=\"4xx\"} 1"), "{text}");
        assert!(text.contains("sluice_requests_total{route=\"api\",cluster=\"api-blue\",class=\"2xx\"} 1"));
        assert!(text.contains("sluice_upstream_latency_seconds_bucket{cluster=\"api-blue\",le=\"0.0025\"} 0"));
        assert!(text.contains("sluice_upstream_latency_seconds_bucket{cluster=\"api-blue\",le=\"0.005\"} 1"));
        assert!(text.contains("sluice_upstream_latency_seconds_count{cluster=\"api-blue\"} 1"));
        assert!(text.contains("sluice_active_connections{listener=\"web\"} 1"));
        drop(guard);
        assert!(m.render().contains("sluice_active_connections{listener=\"web\"} 0"));
    }
}
