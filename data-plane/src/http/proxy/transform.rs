//! A route's rewrites applied to one request: the path and Host the endpoint gets and the request
//! headers (in `prepare`, after the hop-by-hop headers are gone and before the forwarding lines),
//! the response headers (on every answer of the route), and the redirect it may answer with.

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Response, StatusCode, Uri};

use crate::http::body::ProxyBody;
use crate::table::{RouteRedirect, Transforms, Values};

/// Rewrites the request for the endpoint; `Err(())` when a regex rewrite made something that is
/// not a path (the route's config is at fault: 500).
pub fn request(parts: &mut Parts, t: &Transforms, values: &Values<'_>) -> Result<(), ()> {
    if let Some(rw) = &t.rewrite {
        if let Some(path) = rw.path.as_ref().and_then(|p| p.apply(parts.uri.path())) {
            parts.uri = with_path(&parts.uri, &path).ok_or(())?;
        }
        if let Some(host) = &rw.host {
            parts.headers.insert(header::HOST, host.clone());
        }
    }
    if let Some(ops) = &t.request_headers {
        ops.apply(&mut parts.headers, values);
    }
    Ok(())
}

/// The route's response header operations, on any answer.
pub fn response(resp: &mut Response<ProxyBody>, t: &Transforms, values: &Values<'_>) {
    if let Some(ops) = &t.response_headers {
        // An HTTP/1.1 endpoint's headers join the map first, so that remove and set reach them.
        let mut headers = std::mem::take(resp.headers_mut());
        resp.body_mut().passed_into(&mut headers);
        ops.apply(&mut headers, values);
        *resp.headers_mut() = headers;
    }
}

/// `uri` (origin-form) with its path replaced and its query kept; `None` unless `path` is one.
fn with_path(uri: &Uri, path: &str) -> Option<Uri> {
    if !path.starts_with('/') {
        return None;
    }
    let target = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let pq = http::uri::PathAndQuery::try_from(target).ok()?;
    // A path with a `?` of its own would move the query: not a path.
    (pq.path() == path).then(|| Uri::from(pq))
}

/// The redirect for a request with `scheme`, `host` (normalized: no port), `port` (as the client
/// named it) and `uri`. `None` when the Location would need a host and the request has none.
pub fn redirect(
    r: &RouteRedirect,
    scheme: &str,
    host: Option<&str>,
    port: Option<u16>,
    uri: &Uri,
) -> Option<Response<ProxyBody>> {
    let spec = &r.spec;
    let to_scheme = spec.scheme.as_deref().unwrap_or(scheme);
    let to_host = spec.host.as_deref().or(host)?;
    // A scheme change drops the client's port (it belonged to the old scheme) unless one is given.
    let to_port = match spec.port {
        Some(p) => Some(p),
        None if to_scheme != scheme || spec.host.is_some() => None,
        None => port,
    };
    let default_port = if to_scheme == "https" { 443 } else { 80 };
    let path = match (&spec.path, &spec.prefix, &r.matched_prefix) {
        (Some(p), _, _) => p.clone(),
        (None, Some(to), Some(from)) => match uri.path().strip_prefix(from.as_str()) {
            Some(rest) => format!("{to}{rest}"),
            None => uri.path().to_string(),
        },
        _ => uri.path().to_string(),
    };
    let mut location = format!("{to_scheme}://{to_host}");
    if let Some(p) = to_port.filter(|p| *p != default_port) {
        location.push_str(&format!(":{p}"));
    }
    location.push_str(&path);
    if let Some(q) = uri.query().filter(|_| !spec.strip_query) {
        location.push('?');
        location.push_str(q);
    }
    let location = HeaderValue::try_from(location).ok()?;
    let mut resp = Response::new(ProxyBody::Empty);
    *resp.status_mut() = StatusCode::from_u16(spec.status).unwrap_or(StatusCode::MOVED_PERMANENTLY);
    let h = resp.headers_mut();
    h.insert(header::LOCATION, location);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    Some(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_shared::transforms::Redirect;

    fn location(spec: &str, prefix: Option<&str>, scheme: &str, host: &str, port: Option<u16>, uri: &str) -> String {
        let spec: Redirect = serde_json::from_str(spec).unwrap();
        let r = RouteRedirect { spec, matched_prefix: prefix.map(String::from) };
        let resp = redirect(&r, scheme, Some(host), port, &uri.parse().unwrap()).unwrap();
        format!("{} {}", resp.status().as_u16(), resp.headers()[header::LOCATION].to_str().unwrap())
    }

    #[test]
    fn redirects_replace_what_they_name() {
        assert_eq!(location(r#"{}"#, None, "http", "a.com", Some(8080), "/x?q=1"), "301 http://a.com:8080/x?q=1");
        assert_eq!(location(r#"{"scheme":"https"}"#, None, "http", "a.com", Some(8080), "/x"), "301 https://a.com/x");
        assert_eq!(
            location(
                r#"{"host":"b.com","port":8443,"scheme":"https","status":308}"#,
                None,
                "http",
                "a.com",
                None,
                "/x"
            ),
            "308 https://b.com:8443/x"
        );
        assert_eq!(
            location(
                r#"{"prefix":"/new/","strip_query":true,"status":302}"#,
                Some("/old/"),
                "https",
                "a.com",
                None,
                "/old/p?q"
            ),
            "302 https://a.com/new/p"
        );
        assert_eq!(
            location(r#"{"path":"/maintenance"}"#, None, "http", "a.com", None, "/any?q"),
            "301 http://a.com/maintenance?q"
        );
        assert_eq!(location(r#"{"port":80}"#, None, "http", "a.com", Some(8080), "/"), "301 http://a.com/");
        let spec: Redirect = serde_json::from_str("{}").unwrap();
        let r = RouteRedirect { spec, matched_prefix: None };
        assert!(redirect(&r, "http", None, None, &"/".parse().unwrap()).is_none(), "no host to redirect to");
    }

    #[test]
    fn a_rewritten_path_keeps_the_query_and_must_be_a_path() {
        let uri: Uri = "/a/b?x=1".parse().unwrap();
        assert_eq!(with_path(&uri, "/c").unwrap().to_string(), "/c?x=1");
        assert!(with_path(&uri, "c").is_none());
        assert!(with_path(&uri, "/c?y").is_none());
        assert!(with_path(&uri, "/c d").is_none());
    }
}
