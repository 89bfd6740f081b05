//! What the proxy does to request and response headers: hop-by-hop headers out (RFC 9110
//! §7.6.1), forwarding headers in, the request target in origin-form.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
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

/// The forwarding headers of one request, encoded once as header lines; every try writes them
/// after the request's own headers (`upstream::h1::encode_head`). Kept out of the map: inserting
/// four headers into it cost about 1,200 instructions a request (callgrind), writing them costs a
/// copy.
#[derive(Debug, Default)]
pub struct Forwarding {
    lines: Vec<u8>,
    /// The request id when it was generated here (a client's stays in the map).
    generated_id: Option<[u8; uuid::fmt::Hyphenated::LENGTH]>,
}

impl Forwarding {
    /// The header lines, each ending in CRLF.
    pub fn lines(&self) -> &[u8] {
        &self.lines
    }

    /// The request id the endpoint gets: the client's, or the one generated.
    pub fn request_id(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        match &self.generated_id {
            Some(id) => HeaderValue::from_bytes(id).ok(),
            None => headers.get(&X_REQUEST_ID).cloned(),
        }
    }
}

/// Hop-by-hop headers out of `headers`; the forwarding headers (x-forwarded-for, -proto, -host,
/// x-request-id) as lines to send after them. A client's x-forwarded-for is merged into ours, its
/// x-forwarded-proto and -host are replaced, its x-request-id is kept. An absolute-form target's
/// authority becomes the Host.
pub fn prepare_headers(
    headers: &mut HeaderMap,
    authority: Option<&Authority>,
    peer_ip: &HeaderValue,
    scheme: &'static str,
) -> Forwarding {
    // One pass over the names finds what needs the map touched (usually nothing): a lookup or
    // removal per absent name would hash it for nothing.
    let (mut hop, mut xff, mut xfp, mut xfh, mut id) = (false, false, false, false, false);
    for name in headers.keys() {
        hop |= HOP_BY_HOP.contains(name);
        xff |= name == X_FORWARDED_FOR;
        xfp |= name == X_FORWARDED_PROTO;
        xfh |= name == X_FORWARDED_HOST;
        id |= name == X_REQUEST_ID;
    }
    if hop {
        strip_hop_by_hop(headers);
    }
    let mut out = Forwarding { lines: Vec::with_capacity(160), generated_id: None };
    let lines = &mut out.lines;
    lines.extend_from_slice(b"x-forwarded-for: ");
    if xff {
        for v in headers.get_all(&X_FORWARDED_FOR) {
            lines.extend_from_slice(v.as_bytes());
            lines.extend_from_slice(b", ");
        }
        headers.remove(&X_FORWARDED_FOR);
    }
    lines.extend_from_slice(peer_ip.as_bytes());
    lines.extend_from_slice(b"\r\n");
    push_header(lines, X_FORWARDED_PROTO.as_str().as_bytes(), scheme.as_bytes());
    if xfp {
        headers.remove(&X_FORWARDED_PROTO);
    }
    if xfh {
        headers.remove(&X_FORWARDED_HOST);
    }
    let host = match authority.and_then(|a| HeaderValue::from_str(a.as_str()).ok()) {
        Some(a) => {
            // The backend sees the host the client asked for, not the endpoint's address.
            headers.insert(header::HOST, a.clone());
            Some(a)
        }
        None => headers.get(header::HOST).cloned(),
    };
    if let Some(host) = host {
        push_header(lines, X_FORWARDED_HOST.as_str().as_bytes(), host.as_bytes());
    }
    if !id {
        let buf = new_request_id();
        push_header(lines, X_REQUEST_ID.as_str().as_bytes(), &buf);
        out.generated_id = Some(buf);
    }
    out
}

/// A v4 UUID, hyphenated. `Uuid::new_v4` asks the OS for randomness (a syscall per request); the
/// thread-local generator gives the same ids from user space.
pub fn new_request_id() -> [u8; uuid::fmt::Hyphenated::LENGTH] {
    let uuid = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid.hyphenated().encode_lower(&mut buf);
    buf
}

/// Header lines (`name: value` and CRLF each, as [`push_header`] writes them) into a map, for an
/// HTTP/2 head; a line that is no valid field is left out.
pub fn append_lines(headers: &mut HeaderMap, lines: &[u8]) {
    headers.reserve(lines.len() / 24);
    for line in lines.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            headers.append(name, value);
        }
    }
}

/// Appends one header line, `name: value` and CRLF, to a head being written.
pub fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
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

/// Whether a request is a gRPC call (gRPC-Web included: it reads the status the same way).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// An endpoint's response headers as they go to the client: its header lines, hop-by-hop ones
/// left out (empty when they went into the response's map instead).
#[derive(Debug, Default)]
pub struct PassedHead {
    pub(in crate::http) lines: Vec<u8>,
    pub(in crate::http) has_length: bool,
    pub(in crate::http) has_date: bool,
}

impl PassedHead {
    /// Header lines, each ending in CRLF.
    pub fn lines(&self) -> &[u8] {
        &self.lines
    }

    /// The lines carry a `Content-Length`.
    pub fn has_length(&self) -> bool {
        self.has_length
    }

    /// The lines carry a `Date`.
    pub fn has_date(&self) -> bool {
        self.has_date
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Any bytes as header lines: no panic, and what goes into the map is valid as sent.
        #[test]
        fn any_header_lines_are_read_safely(v in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let mut map = HeaderMap::new();
            append_lines(&mut map, &v);
            for (name, value) in &map {
                proptest::prop_assert!(!name.as_str().is_empty());
                proptest::prop_assert!(!value.as_bytes().contains(&b'\n'));
            }
        }
    }

    #[test]
    fn header_lines_go_into_a_map_and_bad_ones_are_left_out() {
        let mut lines = Vec::new();
        push_header(&mut lines, b"Content-Type", b"text/plain");
        push_header(&mut lines, b"x-a", b" 1 ");
        push_header(&mut lines, b"x-a", b"2");
        lines.extend_from_slice(b"no colon here\r\nbad name: v\r\nx-b: \x01\r\n");
        let mut map = HeaderMap::new();
        append_lines(&mut map, &lines);
        assert_eq!(map.len(), 3);
        assert_eq!(map["content-type"], "text/plain");
        assert_eq!(map.get_all("x-a").iter().collect::<Vec<_>>(), ["1", "2"]);
    }

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
        h.insert(&X_FORWARDED_HOST, HeaderValue::from_static("evil.test"));
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("req-1"));
        h.insert(header::CONNECTION, HeaderValue::from_static("x-drop"));
        h.insert("x-drop", HeaderValue::from_static("1"));
        let f = prepare_headers(&mut h, None, &peer, "http");
        assert_eq!(
            std::str::from_utf8(f.lines()).unwrap(),
            "x-forwarded-for: 10.0.0.1, 10.0.0.2, 10.0.0.3, 127.0.0.1\r\nx-forwarded-proto: http\r\n\
             x-forwarded-host: shop.test\r\n",
            "a client cannot claim https nor another host; its request id is kept"
        );
        let mut left: Vec<_> = h.keys().map(HeaderName::as_str).collect();
        left.sort();
        assert_eq!(left, ["host", "x-request-id"], "the client's forwarding and hop-by-hop headers are gone");
        assert_eq!(f.request_id(&h).unwrap(), "req-1");

        let mut h = HeaderMap::new();
        let authority: Authority = "abs.test:8080".parse().unwrap();
        let f = prepare_headers(&mut h, Some(&authority), &peer, "https");
        let lines = std::str::from_utf8(f.lines()).unwrap();
        assert!(lines.starts_with(
            "x-forwarded-for: 127.0.0.1\r\nx-forwarded-proto: https\r\nx-forwarded-host: abs.test:8080\r\n\
             x-request-id: "
        ));
        assert_eq!(h[header::HOST], "abs.test:8080");
        let id = f.request_id(&h).unwrap();
        assert_eq!(id.len(), 36, "generated");
        assert!(lines.ends_with(&format!("{}\r\n", id.to_str().unwrap())));
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
