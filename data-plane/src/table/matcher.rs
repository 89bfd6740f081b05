//! Compiled match conditions of one route: path, methods, headers, query parameters.
//!
//! Hosts are not here: they are what the index is keyed by (see `index.rs`).

use http::header::HeaderName;
use regex::Regex;
use sluice_shared::model::{PathKind, RouteMatch, ValueKind, ValueMatch};
use sluice_shared::validate::REGEX_SIZE_LIMIT;

use super::request::{decode, decoded_eq, query_pairs, RequestView};
use super::CompileError;

/// How a route's path condition is written; the index uses it to place the route.
#[derive(Debug)]
pub(crate) enum PathMatcher {
    Any,
    Exact(Box<str>),
    Prefix(Box<str>),
    Regex(Regex),
}

/// One condition on a header or query parameter value.
#[derive(Debug)]
enum ValueTest {
    Exact(Box<str>),
    Regex(Regex),
    /// `true`: the name must be there; `false`: it must be absent.
    Present(bool),
}

#[derive(Debug)]
struct HeaderCondition {
    name: HeaderName,
    test: ValueTest,
}

#[derive(Debug)]
struct QueryCondition {
    name: Box<str>,
    test: ValueTest,
}

/// Everything a route requires of a request besides its host.
#[derive(Debug)]
pub(crate) struct Conditions {
    pub(crate) path: PathMatcher,
    methods: Box<[Box<str>]>,
    headers: Box<[HeaderCondition]>,
    query: Box<[QueryCondition]>,
}

/// Regexes are compiled once, with the same size bound validation uses, so a hostile pattern can
/// neither eat memory nor get past validation here.
pub(crate) fn compile_regex(field: &str, pattern: &str) -> Result<Regex, CompileError> {
    regex::RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| CompileError::new(field, format!("bad regex: {e}")))
}

fn compile_test(field: &str, m: &ValueMatch) -> Result<ValueTest, CompileError> {
    match m.kind() {
        Some(ValueKind::Exact(v)) => Ok(ValueTest::Exact(v.into())),
        Some(ValueKind::Regex(r)) => Ok(ValueTest::Regex(compile_regex(&format!("{field}.regex"), r)?)),
        Some(ValueKind::Present(p)) => Ok(ValueTest::Present(p)),
        None => Err(CompileError::new(field, "set exactly one of exact, regex, present")),
    }
}

impl Conditions {
    /// `field` is the route's path in the config (`routes.api`), for error messages.
    pub(crate) fn compile(field: &str, m: &RouteMatch) -> Result<Conditions, CompileError> {
        let path = match m.path.as_ref().map(|p| p.kind()) {
            None => PathMatcher::Any,
            Some(Some(PathKind::Exact(p))) => PathMatcher::Exact(p.into()),
            Some(Some(PathKind::Prefix(p))) => PathMatcher::Prefix(p.into()),
            Some(Some(PathKind::Regex(r))) => {
                PathMatcher::Regex(compile_regex(&format!("{field}.match.path.regex"), r)?)
            }
            Some(None) => {
                return Err(CompileError::new(format!("{field}.match.path"), "set exactly one of prefix, exact, regex"))
            }
        };
        let mut headers = Vec::with_capacity(m.headers.len());
        for (i, h) in m.headers.iter().enumerate() {
            let f = format!("{field}.match.headers[{i}]");
            // `from_bytes` lower-cases, so names compare case-insensitively as HTTP wants.
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| CompileError::new(format!("{f}.name"), format!("{:?} is not a header name", h.name)))?;
            headers.push(HeaderCondition { name, test: compile_test(&f, h)? });
        }
        let mut query = Vec::with_capacity(m.query.len());
        for (i, q) in m.query.iter().enumerate() {
            let f = format!("{field}.match.query[{i}]");
            query.push(QueryCondition { name: q.name.as_str().into(), test: compile_test(&f, q)? });
        }
        Ok(Conditions {
            path,
            methods: m.methods.iter().map(|s| s.as_str().into()).collect(),
            headers: headers.into(),
            query: query.into(),
        })
    }

    /// How many method/header/query conditions there are: a method list counts as one condition
    /// (`[GET, POST]` is no more specific than `[GET]`), each header and query condition as one.
    pub(crate) fn condition_count(&self) -> usize {
        usize::from(!self.methods.is_empty()) + self.headers.len() + self.query.len()
    }

    /// Checks everything except the host and, unless it is a regex, the path (the index has
    /// already matched exact and prefix paths). Cheap checks first.
    pub(crate) fn matches_rest(&self, req: &RequestView<'_>) -> bool {
        if !self.methods.is_empty() && !self.methods.iter().any(|m| **m == *req.method.as_str()) {
            return false;
        }
        if let PathMatcher::Regex(r) = &self.path {
            if !r.is_match(req.path) {
                return false;
            }
        }
        self.headers.iter().all(|h| header_matches(h, req)) && self.query.iter().all(|q| query_matches(q, req))
    }

    /// The full check, path included (used by tests and by callers outside the index).
    pub(crate) fn matches_path(&self, path: &str) -> bool {
        match &self.path {
            PathMatcher::Any => true,
            PathMatcher::Exact(p) => path == &**p,
            PathMatcher::Prefix(p) => path.starts_with(&**p),
            PathMatcher::Regex(r) => r.is_match(path),
        }
    }
}

/// A header with several values (or several lines) matches when any one of them does.
fn header_matches(h: &HeaderCondition, req: &RequestView<'_>) -> bool {
    let mut values = req.headers.get_all(&h.name).iter();
    match &h.test {
        ValueTest::Present(want) => req.headers.contains_key(&h.name) == *want,
        ValueTest::Exact(v) => values.any(|hv| hv.as_bytes() == v.as_bytes()),
        // Header values may carry non-ASCII bytes; only valid UTF-8 can be matched by a regex.
        ValueTest::Regex(r) => values.any(|hv| std::str::from_utf8(hv.as_bytes()).is_ok_and(|s| r.is_match(s))),
    }
}

/// A repeated query parameter matches when any one of its values does.
fn query_matches(q: &QueryCondition, req: &RequestView<'_>) -> bool {
    let query = req.query.unwrap_or("");
    let mut values = query_pairs(query).filter(|(n, _)| decoded_eq(n, &q.name)).map(|(_, v)| v);
    match &q.test {
        ValueTest::Present(want) => values.next().is_some() == *want,
        ValueTest::Exact(want) => values.any(|v| decoded_eq(v, want)),
        ValueTest::Regex(r) => values.any(|v| r.is_match(&decode(v))),
    }
}

#[cfg(test)]
mod tests {
    use http::{HeaderMap, HeaderValue, Method};
    use sluice_shared::validate::parse_json;

    use super::*;

    fn conditions(json: &str) -> Conditions {
        Conditions::compile("routes.r", &parse_json::<RouteMatch>(json.as_bytes()).unwrap()).unwrap()
    }

    fn view<'a>(method: &'a Method, path: &'a str, query: Option<&'a str>, headers: &'a HeaderMap) -> RequestView<'a> {
        RequestView { method, host: None, path, query, headers }
    }

    #[test]
    fn paths() {
        let exact = conditions(r#"{"path":{"exact":"/login"}}"#);
        assert!(exact.matches_path("/login"));
        assert!(!exact.matches_path("/login/"));
        let prefix = conditions(r#"{"path":{"prefix":"/api/"}}"#);
        assert!(prefix.matches_path("/api/"));
        assert!(prefix.matches_path("/api/v1"));
        assert!(!prefix.matches_path("/api"));
        let regex = conditions(r#"{"path":{"regex":"^/v[0-9]+/"}}"#);
        assert!(regex.matches_path("/v12/x"));
        assert!(!regex.matches_path("/vx/"));
        assert!(conditions("{}").matches_path("/anything"));
    }

    #[test]
    fn methods_and_counts() {
        let c = conditions(r#"{"methods":["GET","POST"],"headers":[{"name":"x-a","present":true}]}"#);
        assert_eq!(c.condition_count(), 2);
        let h = HeaderMap::new();
        assert!(!c.matches_rest(&view(&Method::GET, "/", None, &h)), "header missing");
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("1"));
        assert!(c.matches_rest(&view(&Method::POST, "/", None, &h)));
        assert!(!c.matches_rest(&view(&Method::PUT, "/", None, &h)));
    }

    #[test]
    fn headers() {
        let c = conditions(
            r#"{"headers":[{"name":"X-Canary","exact":"1"},{"name":"x-user","regex":"^u[0-9]+$"},{"name":"x-off","present":false}]}"#,
        );
        let mut h = HeaderMap::new();
        h.append("x-canary", HeaderValue::from_static("0"));
        h.append("x-canary", HeaderValue::from_static("1"));
        h.insert("x-user", HeaderValue::from_static("u42"));
        assert!(c.matches_rest(&view(&Method::GET, "/", None, &h)), "any value of a repeated header");
        h.insert("x-off", HeaderValue::from_static(""));
        assert!(!c.matches_rest(&view(&Method::GET, "/", None, &h)), "present:false means absent");
        h.remove("x-off");
        h.insert("x-user", HeaderValue::from_static("admin"));
        assert!(!c.matches_rest(&view(&Method::GET, "/", None, &h)));
        h.insert("x-user", HeaderValue::from_bytes(b"u1\xff").unwrap());
        assert!(!c.matches_rest(&view(&Method::GET, "/", None, &h)), "non-UTF-8 never matches a regex");
    }

    #[test]
    fn query() {
        let c = conditions(
            r#"{"query":[{"name":"debug","present":true},{"name":"user name","exact":"a b"},{"name":"v","regex":"^é$"},{"name":"off","present":false}]}"#,
        );
        let h = HeaderMap::new();
        let ok = |q: &str| c.matches_rest(&view(&Method::GET, "/", Some(q), &h));
        assert!(ok("debug&user%20name=a+b&v=%C3%A9"));
        assert!(ok("v=%C3%A9&user+name=a%20b&debug=0&user+name=zz"));
        assert!(!ok("user%20name=a+b&v=%C3%A9"), "debug missing");
        assert!(!ok("debug&user%20name=a+b&v=%C3%A9&off=1"), "present:false");
        assert!(!ok("debug&user%20name=a%2Bb&v=%C3%A9"), "%2B is a plus, not a space");
        assert!(!c.matches_rest(&view(&Method::GET, "/", None, &h)));
    }

    #[test]
    fn bad_regex_is_an_error_with_field() {
        let m: RouteMatch = parse_json(br#"{"headers":[{"name":"x","regex":"("}]}"#).unwrap();
        let e = Conditions::compile("routes.r", &m).unwrap_err();
        assert_eq!(e.field, "routes.r.match.headers[0].regex");
    }
}
