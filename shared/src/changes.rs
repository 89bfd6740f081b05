//! What changed between two configs, resource by resource: the one notion of a diff that writes,
//! dry runs, revision history and `sluice diff` all report.

use serde::{Deserialize, Serialize};

use crate::config::{Config, Kind};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Create,
    Update,
    Delete,
}

/// One resource that differs between two configs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceChange {
    pub op: Op,
    pub kind: Kind,
    pub name: String,
}

impl std::fmt::Display for ResourceChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let op = match self.op {
            Op::Create => "create",
            Op::Update => "update",
            Op::Delete => "delete",
        };
        write!(f, "{op} {} {}", self.kind, self.name)
    }
}

/// Every resource that `after` adds, changes or removes relative to `before`, in kind order
/// (certificates, clusters, listeners, routes) and by name within a kind.
pub fn diff(before: &Config, after: &Config) -> Vec<ResourceChange> {
    let mut out = Vec::new();
    for kind in Kind::DEPENDENCY_ORDER {
        match kind {
            Kind::Cluster => one_kind(kind, &before.clusters, &after.clusters, &mut out),
            Kind::Listener => one_kind(kind, &before.listeners, &after.listeners, &mut out),
            Kind::Route => one_kind(kind, &before.routes, &after.routes, &mut out),
            Kind::Certificate => one_kind(kind, &before.certificates, &after.certificates, &mut out),
        }
    }
    out
}

fn one_kind<T: PartialEq>(
    kind: Kind,
    before: &std::collections::BTreeMap<String, T>,
    after: &std::collections::BTreeMap<String, T>,
    out: &mut Vec<ResourceChange>,
) {
    for (name, spec) in after {
        let op = match before.get(name) {
            None => Op::Create,
            Some(old) if old != spec => Op::Update,
            Some(_) => continue,
        };
        out.push(ResourceChange { op, kind, name: name.clone() });
    }
    for name in before.keys().filter(|n| !after.contains_key(*n)) {
        out.push(ResourceChange { op: Op::Delete, kind, name: name.clone() });
    }
}

/// Counts by operation, for one-line summaries: (created, updated, deleted).
pub fn counts(changes: &[ResourceChange]) -> (usize, usize, usize) {
    let n = |op| changes.iter().filter(|c| c.op == op).count();
    (n(Op::Create), n(Op::Update), n(Op::Delete))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::parse_json;

    #[test]
    fn creates_updates_and_deletes_in_dependency_order() {
        let mut a = Config::default();
        a.clusters.insert("keep".into(), parse_json(br#"{"endpoints":[]}"#).unwrap());
        a.clusters.insert("gone".into(), parse_json(br#"{"endpoints":[]}"#).unwrap());
        a.clusters.insert("edit".into(), parse_json(br#"{"endpoints":[]}"#).unwrap());
        let mut b = a.clone();
        b.clusters.remove("gone");
        b.clusters.insert("edit".into(), parse_json(br#"{"lb_policy":"random","endpoints":[]}"#).unwrap());
        b.listeners.insert("web".into(), parse_json(br#"{"address":"127.0.0.1:1","protocol":"http"}"#).unwrap());
        let shown: Vec<String> = diff(&a, &b).iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["update cluster edit", "delete cluster gone", "create listener web"]);
        assert_eq!(counts(&diff(&a, &b)), (1, 1, 1));
        assert!(diff(&b, &b).is_empty());
    }
}
