//! The pure half of a write: checks a [`Change`] against the current config and yields the new
//! config. No I/O, so every rule here is unit-testable. What rows to write follows from the diff.

use sluice_shared::validate::{self, ValidationError};
use sluice_shared::{Config, Kind};

use super::batch;
use super::{Change, Resource, StoreError};

/// A change made: the config it yields and whether it commits a revision even when nothing changed
/// (a single `PUT` does, per the API contract; a batch equal to what is stored writes nothing).
#[derive(Debug)]
pub(super) struct Applied {
    pub config: Config,
    pub always_commit: bool,
}

pub(super) fn apply(base: &Config, change: Change) -> Result<Applied, StoreError> {
    let single = |config| Ok(Applied { config, always_commit: true });
    match change {
        Change::Put(resource) => single(put(base, resource)?),
        Change::Delete(kind, name) => single(delete(base, kind, name)?),
        Change::SetWeights { route, weights } => single(set_weights(base, route, weights)?),
        Change::Batch(b) => Ok(Applied { config: batch::plan(base, &b)?, always_commit: false }),
        Change::Restore { config, .. } => {
            if let Some(e) = config.problems(1).into_iter().next() {
                return Err(StoreError::Invalid(e));
            }
            Ok(Applied { config, always_commit: false })
        }
    }
}

fn put(base: &Config, resource: Resource) -> Result<Config, StoreError> {
    validate::name("name", resource.name())?;
    resource.validate_alone()?;
    // Each check runs against the config as it is, which holds every resource the new one may refer to.
    match &resource {
        Resource::Cluster(_, c) => base.check_cluster(c)?,
        Resource::Certificate(..) => {}
        Resource::Listener(n, l) => base.check_listener(n, l)?,
        Resource::Route(_, r) => base.check_route(r)?,
    }
    let mut config = base.clone();
    resource.insert_into(&mut config);
    Ok(config)
}

/// A resource's spec as stored: the JSON of its REST body.
pub(super) fn spec_json(config: &Config, kind: Kind, name: &str) -> Result<Option<String>, StoreError> {
    let json = match kind {
        Kind::Cluster => config.clusters.get(name).map(serde_json::to_string),
        Kind::Listener => config.listeners.get(name).map(serde_json::to_string),
        Kind::Route => config.routes.get(name).map(serde_json::to_string),
        Kind::Certificate => config.certificates.get(name).map(serde_json::to_string),
    };
    json.transpose().map_err(|e| StoreError::Unavailable(format!("cannot encode {kind} {name}: {e}")))
}

fn delete(base: &Config, kind: Kind, name: String) -> Result<Config, StoreError> {
    if !base.contains(kind, &name) {
        return Err(StoreError::NotFound { kind, name });
    }
    let by = base.referrers(kind, &name);
    if !by.is_empty() {
        return Err(StoreError::InUse { kind, name, by });
    }
    let mut config = base.clone();
    config.remove(kind, &name);
    Ok(config)
}

fn set_weights(
    base: &Config,
    route_name: String,
    weights: std::collections::BTreeMap<String, u32>,
) -> Result<Config, StoreError> {
    let Some(route) = base.routes.get(&route_name) else {
        return Err(StoreError::NotFound { kind: Kind::Route, name: route_name });
    };
    if weights.is_empty() {
        return Err(ValidationError::invalid("weights", "name at least one backend cluster").into());
    }
    let mut route = route.clone();
    for (cluster, weight) in &weights {
        let Some(backend) = route.backends.iter_mut().find(|b| &b.cluster == cluster) else {
            return Err(ValidationError::invalid(
                format!("weights.{cluster}"),
                format!("cluster {cluster} is not a backend of route {route_name}"),
            )
            .into());
        };
        backend.weight = *weight;
    }
    // Only weights changed, so the route's own rules (bounds, not all zero) are all that can break.
    route.validate().map_err(|e| match weights_field(&e, &route) {
        Some(field) => ValidationError { field: Some(field), ..e },
        None => e,
    })?;
    let mut config = base.clone();
    config.routes.insert(route_name, route);
    Ok(config)
}

/// Reports a weight error in the terms of the request (`weights.api-blue`), not of the route.
fn weights_field(e: &ValidationError, route: &sluice_shared::Route) -> Option<String> {
    let field = e.field.as_deref()?;
    if field == "backends" {
        return Some("weights".into());
    }
    let index: usize = field.strip_prefix("backends[")?.strip_suffix("].weight")?.parse().ok()?;
    Some(format!("weights.{}", route.backends.get(index)?.cluster))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_shared::validate::{parse_json, ErrorKind};
    use std::collections::BTreeMap;

    fn base() -> Config {
        let mut c = Config::default();
        for n in ["blue", "green", "other"] {
            c.clusters.insert(n.into(), parse_json(br#"{"endpoints":[{"address":"127.0.0.1:9001"}]}"#).unwrap());
        }
        c.listeners.insert("web".into(), parse_json(br#"{"address":"127.0.0.1:8080","protocol":"http"}"#).unwrap());
        c.routes.insert(
            "api".into(),
            parse_json(
                br#"{"listener":"web","backends":[{"cluster":"blue","weight":90},{"cluster":"green","weight":10}]}"#,
            )
            .unwrap(),
        );
        c
    }

    fn weights(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
        pairs.iter().map(|(c, w)| (c.to_string(), *w)).collect()
    }

    fn invalid_field(r: Result<Applied, StoreError>) -> String {
        match r {
            Err(StoreError::Invalid(e)) => e.field.unwrap_or_default(),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn weights_change_only_the_named_backends() {
        let c = apply(&base(), Change::SetWeights { route: "api".into(), weights: weights(&[("blue", 0)]) })
            .unwrap()
            .config;
        let ws: Vec<_> = c.routes["api"].backends.iter().map(|b| (b.cluster.as_str(), b.weight)).collect();
        assert_eq!(ws, vec![("blue", 0), ("green", 10)]);
    }

    #[test]
    fn weights_errors() {
        let b = base();
        let set = |ws: &[(&str, u32)]| apply(&b, Change::SetWeights { route: "api".into(), weights: weights(ws) });
        assert_eq!(invalid_field(set(&[("other", 5)])), "weights.other");
        assert_eq!(invalid_field(set(&[("blue", 0), ("green", 0)])), "weights");
        assert_eq!(invalid_field(set(&[("green", 2_000_000)])), "weights.green");
        assert_eq!(invalid_field(set(&[])), "weights");
        let missing = apply(&b, Change::SetWeights { route: "nope".into(), weights: weights(&[("blue", 1)]) });
        assert!(matches!(missing, Err(StoreError::NotFound { kind: Kind::Route, .. })));
    }

    #[test]
    fn delete_rules() {
        let b = base();
        match apply(&b, Change::Delete(Kind::Cluster, "blue".into())) {
            Err(StoreError::InUse { by, .. }) => assert_eq!(by, vec!["route api"]),
            other => panic!("{other:?}"),
        }
        assert!(matches!(apply(&b, Change::Delete(Kind::Cluster, "nope".into())), Err(StoreError::NotFound { .. })));
        let c = apply(&b, Change::Delete(Kind::Cluster, "other".into())).unwrap().config;
        assert!(!c.clusters.contains_key("other"));
    }

    #[test]
    fn put_checks_name_shape_and_references() {
        let b = base();
        let cluster = parse_json(br#"{"endpoints":[]}"#).unwrap();
        assert_eq!(invalid_field(apply(&b, Change::Put(Resource::Cluster("Bad".into(), cluster)))), "name");
        let route = parse_json(br#"{"listener":"web","backends":[{"cluster":"nope"}]}"#).unwrap();
        assert_eq!(invalid_field(apply(&b, Change::Put(Resource::Route("r".into(), route)))), "backends[0].cluster");
        let listener = parse_json(br#"{"address":"127.0.0.1:8080","protocol":"http"}"#).unwrap();
        match apply(&b, Change::Put(Resource::Listener("web2".into(), listener))) {
            Err(StoreError::Invalid(e)) => assert_eq!(e.kind, ErrorKind::Conflict),
            other => panic!("{other:?}"),
        }
    }
}
