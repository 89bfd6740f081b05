//! The pure half of a write of many resources at once (`POST /v1/config`): puts, deletions (with
//! their referrers, on request), pruning by name prefix, and every problem reported together.
//! All or nothing: the batch either yields one valid config or a list of what is wrong with it.

use std::collections::BTreeSet;

use sluice_shared::validate::ValidationError;
use sluice_shared::{Config, ErrorKind, Kind};

use super::{Resource, StoreError};

/// Problems reported at most per write; past this, fixing the first ones is the way on.
pub const MAX_PROBLEMS: usize = 100;

/// Many resource changes that commit as one revision, or not at all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// Created or replaced.
    pub puts: Vec<Resource>,
    pub deletes: Vec<(Kind, String)>,
    /// Also delete every stored resource whose name starts with this and that `puts` does not name.
    pub prune_prefix: Option<String>,
    /// Routes that exist keep the weights they have for backends they keep: weights belong to
    /// whoever shifts them at run time (a pipeline, a rollout), not to the file.
    pub keep_weights: bool,
    /// Deleting a resource deletes what refers to it too (transitively) instead of failing.
    pub cascade: bool,
    /// Resources of the write that could not even be read (a wrong shape), as `(kind, name)` and
    /// why: reported with the rest, and counted as present when others refer to them.
    pub unreadable: Vec<(Kind, String, ValidationError)>,
}

/// One thing wrong with a write: the resource (`route api`) and the error in its own terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub resource: Option<String>,
    pub error: ValidationError,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.resource {
            Some(r) => write!(f, "{r}: {}", self.error),
            None => write!(f, "{}", self.error),
        }
    }
}

impl Problem {
    fn of(kind: Kind, name: &str, error: ValidationError) -> Self {
        Problem { resource: Some(format!("{kind} {name}")), error }
    }

    /// Splits a whole-config path (`routes.api.match.path`) into the resource and its field.
    pub fn from_config_error(e: ValidationError) -> Self {
        let field = e.field.clone().unwrap_or_default();
        let mut parts = field.splitn(3, '.');
        let (Some(section), Some(name)) = (parts.next(), parts.next()) else {
            return Problem { resource: None, error: e };
        };
        let Some(kind) = Kind::parse(section) else { return Problem { resource: None, error: e } };
        let rest = parts.next().map(str::to_string);
        Problem { resource: Some(format!("{kind} {name}")), error: ValidationError { field: rest, ..e } }
    }
}

/// The config the batch makes of `base`, or every problem found (up to [`MAX_PROBLEMS`]): each
/// resource's own first, then what spans resources among those that are sound.
pub(super) fn plan(base: &Config, batch: &Batch) -> Result<Config, StoreError> {
    let mut problems: Vec<Problem> = Vec::new();
    let mut named = BTreeSet::new();
    // Named in the write but unusable: their problems are reported, and others may refer to them.
    let mut broken = BTreeSet::new();
    for (kind, name, e) in &batch.unreadable {
        named.insert((*kind, name.clone()));
        broken.insert((*kind, name.clone()));
        problems.push(Problem::of(*kind, name, e.clone()));
    }
    for r in &batch.puts {
        let (kind, name) = (r.kind(), r.name());
        if !named.insert((kind, name.to_string())) {
            problems.push(Problem::of(kind, name, ValidationError::invalid("", "appears twice in this write")));
            continue;
        }
        let own = r.problems();
        if !own.is_empty() {
            broken.insert((kind, name.to_string()));
            problems.extend(own.into_iter().map(|e| Problem::of(kind, name, e)));
        }
    }
    // Dependency order, then name: a file's problems read in the order its resources apply.
    // A stable sort keeps each resource's problems in field order.
    problems.sort_by_key(|p| p.resource.clone().map(|r| resource_order(&r)));
    for (kind, name) in &batch.deletes {
        if named.contains(&(*kind, name.clone())) {
            problems.push(Problem::of(*kind, name, ValidationError::invalid("", "is both applied and deleted")));
        } else if !base.contains(*kind, name) {
            problems.push(Problem::of(*kind, name, ValidationError::invalid("", "does not exist")));
        }
    }
    if batch.prune_prefix.as_deref() == Some("") {
        let why = "name a prefix, so that a prune never deletes another team's resources";
        problems.push(Problem { resource: None, error: ValidationError::invalid("prune.prefix", why) });
    }

    let mut config = base.clone();
    for r in batch.puts.iter().filter(|r| !broken.contains(&(r.kind(), r.name().to_string()))) {
        let mut r = r.clone();
        if batch.keep_weights {
            keep_weights(base, &mut r);
        }
        r.insert_into(&mut config);
    }
    let mut doomed: BTreeSet<(Kind, String)> = batch.deletes.iter().cloned().collect();
    if let Some(prefix) = batch.prune_prefix.as_deref().filter(|p| !p.is_empty()) {
        for kind in Kind::ALL {
            for name in names(&config, kind).filter(|n| n.starts_with(prefix)) {
                if !named.contains(&(kind, name.to_string())) {
                    doomed.insert((kind, name.to_string()));
                }
            }
        }
    }
    if batch.cascade {
        doomed = with_referrers(&config, doomed);
    }
    for (kind, name) in &doomed {
        config.remove(*kind, name);
    }
    // A deletion that leaves a referrer behind is the deletion's fault, not the referrer's.
    for (kind, name) in &doomed {
        let by = config.referrers(*kind, name);
        if !by.is_empty() {
            let message = format!("is still used by {}; delete those too, or ask for a cascade", by.join(", "));
            problems.push(Problem {
                resource: Some(format!("{kind} {name}")),
                error: ValidationError::conflict(None, message),
            });
        }
    }
    // References to what is reported already (broken, or deleted while still used) are not news.
    let refers_to_broken = |p: &Problem| {
        broken.iter().chain(doomed.iter()).any(|(k, n)| p.error.message == format!("{k} {n} does not exist"))
    };
    let spanning: Vec<Problem> = config
        .problems(MAX_PROBLEMS)
        .into_iter()
        .map(Problem::from_config_error)
        .filter(|p| !refers_to_broken(p))
        .collect();
    problems.extend(spanning);
    problems.truncate(MAX_PROBLEMS);
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(StoreError::Problems(problems))
    }
}

/// Sort key of a problem's resource (`route api`): dependency order of its kind, then its name.
fn resource_order(resource: &str) -> (usize, String) {
    let (kind, name) = resource.split_once(' ').unwrap_or((resource, ""));
    let rank = Kind::parse(kind).and_then(|k| Kind::DEPENDENCY_ORDER.iter().position(|o| *o == k)).unwrap_or(0);
    (rank, name.to_string())
}

fn names(config: &Config, kind: Kind) -> Box<dyn Iterator<Item = &str> + '_> {
    match kind {
        Kind::Cluster => Box::new(config.clusters.keys().map(String::as_str)),
        Kind::Listener => Box::new(config.listeners.keys().map(String::as_str)),
        Kind::Route => Box::new(config.routes.keys().map(String::as_str)),
        Kind::Certificate => Box::new(config.certificates.keys().map(String::as_str)),
    }
}

/// `doomed` plus everything that refers to any of it, until nothing more does.
fn with_referrers(config: &Config, mut doomed: BTreeSet<(Kind, String)>) -> BTreeSet<(Kind, String)> {
    let mut queue: Vec<(Kind, String)> = doomed.iter().cloned().collect();
    while let Some((kind, name)) = queue.pop() {
        for by in config.referrers(kind, &name) {
            let Some((k, n)) = by.split_once(' ').and_then(|(k, n)| Some((Kind::parse(k)?, n.to_string()))) else {
                continue;
            };
            if doomed.insert((k, n.clone())) {
                queue.push((k, n));
            }
        }
    }
    doomed
}

fn keep_weights(base: &Config, resource: &mut Resource) {
    let Resource::Route(name, route) = resource else { return };
    let Some(stored) = base.routes.get(name) else { return };
    for b in &mut route.backends {
        if let Some(old) = stored.backends.iter().find(|o| o.cluster == b.cluster) {
            b.weight = old.weight;
        }
    }
}

/// The status a list of problems answers with: 409 when each is a conflict with what is stored.
pub fn all_conflicts(problems: &[Problem]) -> bool {
    !problems.is_empty() && problems.iter().all(|p| p.error.kind == ErrorKind::Conflict)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_shared::validate::parse_json;

    fn base() -> Config {
        let mut c = Config::default();
        for n in ["a-blue", "a-green", "b-db"] {
            c.clusters.insert(n.into(), parse_json(br#"{"endpoints":[{"address":"127.0.0.1:9001"}]}"#).unwrap());
        }
        c.listeners.insert("a-web".into(), parse_json(br#"{"address":"127.0.0.1:8080","protocol":"http"}"#).unwrap());
        c.routes.insert(
            "a-api".into(),
            parse_json(
                br#"{"listener":"a-web","backends":[{"cluster":"a-blue","weight":90},{"cluster":"a-green","weight":10}]}"#,
            )
            .unwrap(),
        );
        c
    }

    fn route(json: &str) -> Resource {
        Resource::Route("a-api".into(), parse_json(json.as_bytes()).unwrap())
    }

    fn problems(r: Result<Config, StoreError>) -> Vec<String> {
        match r {
            Err(StoreError::Problems(p)) => p.iter().map(ToString::to_string).collect(),
            other => panic!("expected problems, got {other:?}"),
        }
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let bad_cluster =
            Resource::Cluster("c".into(), parse_json(br#"{"endpoints":[{"address":"nowhere"}]}"#).unwrap());
        let bad_route = Resource::Route("r".into(), parse_json(br#"{"listener":"a-web","backends":[]}"#).unwrap());
        let dangling = Resource::Route(
            "s".into(),
            parse_json(br#"{"listener":"nope","backends":[{"cluster":"a-blue"}]}"#).unwrap(),
        );
        let refers_to_bad =
            Resource::Route("t".into(), parse_json(br#"{"listener":"a-web","backends":[{"cluster":"c"}]}"#).unwrap());
        let unreadable = vec![(Kind::Listener, "u".into(), ValidationError::invalid("address", "expected a string"))];
        let batch =
            Batch { puts: vec![dangling, bad_route, bad_cluster, refers_to_bad], unreadable, ..Batch::default() };
        // Each resource's own mistakes first, in dependency order; then references among the sound
        // ones, except to resources already reported.
        let p = problems(plan(&base(), &batch));
        assert_eq!(p.len(), 4, "{p:?}");
        assert!(p[0].starts_with("cluster c: endpoints[0].address"), "{p:?}");
        assert!(p[1].starts_with("listener u: address"), "{p:?}");
        assert!(p[2].starts_with("route r: backends"), "{p:?}");
        assert_eq!(p[3], "route s: listener: listener nope does not exist");
        let batch = Batch {
            puts: vec![batch.puts[0].clone()],
            deletes: vec![(Kind::Route, "ghost".into())],
            ..Batch::default()
        };
        let p = problems(plan(&base(), &batch));
        assert_eq!(p, ["route ghost: does not exist", "route s: listener: listener nope does not exist"]);
    }

    #[test]
    fn keep_weights_leaves_the_pipelines_weights() {
        let file = route(
            r#"{"listener":"a-web","timeout_ms":500,"backends":[{"cluster":"a-blue","weight":100},{"cluster":"a-green","weight":0}]}"#,
        );
        let kept = plan(&base(), &Batch { puts: vec![file.clone()], keep_weights: true, ..Batch::default() }).unwrap();
        let w: Vec<u32> = kept.routes["a-api"].backends.iter().map(|b| b.weight).collect();
        assert_eq!(w, [90, 10]);
        assert_eq!(kept.routes["a-api"].timeout_ms, Some(500));
        let owned = plan(&base(), &Batch { puts: vec![file], ..Batch::default() }).unwrap();
        assert_eq!(owned.routes["a-api"].backends[0].weight, 100);
    }

    #[test]
    fn prune_deletes_only_under_its_prefix() {
        let keep = Resource::Cluster("a-blue".into(), parse_json(br#"{"endpoints":[]}"#).unwrap());
        let batch = Batch { puts: vec![keep], prune_prefix: Some("a-".into()), ..Batch::default() };
        let c = plan(&base(), &batch).unwrap();
        let left: Vec<&str> = c.clusters.keys().map(String::as_str).collect();
        assert_eq!(left, ["a-blue", "b-db"]);
        assert!(c.routes.is_empty() && c.listeners.is_empty());
        let p = problems(plan(&base(), &Batch { prune_prefix: Some(String::new()), ..Batch::default() }));
        assert!(p[0].contains("prune.prefix"), "{p:?}");
    }

    #[test]
    fn deleting_a_referenced_resource_needs_a_cascade() {
        let batch = Batch { deletes: vec![(Kind::Listener, "a-web".into())], ..Batch::default() };
        let p = problems(plan(&base(), &batch));
        assert_eq!(p, ["listener a-web: is still used by route a-api; delete those too, or ask for a cascade"]);
        let c = plan(&base(), &Batch { cascade: true, ..batch }).unwrap();
        assert!(c.routes.is_empty() && c.listeners.is_empty());
        assert_eq!(c.clusters.len(), 3);
    }

    #[test]
    fn config_paths_become_resource_and_field() {
        let p = Problem::from_config_error(ValidationError::invalid("routes.api.match.path", "bad"));
        assert_eq!(p.resource.as_deref(), Some("route api"));
        assert_eq!(p.error.field.as_deref(), Some("match.path"));
    }
}
