//! L4 (tcp, udp) counters per listener, and the drain state of every listener, rendered into
//! `/metrics` by `Metrics::render`. Handles are fetched once per accept loop (one lock), then the
//! connection path only touches atomics; connect failures (rare) take a small lock.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Counters of one listener, kept by name across revisions (they never reset on a change).
#[derive(Debug, Default)]
pub struct L4Stats {
    /// Open tcp connections / udp sessions, the number `max_connections` bounds.
    pub active: AtomicI64,
    /// tcp connections proxied / udp sessions created.
    pub total: AtomicU64,
    /// Refused for `max_connections` (tcp: closed at once; udp: datagram dropped).
    pub rejected: AtomicU64,
    pub bytes_from_clients: AtomicU64,
    pub bytes_to_clients: AtomicU64,
    /// Connections / sessions closed by `idle_timeout_ms`.
    pub idle_timeouts: AtomicU64,
    /// Connections closed because their endpoint's health changed
    /// (`close_connections_on_health_change`).
    pub health_closes: AtomicU64,
    /// Clients closed because no endpoint could be connected.
    pub no_endpoint: AtomicU64,
    /// Clients closed because every endpoint was at its `max_connections`.
    pub endpoints_full: AtomicU64,
    connect_failures: Mutex<BTreeMap<SocketAddr, u64>>,
    /// Stopped instances of this listener still draining connections, and their drain bound.
    pub draining: AtomicI64,
    pub drain_ms: AtomicU64,
}

impl L4Stats {
    pub fn connect_failed(&self, endpoint: SocketAddr) {
        let mut m = self.connect_failures.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry(endpoint).or_default() += 1;
    }

    /// Counts one connection or session as active (and in the total) unless `limit` is reached;
    /// the returned guard un-counts it.
    pub fn admit(self: &Arc<Self>, limit: u32) -> Option<Admitted> {
        let now = self.active.fetch_add(1, Ordering::Relaxed);
        if now >= i64::from(limit) {
            self.active.fetch_sub(1, Ordering::Relaxed);
            self.rejected.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.total.fetch_add(1, Ordering::Relaxed);
        Some(Admitted(self.clone()))
    }
}

/// One admitted connection or session; dropping it frees its slot.
#[derive(Debug)]
pub struct Admitted(Arc<L4Stats>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Default)]
pub struct L4Metrics {
    listeners: Mutex<BTreeMap<String, Arc<L4Stats>>>,
}

impl L4Metrics {
    pub fn listener(&self, name: &str) -> Arc<L4Stats> {
        let mut m = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(name.to_string()).or_default().clone()
    }

    /// Appends the L4 and drain series to a Prometheus text exposition.
    pub fn render(&self, out: &mut String) {
        let m = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        type Counter = fn(&L4Stats) -> u64;
        let series: [(&str, &str, Counter); 8] = [
            ("sluice_l4_connections_total", "tcp connections / udp sessions proxied by listener.", |s| {
                s.total.load(Ordering::Relaxed)
            }),
            ("sluice_l4_rejected_total", "Connections / sessions refused by max_connections.", |s| {
                s.rejected.load(Ordering::Relaxed)
            }),
            ("sluice_l4_received_bytes_total", "Bytes received from clients by listener.", |s| {
                s.bytes_from_clients.load(Ordering::Relaxed)
            }),
            ("sluice_l4_sent_bytes_total", "Bytes sent to clients by listener.", |s| {
                s.bytes_to_clients.load(Ordering::Relaxed)
            }),
            ("sluice_l4_idle_timeouts_total", "Connections / sessions closed by idle_timeout_ms.", |s| {
                s.idle_timeouts.load(Ordering::Relaxed)
            }),
            ("sluice_l4_no_endpoint_total", "Clients closed because no endpoint could be reached.", |s| {
                s.no_endpoint.load(Ordering::Relaxed)
            }),
            (
                "sluice_l4_endpoints_full_total",
                "Clients closed / datagrams dropped because every endpoint was at its max_connections.",
                |s| s.endpoints_full.load(Ordering::Relaxed),
            ),
            (
                "sluice_l4_health_closes_total",
                "Connections closed because their endpoint's health changed (close_connections_on_health_change).",
                |s| s.health_closes.load(Ordering::Relaxed),
            ),
        ];
        let _ = writeln!(
            out,
            "# HELP sluice_l4_active_connections Open tcp connections / udp sessions by listener.\n\
             # TYPE sluice_l4_active_connections gauge"
        );
        for (name, s) in m.iter() {
            let _ = writeln!(
                out,
                "sluice_l4_active_connections{{listener=\"{name}\"}} {}",
                s.active.load(Ordering::Relaxed)
            );
        }
        for (metric, help, get) in series {
            let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} counter");
            for (name, s) in m.iter() {
                let _ = writeln!(out, "{metric}{{listener=\"{name}\"}} {}", get(s));
            }
        }
        let _ = writeln!(
            out,
            "# HELP sluice_l4_connect_failures_total Upstream connect failures by listener and endpoint.\n\
             # TYPE sluice_l4_connect_failures_total counter"
        );
        for (name, s) in m.iter() {
            let failures = s.connect_failures.lock().unwrap_or_else(|e| e.into_inner());
            for (endpoint, n) in failures.iter() {
                let _ = writeln!(
                    out,
                    "sluice_l4_connect_failures_total{{listener=\"{name}\",endpoint=\"{endpoint}\"}} {n}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP sluice_listener_draining Stopped instances of a listener still draining connections.\n\
             # TYPE sluice_listener_draining gauge\n\
             # HELP sluice_listener_drain_timeout_seconds Bound on a stopped listener's drain.\n\
             # TYPE sluice_listener_drain_timeout_seconds gauge"
        );
        for (name, s) in m.iter() {
            let _ =
                writeln!(out, "sluice_listener_draining{{listener=\"{name}\"}} {}", s.draining.load(Ordering::Relaxed));
            let secs = load(&s.drain_ms) as f64 / 1000.0;
            let _ = writeln!(out, "sluice_listener_drain_timeout_seconds{{listener=\"{name}\"}} {secs}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admit_bounds_active_and_renders() {
        let m = L4Metrics::default();
        let s = m.listener("db");
        let a = s.admit(2).unwrap();
        let b = s.admit(2).unwrap();
        assert!(s.admit(2).is_none());
        drop(a);
        let c = s.admit(2).unwrap();
        s.connect_failed("127.0.0.1:1".parse().unwrap());
        s.bytes_from_clients.fetch_add(5, Ordering::Relaxed);
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains("sluice_l4_active_connections{listener=\"db\"} 2"), "{out}");
        assert!(out.contains("sluice_l4_connections_total{listener=\"db\"} 3"));
        assert!(out.contains("sluice_l4_rejected_total{listener=\"db\"} 1"));
        assert!(out.contains("sluice_l4_received_bytes_total{listener=\"db\"} 5"));
        assert!(out.contains("sluice_l4_connect_failures_total{listener=\"db\",endpoint=\"127.0.0.1:1\"} 1"));
        drop((b, c));
        assert_eq!(s.active.load(Ordering::Relaxed), 0);
    }
}
