//! A whole configuration: every resource by kind and name, and the checks that span resources
//! (references exist, listener addresses are unique, what a deletion would break).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::*;
use crate::validate::{Result, ValidationError};

/// The kinds of named resources, as they appear in REST paths (`/v1/{kind}/{name}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Cluster,
    Listener,
    Route,
    Certificate,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Cluster, Kind::Listener, Kind::Route, Kind::Certificate];
    /// Certificates and clusters first: listeners refer to them, and routes refer to listeners.
    pub const DEPENDENCY_ORDER: [Kind; 4] = [Kind::Certificate, Kind::Cluster, Kind::Listener, Kind::Route];

    /// The plural used in URLs and by the CLI (`clusters`).
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Cluster => "clusters",
            Kind::Listener => "listeners",
            Kind::Route => "routes",
            Kind::Certificate => "certificates",
        }
    }

    pub fn singular(self) -> &'static str {
        match self {
            Kind::Cluster => "cluster",
            Kind::Listener => "listener",
            Kind::Route => "route",
            Kind::Certificate => "certificate",
        }
    }

    /// Accepts the plural, the singular, and the common short forms.
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "clusters" | "cluster" => Some(Kind::Cluster),
            "listeners" | "listener" => Some(Kind::Listener),
            "routes" | "route" => Some(Kind::Route),
            "certificates" | "certificate" | "certs" | "cert" => Some(Kind::Certificate),
            _ => None,
        }
    }
}

impl Serialize for Kind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.singular())
    }
}

/// Takes what [`Kind::parse`] takes, so files may say `route` or `routes`.
impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Kind::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!("unknown kind {text:?}: expected cluster, listener, route or certificate"))
        })
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.singular())
    }
}

/// Every resource, keyed by name. `BTreeMap` keeps iteration (and so snapshots) deterministic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    #[serde(default)]
    pub clusters: BTreeMap<String, Cluster>,
    #[serde(default)]
    pub listeners: BTreeMap<String, Listener>,
    #[serde(default)]
    pub routes: BTreeMap<String, Route>,
    #[serde(default)]
    pub certificates: BTreeMap<String, Certificate>,
}

impl Config {
    pub fn contains(&self, kind: Kind, name: &str) -> bool {
        match kind {
            Kind::Cluster => self.clusters.contains_key(name),
            Kind::Listener => self.listeners.contains_key(name),
            Kind::Route => self.routes.contains_key(name),
            Kind::Certificate => self.certificates.contains_key(name),
        }
    }

    /// Removes `kind/name` if present.
    pub fn remove(&mut self, kind: Kind, name: &str) {
        match kind {
            Kind::Cluster => self.clusters.remove(name).map(drop),
            Kind::Listener => self.listeners.remove(name).map(drop),
            Kind::Route => self.routes.remove(name).map(drop),
            Kind::Certificate => self.certificates.remove(name).map(drop),
        };
    }

    /// Checks the references of one cluster (its upstream client certificate) against the config.
    pub fn check_cluster(&self, c: &Cluster) -> Result<()> {
        if let Some(cert) = c.tls.as_ref().and_then(|t| t.client_certificate.as_deref()) {
            self.require(Kind::Certificate, "tls.client_certificate", cert)?;
        }
        Ok(())
    }

    /// Checks the references and uniqueness rules of one listener against the rest of the config.
    pub fn check_listener(&self, name: &str, l: &Listener) -> Result<()> {
        let addr = l.socket_addr();
        for (other_name, other) in &self.listeners {
            if other_name != name && other.socket_addr() == addr {
                // Two listeners on one address can never both bind: a conflict, not a typo.
                return Err(ValidationError::conflict(
                    Some("address".into()),
                    format!("listener {other_name} already uses {}", l.address),
                ));
            }
        }
        if let Some(c) = &l.cluster {
            self.require(Kind::Cluster, "cluster", c)?;
        }
        for (i, c) in l.certificates.iter().enumerate() {
            self.require(Kind::Certificate, &format!("certificates[{i}]"), c)?;
        }
        for (host, c) in &l.sni {
            self.require(Kind::Cluster, &format!("sni.{host}"), c)?;
        }
        // Routes already attached must still make sense on the changed listener.
        if !l.protocol.is_l7() {
            if let Some(r) = self.routes.iter().find(|(_, r)| r.listener == name).map(|(n, _)| n) {
                return Err(ValidationError::conflict(
                    Some("protocol".into()),
                    format!("route {r} is attached to this listener; only http and https listeners take routes"),
                ));
            }
        }
        Ok(())
    }

    pub fn check_route(&self, r: &Route) -> Result<()> {
        match self.listeners.get(&r.listener) {
            None => return Err(missing(Kind::Listener, "listener", &r.listener)),
            Some(l) if !l.protocol.is_l7() => {
                return Err(ValidationError::invalid(
                    "listener",
                    format!(
                        "listener {} is {:?}; routes attach only to http and https listeners",
                        r.listener, l.protocol
                    )
                    .to_lowercase(),
                ))
            }
            Some(_) => {}
        }
        for (field, cluster) in r.clusters() {
            self.require(Kind::Cluster, &field, cluster)?;
        }
        Ok(())
    }

    fn require(&self, kind: Kind, field: &str, name: &str) -> Result<()> {
        if self.contains(kind, name) {
            Ok(())
        } else {
            Err(missing(kind, field, name))
        }
    }

    /// Checks everything: each resource alone, then every cross-reference. The data plane runs this
    /// on each snapshot; the control plane keeps it true on each write.
    pub fn validate(&self) -> Result<()> {
        match self.problems(1).into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Up to `limit` problems, the first of each resource, each with its field path under
    /// `{kind}s.{name}` (`routes.api.match.path`), in dependency order.
    pub fn problems(&self, limit: usize) -> Vec<ValidationError> {
        let mut out = Vec::new();
        let mut check = |section: &str, name: &str, r: Result<()>| {
            if out.len() < limit {
                if let Err(e) = crate::validate::name("name", name).and(r) {
                    out.push(e.within(&format!("{section}.{name}")));
                }
            }
        };
        for (n, c) in &self.certificates {
            check("certificates", n, c.validate_material());
        }
        for (n, c) in &self.clusters {
            check("clusters", n, c.validate().and_then(|_| self.check_cluster(c)));
        }
        for (n, l) in &self.listeners {
            check("listeners", n, l.validate().and_then(|_| self.check_listener(n, l)));
        }
        for (n, r) in &self.routes {
            check("routes", n, r.validate().and_then(|_| self.check_route(r)));
        }
        out
    }

    /// The resources that refer to `kind/name`, as `"route api"` strings, for a 409 on delete.
    pub fn referrers(&self, kind: Kind, name: &str) -> Vec<String> {
        let mut out = Vec::new();
        match kind {
            Kind::Cluster => {
                for (n, r) in &self.routes {
                    if r.clusters().any(|(_, c)| c == name) {
                        out.push(format!("route {n}"));
                    }
                }
                for (n, l) in &self.listeners {
                    if l.cluster.as_deref() == Some(name) || l.sni.values().any(|c| c == name) {
                        out.push(format!("listener {n}"));
                    }
                }
            }
            Kind::Listener => {
                for (n, r) in &self.routes {
                    if r.listener == name {
                        out.push(format!("route {n}"));
                    }
                }
            }
            Kind::Certificate => {
                for (n, c) in &self.clusters {
                    if c.tls.as_ref().and_then(|t| t.client_certificate.as_deref()) == Some(name) {
                        out.push(format!("cluster {n}"));
                    }
                }
                for (n, l) in &self.listeners {
                    if l.certificates.iter().any(|c| c == name) {
                        out.push(format!("listener {n}"));
                    }
                }
            }
            Kind::Route => {}
        }
        out
    }

    /// The part of the config a node of `group` needs: its group's listeners, their routes, and the
    /// clusters and certificates those refer to. References stay closed, so it validates alone.
    pub fn for_group(&self, group: &str) -> Config {
        let listeners: BTreeMap<_, _> =
            self.listeners.iter().filter(|(_, l)| l.group == group).map(|(n, l)| (n.clone(), l.clone())).collect();
        let routes: BTreeMap<_, _> = self
            .routes
            .iter()
            .filter(|(_, r)| listeners.contains_key(&r.listener))
            .map(|(n, r)| (n.clone(), r.clone()))
            .collect();
        let mut clusters = BTreeSet::new();
        let mut certificates = BTreeSet::new();
        for l in listeners.values() {
            clusters.extend(l.cluster.iter().cloned());
            clusters.extend(l.sni.values().cloned());
            certificates.extend(l.certificates.iter().cloned());
        }
        for r in routes.values() {
            clusters.extend(r.clusters().map(|(_, c)| c.to_string()));
        }
        // Client certificates of upstream TLS travel with their clusters.
        for c in clusters.iter().filter_map(|c| self.clusters.get(c)) {
            certificates.extend(c.tls.as_ref().and_then(|t| t.client_certificate.clone()));
        }
        Config {
            clusters: clusters.into_iter().filter_map(|n| self.clusters.get(&n).map(|c| (n, c.clone()))).collect(),
            certificates: certificates
                .into_iter()
                .filter_map(|n| self.certificates.get(&n).map(|c| (n, c.clone())))
                .collect(),
            listeners,
            routes,
        }
    }

    /// The groups that have at least one listener.
    pub fn groups(&self) -> BTreeSet<&str> {
        self.listeners.values().map(|l| l.group.as_str()).collect()
    }
}

fn missing(kind: Kind, field: &str, name: &str) -> ValidationError {
    ValidationError::invalid(field, format!("{kind} {name} does not exist"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::{parse_json, ErrorKind};

    fn demo() -> Config {
        let mut c = Config::default();
        c.clusters.insert("api".into(), parse_json(br#"{"endpoints":[{"address":"127.0.0.1:9001"}]}"#).unwrap());
        c.clusters.insert("db".into(), parse_json(br#"{"endpoints":[{"address":"127.0.0.1:9002"}]}"#).unwrap());
        c.listeners.insert("web".into(), parse_json(br#"{"address":"127.0.0.1:8080","protocol":"http"}"#).unwrap());
        c.listeners.insert(
            "pg".into(),
            parse_json(br#"{"address":"127.0.0.1:15432","protocol":"tcp","cluster":"db","group":"edge"}"#).unwrap(),
        );
        c.routes.insert(
            "api".into(),
            parse_json(br#"{"listener":"web","match":{"path":{"prefix":"/api/"}},"backends":[{"cluster":"api"}]}"#)
                .unwrap(),
        );
        c
    }

    #[test]
    fn demo_is_valid() {
        demo().validate().unwrap();
    }

    #[test]
    fn referrers_name_what_breaks() {
        let c = demo();
        assert_eq!(c.referrers(Kind::Cluster, "api"), vec!["route api"]);
        assert_eq!(c.referrers(Kind::Cluster, "db"), vec!["listener pg"]);
        assert_eq!(c.referrers(Kind::Listener, "web"), vec!["route api"]);
        assert!(c.referrers(Kind::Route, "api").is_empty());
    }

    #[test]
    fn same_address_is_a_conflict() {
        let c = demo();
        let l: Listener = parse_json(br#"{"address":"127.0.0.1:8080","protocol":"http"}"#).unwrap();
        assert_eq!(c.check_listener("web2", &l).unwrap_err().kind, ErrorKind::Conflict);
        assert!(c.check_listener("web", &l).is_ok(), "replacing a listener in place is fine");
    }

    #[test]
    fn missing_references() {
        let c = demo();
        let r: Route = parse_json(br#"{"listener":"web","backends":[{"cluster":"api"},{"cluster":"nope"}]}"#).unwrap();
        assert_eq!(c.check_route(&r).unwrap_err().field.as_deref(), Some("backends[1].cluster"));
        let r: Route = parse_json(br#"{"listener":"pg","backends":[{"cluster":"api"}]}"#).unwrap();
        assert_eq!(c.check_route(&r).unwrap_err().field.as_deref(), Some("listener"));
        let r: Route =
            parse_json(br#"{"listener":"web","backends":[{"cluster":"api"}],"mirror":{"cluster":"nope"}}"#).unwrap();
        assert_eq!(c.check_route(&r).unwrap_err().field.as_deref(), Some("mirror.cluster"));
    }

    #[test]
    fn a_mirrored_cluster_is_referred_to_and_travels_with_the_route() {
        let mut c = demo();
        let r: Route =
            parse_json(br#"{"listener":"web","backends":[{"cluster":"api"}],"mirror":{"cluster":"db"}}"#).unwrap();
        c.routes.insert("api".into(), r);
        assert!(c.referrers(Kind::Cluster, "db").contains(&"route api".to_string()));
        assert!(c.for_group("default").clusters.contains_key("db"));
    }

    #[test]
    fn group_view_is_closed() {
        let c = demo();
        let d = c.for_group("default");
        assert_eq!(d.listeners.keys().collect::<Vec<_>>(), vec!["web"]);
        assert_eq!(d.clusters.keys().collect::<Vec<_>>(), vec!["api"]);
        d.validate().unwrap();
        let e = c.for_group("edge");
        assert_eq!(e.clusters.keys().collect::<Vec<_>>(), vec!["db"]);
        e.validate().unwrap();
    }
}
