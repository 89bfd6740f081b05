//! What the proxy does to request and response headers: hop-by-hop headers out (RFC 9110
//! §7.6.1), forwarding headers in, the request target in origin-form.

use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::Uri;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Headers that belong to one hop and are never forwarded (RFC 9110 §7.6.1).
/// Names, not strings: removing by `&str` parses the name again on every request.
/// `connection` comes first: `strip_hop_by_hop` looks it up by that position.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];

/// The request target as sent to an endpoint: origin-form (`/path?query`). An origin-form target
/// (the usual case) is passed on as it is; an absolute-form one loses its scheme and authority.
pub fn origin_form(uri: Uri) -> Uri {
    if uri.scheme().is_none() && uri.authority().is_none() && uri.path_and_query().is_some() {
        return uri;
    }
    let path = uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
    Uri::from(path)
}

/// Headers [`prepare_headers`] may add: x-forwarded-for, -proto, -host, x-request-id.
pub const ADDED_HEADERS: usize = 4;

/// Hop-by-hop headers out, forwarding headers in.
pub fn prepare_headers(
    headers: &mut HeaderMap,
    authority: Option<&Authority>,
    peer_ip: &HeaderValue,
    scheme: &'static str,
) {
    strip_hop_by_hop(headers);
    // The request parser leaves room for these; any other map grows once, not once per insert.
    headers.reserve(ADDED_HEADERS);

    // One lookup per name: the entry both reads the prior values and replaces them.
    match headers.entry(&X_FORWARDED_FOR) {
        Entry::Vacant(e) => {
            e.insert(peer_ip.clone());
        }
        Entry::Occupied(mut e) => {
            let mut v = String::new();
            for p in e.iter().filter_map(|v| v.to_str().ok()) {
                v.push_str(p);
                v.push_str(", ");
            }
            v.push_str(peer_ip.to_str().unwrap_or_default());
            match HeaderValue::try_from(v) {
                Ok(v) => {
                    e.insert(v);
                }
                Err(_) => {
                    e.remove();
                }
            }
        }
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(scheme));
    let host = match authority {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => headers.get(header::HOST).cloned(),
    };
    if let Some(host) = host {
        if authority.is_some() {
            // The backend sees the host the client asked for, not the endpoint's address.
            headers.insert(header::HOST, host.clone());
        }
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
    if let Entry::Vacant(e) = headers.entry(&X_REQUEST_ID) {
        // `Uuid::new_v4` asks the OS for randomness (a syscall per request); the thread-local
        // generator gives the same v4 ids from user space.
        let id = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        if let Ok(v) = HeaderValue::from_str(id.hyphenated().encode_lower(&mut buf)) {
            e.insert(v);
        }
    }
}

/// [`HOP_BY_HOP`] as strings, for comparing raw names: `HeaderName::as_str` on a standard name
/// is a match over every standard header, per call.
const HOP_BY_HOP_NAMES: [&str; 9] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

/// Whether a raw header name is one of the fixed hop-by-hop headers (not those a `Connection`
/// header names), for a parser that leaves them out of the map in the first place.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    HOP_BY_HOP_NAMES.iter().any(|h| h.len() == name.len() && h.as_bytes().eq_ignore_ascii_case(name))
}

pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names finds which hop-by-hop headers are there (usually none on requests,
    // `connection` alone on responses): a removal per absent name would hash it for nothing
    // (callgrind: ~2,300 instructions per response before this).
    let mut present = [false; HOP_BY_HOP.len()];
    let mut any = false;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present[i] = true;
            any = true;
        }
    }
    if !any {
        return;
    }
    // Headers named by `Connection` are hop-by-hop too (but never the ones routing relies on).
    // `keep-alive`, `close` and the other standard tokens need no parsing: they are in the list
    // or name no header.
    if present[0] {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case("close") && !t.eq_ignore_ascii_case("keep-alive"))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .filter(|n| n != header::HOST && n != header::CONTENT_LENGTH)
            .collect();
        for n in named {
            headers.remove(n);
        }
    }
    for (h, here) in HOP_BY_HOP.iter().zip(present) {
        if here {
            headers.remove(h);
        }
    }
}

/// The announced body size (the head guard already refused conflicting or malformed ones).
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret, host"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(header::HOST, HeaderValue::from_static("a"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, vec!["host", "x-keep"]);

        // Nothing hop-by-hop: untouched; `keep-alive` and `close` tokens name nothing to parse.
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        h.insert(header::CONNECTION, HeaderValue::from_static("close, Keep-Alive"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::UPGRADE, HeaderValue::from_static("x"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-a"]);
    }

    #[test]
    fn forwarding_headers_are_appended_or_replaced() {
        let peer = HeaderValue::from_static("127.0.0.1");
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("shop.test"));
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"));
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.2, 10.0.0.3"));
        h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("req-1"));
        prepare_headers(&mut h, None, &peer, "http");
        let all = |n: &HeaderName| h.get_all(n).iter().map(|v| v.to_str().unwrap()).collect::<Vec<_>>();
        assert_eq!(all(&X_FORWARDED_FOR), ["10.0.0.1, 10.0.0.2, 10.0.0.3, 127.0.0.1"]);
        assert_eq!(all(&X_FORWARDED_PROTO), ["http"], "a client cannot claim https");
        assert_eq!(all(&X_FORWARDED_HOST), ["shop.test"]);
        assert_eq!(all(&X_REQUEST_ID), ["req-1"], "kept");

        let mut h = HeaderMap::new();
        let authority: Authority = "abs.test:8080".parse().unwrap();
        prepare_headers(&mut h, Some(&authority), &peer, "https");
        assert_eq!(h[&X_FORWARDED_FOR], "127.0.0.1");
        assert_eq!(h[header::HOST], "abs.test:8080");
        assert_eq!(h[&X_FORWARDED_HOST], "abs.test:8080");
        assert_eq!(h[&X_REQUEST_ID].len(), 36, "generated");
    }

    #[test]
    fn fixed_hop_by_hop_names_in_any_case() {
        for n in ["connection", "Keep-Alive", "TRANSFER-ENCODING", "proxy-connection", "te", "upgrade"] {
            assert!(is_hop_by_hop(n.as_bytes()), "{n}");
        }
        for n in ["content-length", "x-connection", "t", "set-cookie", "host"] {
            assert!(!is_hop_by_hop(n.as_bytes()), "{n}");
        }
    }

    #[test]
    fn origin_form_keeps_path_and_query() {
        let u = origin_form("/a/b?x=1".parse().unwrap());
        assert_eq!(u.to_string(), "/a/b?x=1");
        let u = origin_form("http://example.com:8080/a/b?x=1".parse().unwrap());
        assert_eq!(u.to_string(), "/a/b?x=1");
        assert_eq!(origin_form("http://example.com".parse().unwrap()).to_string(), "/");
    }

    #[test]
    fn the_name_lists_agree() {
        let names: Vec<&str> = HOP_BY_HOP.iter().map(HeaderName::as_str).collect();
        assert_eq!(names, HOP_BY_HOP_NAMES);
    }
}
