//! A route's rewrites, compiled once per revision: header operations with their value templates,
//! the path and Host rewrite, and the redirect. Pure: the proxy applies them (`http/proxy/transform.rs`).

use http::header::{HeaderName, HeaderValue};
use regex::Regex;
use sluice_shared::transforms::{HeaderRewrite, Redirect, Rewrite};

use super::CompileError;

/// A header value: literal, or with variables filled in per request.
#[derive(Debug, Clone)]
pub enum Template {
    Literal(HeaderValue),
    Pieces(Box<[Piece]>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    ClientIp,
    RequestId,
    Route,
}

/// What a request fills a template with.
pub struct Values<'a> {
    pub client_ip: &'a str,
    pub request_id: Option<&'a str>,
    pub route: &'a str,
}

impl Template {
    fn parse(value: &str) -> Template {
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut rest = value;
        while let Some(at) = rest.find('%') {
            text.push_str(&rest[..at]);
            let after = &rest[at..];
            let (piece, len) = if after.starts_with("%%") {
                (None, 2)
            } else if after.starts_with("%CLIENT_IP%") {
                (Some(Piece::ClientIp), 11)
            } else if after.starts_with("%REQUEST_ID%") {
                (Some(Piece::RequestId), 12)
            } else if after.starts_with("%ROUTE%") {
                (Some(Piece::Route), 7)
            } else {
                // Validation refuses other variables; a lone `%` stays as written.
                (None, 1)
            };
            match piece {
                // `%%`, or a lone `%`: one literal `%` either way.
                None => text.push('%'),
                Some(p) => {
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    pieces.push(p);
                }
            }
            rest = &after[len..];
        }
        text.push_str(rest);
        if pieces.is_empty() {
            if let Ok(v) = HeaderValue::from_str(&text) {
                return Template::Literal(v);
            }
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Template::Pieces(pieces.into())
    }

    /// The value for one request; `None` if it cannot be a header value (never, for what
    /// validation accepts and the variables hold).
    pub fn render(&self, values: &Values<'_>) -> Option<HeaderValue> {
        match self {
            Template::Literal(v) => Some(v.clone()),
            Template::Pieces(pieces) => {
                let mut out = String::new();
                for p in pieces.iter() {
                    match p {
                        Piece::Text(t) => out.push_str(t),
                        Piece::ClientIp => out.push_str(values.client_ip),
                        Piece::RequestId => out.push_str(values.request_id.unwrap_or("")),
                        Piece::Route => out.push_str(values.route),
                    }
                }
                HeaderValue::try_from(out).ok()
            }
        }
    }

    /// Whether rendering needs the request id.
    fn uses_request_id(&self) -> bool {
        matches!(self, Template::Pieces(p) if p.contains(&Piece::RequestId))
    }
}

/// Header operations in the order they apply: remove, set, add.
#[derive(Debug, Clone)]
pub struct HeaderOps {
    pub remove: Box<[HeaderName]>,
    pub set: Box<[(HeaderName, Template)]>,
    pub add: Box<[(HeaderName, Template)]>,
    pub uses_request_id: bool,
}

impl HeaderOps {
    pub fn compile(field: &str, h: &HeaderRewrite) -> Result<Option<HeaderOps>, CompileError> {
        if h.is_empty() {
            return Ok(None);
        }
        let name = |n: &str| {
            HeaderName::from_bytes(n.as_bytes())
                .map_err(|_| CompileError::new(field, format!("{n:?} is not a header name")))
        };
        let remove = h.remove.iter().map(|n| name(n)).collect::<Result<Vec<_>, _>>()?;
        let templates = |m: &std::collections::BTreeMap<String, String>| {
            m.iter().map(|(n, v)| Ok((name(n)?, Template::parse(v)))).collect::<Result<Vec<_>, CompileError>>()
        };
        let (set, add) = (templates(&h.set)?, templates(&h.add)?);
        let uses_request_id = set.iter().chain(&add).any(|(_, t)| t.uses_request_id());
        Ok(Some(HeaderOps { remove: remove.into(), set: set.into(), add: add.into(), uses_request_id }))
    }

    pub fn apply(&self, headers: &mut http::HeaderMap, values: &Values<'_>) {
        for n in self.remove.iter() {
            headers.remove(n);
        }
        for (n, t) in self.set.iter() {
            match t.render(values) {
                Some(v) => _ = headers.insert(n.clone(), v),
                None => _ = headers.remove(n),
            }
        }
        for (n, t) in self.add.iter() {
            if let Some(v) = t.render(values) {
                headers.append(n.clone(), v);
            }
        }
    }
}

/// How the path sent upstream is made from the one routed on.
#[derive(Debug, Clone)]
pub enum PathRewrite {
    /// `from`: the route's matched prefix.
    Prefix {
        from: String,
        to: String,
    },
    Regex {
        pattern: Regex,
        substitution: String,
    },
}

impl PathRewrite {
    /// The new path; `None` when the prefix does not match (the path stays). The caller checks
    /// that a regex's result is still a path.
    pub fn apply(&self, path: &str) -> Option<String> {
        let out = match self {
            PathRewrite::Prefix { from, to } => format!("{to}{}", path.strip_prefix(from.as_str())?),
            PathRewrite::Regex { pattern, substitution } => {
                pattern.replace_all(path, substitution.as_str()).into_owned()
            }
        };
        Some(out)
    }
}

#[derive(Debug, Clone)]
pub struct RouteRewrite {
    pub path: Option<PathRewrite>,
    pub host: Option<HeaderValue>,
}

impl RouteRewrite {
    pub fn compile(field: &str, r: &Rewrite, matched_prefix: Option<&str>) -> Result<RouteRewrite, CompileError> {
        let path = match (&r.prefix, &r.regex, matched_prefix) {
            (Some(to), _, Some(from)) => Some(PathRewrite::Prefix { from: from.to_string(), to: to.clone() }),
            (Some(_), _, None) => {
                return Err(CompileError::new(format!("{field}.prefix"), "needs a route matching on a path prefix"))
            }
            (None, Some(x), _) => {
                let pattern = super::matcher::compile_regex(&format!("{field}.regex.pattern"), &x.pattern)?;
                Some(PathRewrite::Regex { pattern, substitution: x.substitution.clone() })
            }
            (None, None, _) => None,
        };
        let host = match &r.host {
            Some(h) => Some(
                HeaderValue::from_str(h)
                    .map_err(|_| CompileError::new(format!("{field}.host"), format!("{h:?} is not a host")))?,
            ),
            None => None,
        };
        Ok(RouteRewrite { path, host })
    }
}

/// Everything a route changes, boxed apart so that a route without any costs one pointer check.
#[derive(Debug, Clone, Default)]
pub struct Transforms {
    pub request_headers: Option<HeaderOps>,
    pub response_headers: Option<HeaderOps>,
    pub rewrite: Option<RouteRewrite>,
    pub redirect: Option<RouteRedirect>,
}

impl Transforms {
    /// `None` when the route changes nothing.
    pub fn compile(field: &str, r: &sluice_shared::model::Route) -> Result<Option<Box<Transforms>>, CompileError> {
        let prefix = r.matcher.path.as_ref().and_then(|p| p.prefix.as_deref());
        let headers = |what: &str, h: &Option<Box<HeaderRewrite>>| match h {
            Some(h) => HeaderOps::compile(&format!("{field}.{what}"), h),
            None => Ok(None),
        };
        let t = Transforms {
            request_headers: headers("request_headers", &r.request_headers)?,
            response_headers: headers("response_headers", &r.response_headers)?,
            rewrite: match &r.rewrite {
                Some(w) => Some(RouteRewrite::compile(&format!("{field}.rewrite"), w, prefix)?),
                None => None,
            },
            redirect: r
                .redirect
                .as_ref()
                .map(|spec| RouteRedirect { spec: (**spec).clone(), matched_prefix: prefix.map(str::to_string) }),
        };
        let none =
            t.request_headers.is_none() && t.response_headers.is_none() && t.rewrite.is_none() && t.redirect.is_none();
        Ok((!none).then(|| Box::new(t)))
    }
}

/// A route's redirect, with the matched prefix a `prefix` replacement needs.
#[derive(Debug, Clone)]
pub struct RouteRedirect {
    pub spec: Redirect,
    pub matched_prefix: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(t: &str) -> String {
        let values = Values { client_ip: "10.0.0.7", request_id: Some("abc"), route: "api" };
        Template::parse(t).render(&values).unwrap().to_str().unwrap().to_string()
    }

    #[test]
    fn templates_fill_in_the_variables() {
        assert!(matches!(Template::parse("plain"), Template::Literal(_)));
        assert!(matches!(Template::parse("100%%"), Template::Literal(v) if v == "100%"));
        assert_eq!(render("%CLIENT_IP%"), "10.0.0.7");
        assert_eq!(render("ip=%CLIENT_IP%; id=%REQUEST_ID%; r=%ROUTE% 5%%"), "ip=10.0.0.7; id=abc; r=api 5%");
        assert!(Template::parse("%REQUEST_ID%").uses_request_id());
        assert!(!Template::parse("%ROUTE%").uses_request_id());
    }

    #[test]
    fn paths_are_rewritten_by_prefix_or_regex() {
        let prefix = PathRewrite::Prefix { from: "/api/".into(), to: "/v2/".into() };
        assert_eq!(prefix.apply("/api/users").as_deref(), Some("/v2/users"));
        assert_eq!(prefix.apply("/other"), None);
        let to_root = PathRewrite::Prefix { from: "/api".into(), to: "/".into() };
        assert_eq!(to_root.apply("/api/users").as_deref(), Some("//users"));
        let re = PathRewrite::Regex { pattern: Regex::new("^/u/([0-9]+)$").unwrap(), substitution: "/users/$1".into() };
        assert_eq!(re.apply("/u/42").as_deref(), Some("/users/42"));
        assert_eq!(re.apply("/x").as_deref(), Some("/x"));
    }

    #[test]
    fn header_ops_remove_then_set_then_add() {
        let spec: HeaderRewrite = serde_json::from_str(
            r#"{"remove":["x-drop"],"set":{"x-who":"%CLIENT_IP%","x-one":"a"},"add":{"x-one":"b"}}"#,
        )
        .unwrap();
        let ops = HeaderOps::compile("request_headers", &spec).unwrap().unwrap();
        let mut h = http::HeaderMap::new();
        h.insert("x-drop", HeaderValue::from_static("1"));
        h.insert("x-one", HeaderValue::from_static("old"));
        h.insert("x-who", HeaderValue::from_static("spoofed"));
        ops.apply(&mut h, &Values { client_ip: "10.0.0.7", request_id: None, route: "r" });
        assert!(!h.contains_key("x-drop"));
        assert_eq!(h["x-who"], "10.0.0.7");
        let one: Vec<_> = h.get_all("x-one").iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(one, ["a", "b"]);
        assert!(HeaderOps::compile("f", &HeaderRewrite::default()).unwrap().is_none());
    }
}
