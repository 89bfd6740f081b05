//! A route's `https_redirect`: plain HTTP answered with a redirect to the same URL over https.

use http::header::{self, HeaderValue};
use http::{Response, StatusCode, Uri};
use sluice_shared::model::HttpsRedirect;

use super::body::ProxyBody;

/// The redirect for a request to `host` (as normalized for routing: no port) and `uri`. `None`
/// when the request names no host: there is nothing to redirect to (the caller answers 400).
pub fn to_https(redirect: &HttpsRedirect, host: Option<&str>, uri: &Uri) -> Option<Response<ProxyBody>> {
    // Only a plain host name or IP literal goes into the Location (no `@`, `/` or the like).
    let host = host.filter(|h| is_host(h))?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let location = match redirect.port {
        443 => format!("https://{host}{path}"),
        port => format!("https://{host}:{port}{path}"),
    };
    let location = HeaderValue::try_from(location).ok()?;
    let status = StatusCode::from_u16(redirect.status).unwrap_or(StatusCode::MOVED_PERMANENTLY);
    let mut resp = Response::new(ProxyBody::Empty);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::LOCATION, location);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    Some(resp)
}

/// 307 to `path` (a normalized path, so a valid Location) with the request's `query`.
pub fn to_path(path: &str, query: Option<&str>) -> Response<ProxyBody> {
    let location = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let mut resp = Response::new(ProxyBody::Empty);
    *resp.status_mut() = StatusCode::TEMPORARY_REDIRECT;
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::try_from(location) {
        h.insert(header::LOCATION, v);
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    resp
}

fn is_host(h: &str) -> bool {
    let literal = h.strip_prefix('[').and_then(|r| r.strip_suffix(']'));
    match literal {
        Some(v6) => !v6.is_empty() && v6.bytes().all(|c| c.is_ascii_hexdigit() || c == b':' || c == b'.'),
        None => !h.is_empty() && h.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.'),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(r: HttpsRedirect, host: &str, uri: &str) -> (u16, String) {
        let resp = to_https(&r, Some(host), &uri.parse().unwrap()).unwrap();
        (resp.status().as_u16(), resp.headers()[header::LOCATION].to_str().unwrap().to_string())
    }

    #[test]
    fn keeps_host_path_and_query_and_names_non_default_ports() {
        let r = HttpsRedirect { port: 443, status: 301 };
        assert_eq!(location(r, "myshop.com", "/a/b?x=1"), (301, "https://myshop.com/a/b?x=1".into()));
        let r = HttpsRedirect { port: 8443, status: 308 };
        assert_eq!(location(r, "myshop.com", "http://myshop.com:8080/"), (308, "https://myshop.com:8443/".into()));
        assert!(to_https(&r, None, &"/".parse().unwrap()).is_none());
        for odd in ["", "a.com@evil.com", "a.com/x", "a b", "[zz]"] {
            assert!(to_https(&r, Some(odd), &"/".parse().unwrap()).is_none(), "{odd}");
        }
        assert_eq!(location(r, "[::1]", "/"), (308, "https://[::1]:8443/".into()));
    }
}
