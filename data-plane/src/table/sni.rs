//! The SNI map of a tls passthrough listener: server name -> cluster, exact names before
//! `*.suffix` wildcards (longer suffix first), then the listener's default cluster.

use std::collections::HashMap;
use std::sync::Arc;

use super::lb::ClusterLb;

#[derive(Debug, Default)]
pub(crate) struct SniMap {
    exact: HashMap<Box<str>, Arc<ClusterLb>>,
    /// Keyed by the suffix without `*.`.
    wildcard: HashMap<Box<str>, Arc<ClusterLb>>,
}

impl SniMap {
    pub(crate) fn insert(&mut self, pattern: &str, cluster: Arc<ClusterLb>) {
        let pattern = pattern.to_ascii_lowercase();
        match pattern.strip_prefix("*.") {
            Some(suffix) => self.wildcard.insert(suffix.into(), cluster),
            None => self.exact.insert(pattern.into(), cluster),
        };
    }

    /// `name` must be lower-case without a trailing dot (as [`super::normalize_host`] makes it).
    pub(crate) fn get(&self, name: &str) -> Option<&Arc<ClusterLb>> {
        if let Some(c) = self.exact.get(name) {
            return Some(c);
        }
        if name.starts_with('.') {
            return None;
        }
        let mut rest = name;
        while let Some(dot) = rest.find('.') {
            rest = &rest[dot + 1..];
            if let Some(c) = self.wildcard.get(rest) {
                return Some(c);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use sluice_shared::model::LbPolicy;

    use super::*;

    #[test]
    fn exact_then_longest_wildcard() {
        let lb = |n: &str| Arc::new(ClusterLb::new(n, LbPolicy::RoundRobin, Vec::new()));
        let mut m = SniMap::default();
        m.insert("a.example.com", lb("exact"));
        m.insert("*.example.com", lb("wild"));
        m.insert("*.b.example.com", lb("deep"));
        let name = |s: &str| m.get(s).map(|c| c.name().to_string());
        assert_eq!(name("a.example.com").as_deref(), Some("exact"));
        assert_eq!(name("x.b.example.com").as_deref(), Some("deep"));
        assert_eq!(name("b.example.com").as_deref(), Some("wild"));
        assert_eq!(name("x.y.example.com").as_deref(), Some("wild"));
        assert_eq!(name("example.com"), None);
        assert_eq!(name(".example.com"), None);
    }
}
