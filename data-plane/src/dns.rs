//! Endpoints by DNS name (Envoy's STRICT_DNS, NGINX's `resolver`): every address a name resolves
//! to is an endpoint of its cluster. Names are resolved before a config that adds them is
//! installed, then again when their TTL (clamped to [min, max]) runs out; a changed answer
//! recompiles the installed config, and a failed lookup keeps the last good answer.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;
use sluice_shared::endpoint_address::EndpointAddress;
use sluice_shared::model::Endpoint;
use sluice_shared::Config;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How names are resolved: `servers` empty means the system's configuration (`/etc/resolv.conf`,
/// with its search domains, and `/etc/hosts`).
#[derive(Debug, Clone)]
pub struct DnsOptions {
    pub servers: Vec<SocketAddr>,
    /// An answer is kept at least this long, whatever its TTL (a TTL of 0 would be a query loop).
    pub min_ttl: Duration,
    /// And at most this long, so a long TTL cannot pin a stale address.
    pub max_ttl: Duration,
    /// One lookup's bound, retries included.
    pub timeout: Duration,
}

impl Default for DnsOptions {
    fn default() -> Self {
        DnsOptions {
            servers: Vec::new(),
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(30),
            timeout: Duration::from_secs(3),
        }
    }
}

/// The addresses each name resolved to, as the last good answers say.
pub type Answers = HashMap<String, Arc<[IpAddr]>>;

#[derive(Debug, Clone)]
struct Entry {
    /// `None` until a lookup has succeeded.
    addrs: Option<Arc<[IpAddr]>>,
    refresh_at: Instant,
    failures: u32,
}

/// The names the installed config uses and their answers; shared by the installer and the
/// refresher task.
pub struct Dns {
    resolver: Result<TokioResolver, String>,
    opts: DnsOptions,
    entries: Mutex<HashMap<String, Entry>>,
    /// Woken when the set of names changes, so the refresher re-plans its sleep.
    replanned: Notify,
}

impl Dns {
    pub fn new(opts: DnsOptions) -> Dns {
        let resolver = build_resolver(&opts).map_err(|e| {
            tracing::warn!(error = %e, "no DNS resolver: endpoints given by name will not resolve");
            e
        });
        Dns { resolver, opts, entries: Mutex::new(HashMap::new()), replanned: Notify::new() }
    }

    /// Makes `names` the tracked set: resolves the new ones now (concurrently, each within the
    /// lookup timeout) and forgets the rest.
    pub async fn track(&self, names: &BTreeSet<String>) {
        let new: Vec<String> = {
            let mut entries = self.lock();
            entries.retain(|n, _| names.contains(n));
            names.iter().filter(|n| !entries.contains_key(*n)).cloned().collect()
        };
        if new.is_empty() {
            return;
        }
        let looked_up = futures::future::join_all(new.iter().map(|n| self.lookup(n))).await;
        let now = Instant::now();
        let mut entries = self.lock();
        for (name, result) in new.into_iter().zip(looked_up) {
            let mut entry = Entry { addrs: None, refresh_at: now, failures: 0 };
            self.record(&name, &mut entry, result, now);
            entries.insert(name, entry);
        }
        drop(entries);
        self.replanned.notify_one();
    }

    /// The last good answer of every tracked name that has one.
    pub fn answers(&self) -> Answers {
        self.lock().iter().filter_map(|(n, e)| Some((n.clone(), e.addrs.clone()?))).collect()
    }

    /// Re-resolves the names whose time has come; true when an answer changed.
    pub async fn refresh_due(&self) -> bool {
        let now = Instant::now();
        let due: Vec<String> =
            self.lock().iter().filter(|(_, e)| e.refresh_at <= now).map(|(n, _)| n.clone()).collect();
        if due.is_empty() {
            return false;
        }
        let looked_up = futures::future::join_all(due.iter().map(|n| self.lookup(n))).await;
        let now = Instant::now();
        let mut changed = false;
        let mut entries = self.lock();
        for (name, result) in due.into_iter().zip(looked_up) {
            // Forgotten while the lookup ran: nothing to update.
            let Some(entry) = entries.get_mut(&name) else { continue };
            let before = entry.addrs.clone();
            self.record(&name, entry, result, now);
            changed |= entry.addrs != before;
        }
        changed
    }

    /// Runs until the node stops: re-resolves names as they fall due and calls `changed` when an
    /// answer moved.
    pub async fn refresh_loop<F, Fut>(self: Arc<Self>, mut changed: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        loop {
            let next = self.lock().values().map(|e| e.refresh_at).min();
            match next {
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = self.replanned.notified() => continue,
                    }
                }
                None => {
                    self.replanned.notified().await;
                    continue;
                }
            }
            if self.refresh_due().await {
                changed().await;
            }
        }
    }

    fn record(&self, name: &str, entry: &mut Entry, result: Result<(Vec<IpAddr>, Duration), String>, now: Instant) {
        match result {
            Ok((addrs, ttl)) => {
                if entry.addrs.as_deref() != Some(&addrs[..]) {
                    tracing::info!(name, addresses = ?addrs, "endpoint name resolved");
                }
                entry.addrs = Some(addrs.into());
                entry.failures = 0;
                entry.refresh_at = now + ttl.clamp(self.opts.min_ttl, self.opts.max_ttl);
            }
            Err(error) => {
                entry.failures = entry.failures.saturating_add(1);
                let kept = entry.addrs.as_ref().map_or(0, |a| a.len());
                tracing::warn!(name, %error, kept_addresses = kept, "endpoint name lookup failed");
                entry.refresh_at = now + retry_after(entry.failures, &self.opts);
            }
        }
    }

    /// One name's addresses, sorted (so answers in another order are no change), and their TTL.
    /// An empty answer is a failure: it keeps the last good one.
    async fn lookup(&self, name: &str) -> Result<(Vec<IpAddr>, Duration), String> {
        let resolver = self.resolver.as_ref().map_err(|e| e.clone())?;
        let lookup = tokio::time::timeout(self.opts.timeout, resolver.lookup_ip(name))
            .await
            .map_err(|_| format!("no answer within {:?}", self.opts.timeout))?
            .map_err(|e| e.to_string())?;
        let ttl = lookup.valid_until().saturating_duration_since(std::time::Instant::now());
        let mut addrs: Vec<IpAddr> = lookup.iter().collect();
        addrs.sort_unstable();
        addrs.dedup();
        if addrs.is_empty() {
            return Err("no addresses in the answer".into());
        }
        Ok((addrs, ttl))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn build_resolver(opts: &DnsOptions) -> Result<TokioResolver, String> {
    let provider = TokioRuntimeProvider::default();
    let mut builder = if opts.servers.is_empty() {
        TokioResolver::builder(provider).map_err(|e| format!("cannot read the system's DNS configuration: {e}"))?
    } else {
        let servers = opts
            .servers
            .iter()
            .map(|s| {
                let connections = [ConnectionConfig::udp(), ConnectionConfig::tcp()]
                    .into_iter()
                    .map(|mut c| {
                        c.port = s.port();
                        c
                    })
                    .collect();
                NameServerConfig::new(s.ip(), true, connections)
            })
            .collect();
        TokioResolver::builder_with_config(ResolverConfig::from_name_servers(servers), provider)
    };
    let o = builder.options_mut();
    o.timeout = opts.timeout;
    o.positive_max_ttl = Some(opts.max_ttl);
    o.negative_max_ttl = Some(opts.min_ttl);
    builder.build().map_err(|e| e.to_string())
}

/// After `failures` failed lookups in a row: the minimum TTL doubled each time, up to the maximum.
fn retry_after(failures: u32, opts: &DnsOptions) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    opts.min_ttl.saturating_mul(factor).min(opts.max_ttl)
}

/// The DNS names `config`'s endpoints use.
pub fn names(config: &Config) -> BTreeSet<String> {
    let addresses = config.clusters.values().flat_map(|c| &c.endpoints).filter_map(Endpoint::parsed_address);
    addresses.filter_map(|a| a.host().map(str::to_string)).collect()
}

/// `config` with each endpoint given by name replaced by one endpoint per address of its answer
/// (same weight, backup and limit; an address listed already is not added twice). A name with no
/// answer yet contributes no endpoint. The endpoint's `name` (what sticky cookies use) is kept only
/// when the answer has one address; otherwise each address has its own opaque id.
pub fn expand(config: &Config, answers: &Answers) -> Config {
    let by_name = |e: &Endpoint| matches!(e.parsed_address(), Some(EndpointAddress::Name { .. }));
    if !config.clusters.values().any(|c| c.endpoints.iter().any(by_name)) {
        return config.clone();
    }
    let mut out = config.clone();
    for cluster in out.clusters.values_mut() {
        if !cluster.endpoints.iter().any(by_name) {
            continue;
        }
        let mut seen = BTreeSet::new();
        let mut endpoints = Vec::with_capacity(cluster.endpoints.len());
        for e in std::mem::take(&mut cluster.endpoints) {
            let resolved: Vec<SocketAddr> = match e.parsed_address() {
                Some(EndpointAddress::Name { host, port }) => answers
                    .get(&host)
                    .map(|a| a.iter().map(|ip| SocketAddr::new(*ip, port)).collect())
                    .unwrap_or_default(),
                Some(EndpointAddress::Ip(a)) => vec![a],
                None => continue,
            };
            let single = resolved.len() == 1;
            for addr in resolved {
                if seen.insert(addr) {
                    let name = if single { e.name.clone() } else { None };
                    endpoints.push(Endpoint { address: addr.to_string(), name, ..e.clone() });
                }
            }
        }
        cluster.endpoints = endpoints;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_shared::validate::parse_json;

    fn config(endpoints: &str) -> Config {
        let mut c = Config::default();
        c.clusters.insert("api".into(), parse_json(format!(r#"{{"endpoints":{endpoints}}}"#).as_bytes()).unwrap());
        c
    }

    fn addresses(c: &Config) -> Vec<(String, Option<String>, u32)> {
        c.clusters["api"].endpoints.iter().map(|e| (e.address.clone(), e.name.clone(), e.weight)).collect()
    }

    #[test]
    fn every_address_of_a_name_becomes_an_endpoint() {
        let c = config(
            r#"[{"address":"API.internal:8080","weight":3,"name":"api"},{"address":"10.0.0.9:80"},
                {"address":"one.internal:81","name":"one"},{"address":"unknown.internal:82"}]"#,
        );
        assert_eq!(names(&c), ["api.internal", "one.internal", "unknown.internal"].map(String::from).into());
        let answers: Answers = [
            ("api.internal".to_string(), Arc::from(["10.0.0.1".parse().unwrap(), "10.0.0.9".parse().unwrap()])),
            ("one.internal".to_string(), Arc::from(["10.0.0.9".parse().unwrap()])),
        ]
        .into();
        let expanded = expand(&c, &answers);
        assert_eq!(
            addresses(&expanded),
            vec![
                ("10.0.0.1:8080".into(), None, 3),
                ("10.0.0.9:8080".into(), None, 3),
                ("10.0.0.9:80".into(), None, 1),
                ("10.0.0.9:81".into(), Some("one".into()), 1),
            ]
        );
        expanded.clusters["api"].validate().unwrap();
    }

    #[test]
    fn a_config_without_names_is_unchanged() {
        let c = config(r#"[{"address":"10.0.0.9:80","name":"a"}]"#);
        assert!(names(&c).is_empty());
        assert_eq!(expand(&c, &Answers::new()), c);
    }

    #[test]
    fn failed_lookups_back_off_up_to_the_maximum() {
        let opts =
            DnsOptions { min_ttl: Duration::from_secs(1), max_ttl: Duration::from_secs(30), ..DnsOptions::default() };
        let waits: Vec<u64> = (1..=7).map(|n| retry_after(n, &opts).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(retry_after(u32::MAX, &opts), Duration::from_secs(30));
    }
}
