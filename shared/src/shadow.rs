//! Routes that can never match: every request one would take goes to another route of the same
//! listener that wins over it (a higher priority, or the same conditions and a name that sorts
//! first). Found conservatively (a warning must never be wrong): a route is reported only when a
//! winner's conditions are each at least as broad as its own.

use crate::config::Config;
use crate::model::{PathKind, Route, ValueMatch};
use crate::validate::ValidationError;

/// One warning per shadowed route among `names` (those a write touched), naming its winner.
pub fn shadowed_routes<'a>(
    config: &Config,
    names: impl IntoIterator<Item = &'a str>,
) -> Vec<(String, ValidationError)> {
    let mut out = Vec::new();
    for name in names {
        let Some(route) = config.routes.get(name) else { continue };
        let winner = config.routes.iter().find(|(other_name, other)| {
            other_name.as_str() != name
                && other.listener == route.listener
                && (other.priority > route.priority
                    || (other.priority == route.priority
                        && other.matcher == route.matcher
                        && other_name.as_str() < name))
                && covers(other, route)
        });
        if let Some((winner_name, winner)) = winner {
            let why = if winner.priority > route.priority {
                format!("route {winner_name} (priority {}) takes every request it would match", winner.priority)
            } else {
                format!("route {winner_name} has the same conditions and priority and its name sorts first")
            };
            out.push((
                name.to_string(),
                ValidationError::invalid("match", format!("this route can never match: {why}")),
            ));
        }
    }
    out
}

/// Whether every request `narrow` matches is matched by `broad` too.
fn covers(broad: &Route, narrow: &Route) -> bool {
    let (b, n) = (&broad.matcher, &narrow.matcher);
    hosts_cover(&b.hosts, &n.hosts)
        && path_covers(b.path.as_ref().and_then(|p| p.kind()), n.path.as_ref().and_then(|p| p.kind()))
        && (b.methods.is_empty() || (!n.methods.is_empty() && n.methods.iter().all(|m| b.methods.contains(m))))
        && conditions_cover(&b.headers, &n.headers)
        && conditions_cover(&b.query, &n.query)
}

fn hosts_cover(broad: &[String], narrow: &[String]) -> bool {
    if broad.is_empty() {
        return true;
    }
    !narrow.is_empty()
        && narrow.iter().all(|h| {
            broad.iter().any(|b| {
                b.eq_ignore_ascii_case(h)
                    || b.strip_prefix("*.").is_some_and(|suffix| {
                        !h.starts_with("*.")
                            && h.len() > suffix.len() + 1
                            && h[h.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                            && h.as_bytes()[h.len() - suffix.len() - 1] == b'.'
                    })
            })
        })
}

fn path_covers(broad: Option<PathKind<'_>>, narrow: Option<PathKind<'_>>) -> bool {
    match (broad, narrow) {
        (None, _) | (Some(PathKind::Prefix("/")), _) => true,
        (Some(PathKind::Prefix(b)), Some(PathKind::Prefix(n) | PathKind::Exact(n))) => n.starts_with(b),
        (Some(PathKind::Exact(b)), Some(PathKind::Exact(n))) => b == n,
        (Some(PathKind::Regex(b)), Some(PathKind::Regex(n))) => b == n,
        _ => false,
    }
}

/// Each of the broad route's conditions is also one of the narrow route's.
fn conditions_cover(broad: &[ValueMatch], narrow: &[ValueMatch]) -> bool {
    broad.iter().all(|b| narrow.iter().any(|n| n.name.eq_ignore_ascii_case(&b.name) && n == b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::parse_json;

    fn config(routes: &[(&str, &str)]) -> Config {
        let mut c = Config::default();
        for (name, json) in routes {
            c.routes.insert(name.to_string(), parse_json(json.as_bytes()).unwrap());
        }
        c
    }

    fn shadowed(c: &Config) -> Vec<String> {
        shadowed_routes(c, c.routes.keys().map(String::as_str)).into_iter().map(|(n, _)| n).collect()
    }

    #[test]
    fn a_broader_route_of_higher_priority_shadows() {
        let c = config(&[
            ("all", r#"{"listener":"web","priority":10,"match":{"path":{"prefix":"/"}},"backends":[{"cluster":"a"}]}"#),
            ("api", r#"{"listener":"web","match":{"path":{"prefix":"/api/"}},"backends":[{"cluster":"a"}]}"#),
            ("other", r#"{"listener":"edge","match":{"path":{"prefix":"/api/"}},"backends":[{"cluster":"a"}]}"#),
        ]);
        assert_eq!(shadowed(&c), ["api"]);
    }

    #[test]
    fn narrower_or_disjoint_routes_do_not() {
        let c = config(&[
            (
                "v1",
                r#"{"listener":"web","priority":10,"match":{"path":{"prefix":"/api/v1/"}},"backends":[{"cluster":"a"}]}"#,
            ),
            ("api", r#"{"listener":"web","match":{"path":{"prefix":"/api/"}},"backends":[{"cluster":"a"}]}"#),
            ("get", r#"{"listener":"web","priority":10,"match":{"methods":["GET"]},"backends":[{"cluster":"a"}]}"#),
            ("host", r#"{"listener":"web","priority":10,"match":{"hosts":["a.com"]},"backends":[{"cluster":"a"}]}"#),
        ]);
        assert!(shadowed(&c).is_empty(), "{:?}", shadowed(&c));
    }

    #[test]
    fn same_conditions_same_priority_the_later_name_loses() {
        let c = config(&[
            ("a", r#"{"listener":"web","match":{"path":{"exact":"/x"}},"backends":[{"cluster":"a"}]}"#),
            ("b", r#"{"listener":"web","match":{"path":{"exact":"/x"}},"backends":[{"cluster":"a"}]}"#),
        ]);
        assert_eq!(shadowed(&c), ["b"]);
    }

    #[test]
    fn wildcard_hosts_and_conditions() {
        assert!(hosts_cover(&["*.shop.com".into()], &["a.shop.com".into()]));
        assert!(!hosts_cover(&["*.shop.com".into()], &["shop.com".into()]));
        assert!(!hosts_cover(&["*.shop.com".into()], &[]));
        let h = |n: &str| ValueMatch { name: n.into(), present: Some(true), ..Default::default() };
        assert!(conditions_cover(&[h("x")], &[h("x"), h("y")]));
        assert!(!conditions_cover(&[h("x"), h("y")], &[h("x")]));
    }
}
