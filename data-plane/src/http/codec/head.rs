//! Parsing a raw HTTP/1.1 request head, once, with strict checks (see `downstream/h1.rs`).
//!
//! Lenient parsers let some ambiguous requests through: with both `Content-Length` and
//! `Transfer-Encoding` they silently prefer chunked, they allow request lines up to 64 KiB, and
//! they accept a request without `Host` or with several. Request smuggling lives in exactly those
//! gaps, so every head is checked here, on the bytes, and refused heads never reach a backend.

use bytes::BytesMut;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Uri, Version};

/// Longest accepted request line (method, target and version), without the line ending.
pub const MAX_REQUEST_LINE: usize = 8 * 1024;
/// Largest accepted request head: request line, headers and the blank line.
pub const MAX_HEAD: usize = 64 * 1024;
/// Most header fields accepted in one request head.
pub const MAX_HEADERS: usize = 100;

/// Why a request head was refused; answered with a short plain-text body and the connection closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// 400: malformed or ambiguous.
    BadRequest(&'static str),
    /// 414: request line over [`MAX_REQUEST_LINE`].
    UriTooLong,
    /// 431: head over [`MAX_HEAD`] or over [`MAX_HEADERS`] fields.
    HeadTooLarge(&'static str),
    /// 408: a head begun but not finished within the listener's header timeout.
    HeadTimeout,
    /// 501: a transfer coding other than chunked (RFC 9112 §6.1).
    NotImplemented(&'static str),
}

impl Reject {
    pub fn status(self) -> u16 {
        match self {
            Reject::BadRequest(_) => 400,
            Reject::UriTooLong => 414,
            Reject::HeadTooLarge(_) => 431,
            Reject::HeadTimeout => 408,
            Reject::NotImplemented(_) => 501,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Reject::BadRequest(why) => why,
            Reject::UriTooLong => "request line too long",
            Reject::HeadTooLarge(why) => why,
            Reject::HeadTimeout => "request head timeout",
            Reject::NotImplemented(why) => why,
        }
    }

    /// The complete response, which closes the connection.
    pub fn response(self) -> Vec<u8> {
        let (status, phrase) = match self {
            Reject::BadRequest(_) => (400, "Bad Request"),
            Reject::UriTooLong => (414, "URI Too Long"),
            Reject::HeadTooLarge(_) => (431, "Request Header Fields Too Large"),
            Reject::HeadTimeout => (408, "Request Timeout"),
            Reject::NotImplemented(_) => (501, "Not Implemented"),
        };
        let body = format!("{}\n", self.reason());
        format!(
            "HTTP/1.1 {status} {phrase}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }
}

/// How the body after a head is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// An HTTP/1.1 request without a body asking to switch protocols (`Upgrade`): what follows
    /// may be another protocol's bytes (a WebSocket), which are not HTTP heads to check. The proxy
    /// closes the connection after the response unless the endpoint switched (101).
    Upgrade,
}

/// A checked request head, parsed into what the proxy works with.
#[derive(Debug)]
pub struct RequestHead {
    /// Method, target, version and headers (values share the head's bytes).
    pub parts: http::request::Parts,
    pub framing: Framing,
    /// The client allows another request on the connection: HTTP/1.1 without `Connection:
    /// close`, or HTTP/1.0 with `keep-alive`.
    pub keep_alive: bool,
    /// `Expect: 100-continue` on an HTTP/1.1 request with a body: the client may wait for an
    /// interim `100 Continue` before it sends the body.
    pub expect_continue: bool,
}

/// Checks and parses the head at the start of `buf` (which may hold more than the head). On
/// success the head's bytes are split off `buf`; `Ok(None)`: more bytes are needed.
pub fn parse(buf: &mut BytesMut) -> Result<Option<RequestHead>, Reject> {
    check_request_line(buf)?;
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err(Reject::HeadTooLarge("request head too large"))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Ok(httparse::Status::Complete(len)) if len > MAX_HEAD => {
            return Err(Reject::HeadTooLarge("request head too large"))
        }
        Ok(httparse::Status::Complete(len)) => len,
        Err(httparse::Error::TooManyHeaders) => return Err(Reject::HeadTooLarge("too many header fields")),
        Err(e) => {
            return Err(Reject::BadRequest(match e {
                httparse::Error::HeaderName => "invalid header name",
                httparse::Error::HeaderValue => "invalid byte in header value",
                httparse::Error::NewLine => "invalid line ending",
                httparse::Error::Version => "invalid HTTP version",
                httparse::Error::Token => "invalid method or request target",
                _ => "malformed request head",
            }))
        }
    };
    let version = req.version.unwrap_or(1);
    let meta = meta(version, req.headers)?;
    let method = Method::from_bytes(req.method.unwrap_or_default().as_bytes())
        .map_err(|_| Reject::BadRequest("invalid method"))?;
    // Offsets into the head (at most MAX_HEAD long), to slice it once it is split off `buf`.
    let base = buf.as_ptr() as usize;
    let offset = |s: &str| s.as_ptr() as usize - base;
    let path = req.path.unwrap_or_default();
    let target = (offset(path), path.len());
    let count = req.headers.len();
    let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
    for (h, span) in req.headers.iter().zip(spans.iter_mut()) {
        *span = (
            offset(h.name) as u32,
            h.name.len() as u32,
            (h.value.as_ptr() as usize - base) as u32,
            h.value.len() as u32,
        );
    }
    // Every line ends in CRLF: httparse also takes a bare LF, which a server behind us might read
    // differently (RFC 9112 §2.2 lets a recipient refuse it).
    let crlf = |mut at: usize| {
        while at < len && (buf[at] == b' ' || buf[at] == b'\t') {
            at += 1;
        }
        at + 1 < len && buf[at] == b'\r' && buf[at + 1] == b'\n'
    };
    // Byte compares, not slice equality: that would be a `bcmp` call per line.
    let blank_line_crlf = len >= 4 && buf[len - 4] == b'\r' && buf[len - 3] == b'\n' && buf[len - 2] == b'\r';
    if !blank_line_crlf
        || !crlf(target.0 + target.1 + b" HTTP/1.1".len())
        || !spans[..count].iter().all(|&(_, _, v, vl)| crlf((v + vl) as usize))
    {
        return Err(Reject::BadRequest("line ending without CR"));
    }
    let head = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(target.0..target.0 + target.1))
        .map_err(|_| Reject::BadRequest("invalid request target"))?;
    let mut map = HeaderMap::with_capacity(count);
    for &(n, nl, v, vl) in &spans[..count] {
        let (n, nl, v, vl) = (n as usize, nl as usize, v as usize, vl as usize);
        let name = HeaderName::from_bytes(&head[n..n + nl]).map_err(|_| Reject::BadRequest("invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(v..v + vl))
            .map_err(|_| Reject::BadRequest("invalid byte in header value"))?;
        map.append(name, value);
    }
    let mut parts = http::Request::new(()).into_parts().0;
    parts.method = method;
    parts.uri = uri;
    parts.version = if version == 0 { Version::HTTP_10 } else { Version::HTTP_11 };
    parts.headers = map;
    let keep_alive = if version == 0 { meta.keep_alive && !meta.close } else { !meta.close };
    let has_body = matches!(meta.framing, Framing::Length(_) | Framing::Chunked);
    Ok(Some(RequestHead {
        parts,
        framing: meta.framing,
        keep_alive,
        expect_continue: meta.expect_continue && version >= 1 && has_body,
    }))
}

/// Whether [`parse`] can tell more now than when `buf` held its first `seen` bytes and more were
/// needed: only a line end among the new bytes, or a limit crossed, can change its answer.
/// A client sending its head a byte at a time then costs a parse per line (at most
/// [`MAX_HEADERS`] of them), not one per byte, whose total grows with the square of the head's
/// length (about 2·10⁹ bytes scanned for a 64 KiB head).
pub fn worth_parsing(buf: &[u8], seen: usize) -> bool {
    let line_limit = MAX_REQUEST_LINE + 1;
    seen == 0
        || seen > buf.len()
        || buf.len() > MAX_HEAD
        || (seen <= line_limit && buf.len() > line_limit)
        || buf[seen..].contains(&b'\n')
}

fn check_request_line(buf: &[u8]) -> Result<(), Reject> {
    let window = &buf[..buf.len().min(MAX_REQUEST_LINE + 2)];
    match window.iter().position(|&b| b == b'\n') {
        Some(i) => {
            let line = if i > 0 && window[i - 1] == b'\r' { i - 1 } else { i };
            if line > MAX_REQUEST_LINE {
                return Err(Reject::UriTooLong);
            }
            Ok(())
        }
        None if buf.len() > MAX_REQUEST_LINE + 1 => Err(Reject::UriTooLong),
        None => Ok(()),
    }
}

/// What a complete head's headers say about the connection.
struct Meta {
    framing: Framing,
    close: bool,
    keep_alive: bool,
    expect_continue: bool,
}

/// The body framing and connection options of a complete head, refusing every ambiguous
/// combination.
fn meta(version: u8, headers: &[httparse::Header<'_>]) -> Result<Meta, Reject> {
    let mut length: Option<u64> = None;
    let mut transfer_encoding = false;
    let mut chunked_count = 0;
    let mut last_coding_chunked = false;
    let mut other_coding = false;
    let mut hosts = 0;
    let mut upgrade = false;
    let (mut close, mut keep_alive, mut expect_continue) = (false, false, false);
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = parse_length(h.value).ok_or(Reject::BadRequest("invalid Content-Length"))?;
            if length.is_some_and(|prev| prev != v) {
                return Err(Reject::BadRequest("conflicting Content-Length headers"));
            }
            length = Some(v);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
            for coding in tokens(h.value) {
                last_coding_chunked = coding.eq_ignore_ascii_case(b"chunked");
                chunked_count += usize::from(last_coding_chunked);
                other_coding |= !last_coding_chunked;
            }
        } else if h.name.eq_ignore_ascii_case("host") {
            hosts += 1;
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade = super::switches_protocol(h.value);
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in tokens(h.value) {
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if h.name.eq_ignore_ascii_case("expect") {
            expect_continue = h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        }
    }
    let framing =
        framing(version, length, transfer_encoding, last_coding_chunked && chunked_count == 1, upgrade, hosts)?;
    if other_coding {
        // Forwarding `gzip, chunked` as chunked alone would lose the gzip; nobody here decodes it.
        return Err(Reject::NotImplemented("transfer coding other than chunked"));
    }
    Ok(Meta { framing, close, keep_alive, expect_continue })
}

fn framing(
    version: u8,
    length: Option<u64>,
    transfer_encoding: bool,
    single_chunked_last: bool,
    upgrade: bool,
    hosts: usize,
) -> Result<Framing, Reject> {
    if hosts > 1 {
        return Err(Reject::BadRequest("multiple Host headers"));
    }
    if hosts == 0 && version >= 1 {
        return Err(Reject::BadRequest("missing Host header"));
    }
    if !transfer_encoding {
        return Ok(match length {
            None | Some(0) if upgrade && version >= 1 => Framing::Upgrade,
            None | Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
        });
    }
    if length.is_some() {
        return Err(Reject::BadRequest("both Content-Length and Transfer-Encoding"));
    }
    if version == 0 {
        return Err(Reject::BadRequest("Transfer-Encoding in an HTTP/1.0 request"));
    }
    if !single_chunked_last {
        return Err(Reject::BadRequest("Transfer-Encoding must end with a single chunked"));
    }
    Ok(Framing::Chunked)
}

/// The non-empty items of a comma-separated header value, trimmed.
pub(crate) fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',').map(trim).filter(|t| !t.is_empty())
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| !matches!(b, b' ' | b'\t')).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !matches!(b, b' ' | b'\t')).map_or(start, |i| i + 1);
    &v[start..end]
}

/// `1*DIGIT` and nothing else: no sign, no list, no hex; at most 18 digits so it cannot overflow.
pub(crate) fn parse_length(v: &[u8]) -> Option<u64> {
    let v = trim(v);
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(raw: &[u8]) -> Result<Option<RequestHead>, Reject> {
        parse(&mut BytesMut::from(raw))
    }

    fn complete(raw: &str) -> Result<Framing, Reject> {
        match check(raw.as_bytes())? {
            Some(head) => Ok(head.framing),
            None => panic!("partial: {raw:?}"),
        }
    }

    #[test]
    fn plain_heads_pass() {
        assert_eq!(complete("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Ok(Framing::Empty));
        assert_eq!(complete("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"), Ok(Framing::Length(5)));
        assert_eq!(
            complete("POST / HTTP/1.1\r\nHost: a\r\ncontent-length: 5\r\nContent-Length: 5\r\n\r\n"),
            Ok(Framing::Length(5))
        );
        assert_eq!(
            complete("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            Err(Reject::NotImplemented("transfer coding other than chunked")),
            "the gzip would be lost"
        );
        // Bare LF ends no line: not in the request line, a header line, nor the blank line.
        for bare in [
            "GET / HTTP/1.1\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\nX: 1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\n\n",
            "GET / HTTP/1.1\r\nHost: a  \n\r\n",
        ] {
            assert_eq!(complete(bare), Err(Reject::BadRequest("line ending without CR")), "{bare:?}");
        }
        assert_eq!(complete("GET / HTTP/1.1\r\nHost: a \t\r\nX:\r\n\r\n"), Ok(Framing::Empty), "blanks before CRLF");
        assert_eq!(complete("GET / HTTP/1.0\r\n\r\n"), Ok(Framing::Empty));
        let ws = "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
        assert_eq!(complete(ws), Ok(Framing::Upgrade));
        // With a body, or in HTTP/1.0, there is no switch: the next head is checked as usual.
        let with_body = "POST / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nContent-Length: 2\r\n\r\nhi";
        assert_eq!(complete(with_body), Ok(Framing::Length(2)));
        assert_eq!(complete("GET / HTTP/1.0\r\nUpgrade: websocket\r\n\r\n"), Ok(Framing::Empty));
        // h2c is not passed through: the request is served as HTTP/1.1, routed per request.
        assert_eq!(complete("GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\n\r\n"), Ok(Framing::Empty));
        assert!(matches!(check(b"GET / HTTP/1.1\r\nHost: a\r\n"), Ok(None)));
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        let bad = |raw: &str| matches!(complete(raw), Err(Reject::BadRequest(_)));
        assert!(bad("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"));
        assert!(bad("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"));
        assert!(bad("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"));
        assert!(bad("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n"));
        assert!(bad("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n"));
        assert!(bad("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n"));
        assert!(bad("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"));
        assert!(bad("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"));
        assert!(bad("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"));
        assert!(bad("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"));
        assert!(bad("GET / HTTP/1.1\r\n\r\n"));
    }

    #[test]
    fn control_bytes_and_bad_syntax_are_refused() {
        for raw in [
            "GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX: a\x7fb\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX y: 1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n folded\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX : 1\r\n\r\n",
            "GET / HTTP/9.1\r\nHost: a\r\n\r\n",
        ] {
            assert!(matches!(check(raw.as_bytes()), Err(Reject::BadRequest(_))), "{raw:?}");
        }
    }

    #[test]
    fn limits() {
        let long = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(MAX_REQUEST_LINE));
        assert!(matches!(check(long.as_bytes()), Err(Reject::UriTooLong)));
        // Refused before the line even ends.
        assert!(matches!(check(&long.as_bytes()[..MAX_REQUEST_LINE + 5]), Err(Reject::UriTooLong)));
        let fits = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(MAX_REQUEST_LINE - 20));
        assert!(matches!(check(fits.as_bytes()), Ok(Some(_))));

        let many: String = (0..MAX_HEADERS).map(|i| format!("x-{i}: 1\r\n")).collect();
        let raw = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
        assert!(matches!(check(raw.as_bytes()), Err(Reject::HeadTooLarge(_))));

        let big = format!("GET / HTTP/1.1\r\nHost: a\r\nx-big: {}\r\n", "b".repeat(MAX_HEAD));
        assert!(matches!(check(big.as_bytes()), Err(Reject::HeadTooLarge(_))), "partial and too large");
    }

    #[test]
    fn parses_once_into_the_request_and_leaves_what_follows() {
        let mut buf = BytesMut::from(
            &b"POST /a/b?x=1 HTTP/1.1\r\nHost: shop.test\r\nX-Two: 1\r\nx-two: 2\r\nContent-Length: 3\r\n\
               Expect: 100-continue\r\n\r\nabcGET /next"[..],
        );
        let head = parse(&mut buf).unwrap().unwrap();
        assert_eq!(&buf[..], b"abcGET /next", "only the head is taken");
        assert_eq!(head.parts.method, Method::POST);
        assert_eq!(head.parts.uri.path(), "/a/b");
        assert_eq!(head.parts.uri.query(), Some("x=1"));
        assert_eq!(head.parts.version, Version::HTTP_11);
        assert_eq!(head.parts.headers["host"], "shop.test");
        let two: Vec<_> = head.parts.headers.get_all("x-two").iter().collect();
        assert_eq!(two, ["1", "2"]);
        assert_eq!(head.framing, Framing::Length(3));
        assert!(head.keep_alive && head.expect_continue);

        let close = check(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, close\r\n\r\n").unwrap().unwrap();
        assert!(!close.keep_alive);
        let old = check(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!old.keep_alive && old.parts.version == Version::HTTP_10);
        let old_kept = check(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").unwrap().unwrap();
        assert!(old_kept.keep_alive);
        // Without a body there is nothing to wait for.
        let bodiless = check(b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n").unwrap().unwrap();
        assert!(!bodiless.expect_continue);
        let absolute = check(b"GET http://a.test:8080/p HTTP/1.1\r\nHost: b\r\n\r\n").unwrap().unwrap();
        assert_eq!(absolute.parts.uri.authority().map(|a| a.as_str()), Some("a.test:8080"));
    }

    #[test]
    fn a_head_is_parsed_again_only_when_new_bytes_can_change_the_answer() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        // Fed a byte at a time: parsed at the first byte and at each line end only.
        let mut parses = 0;
        let mut seen = 0;
        for end in 1..=head.len() {
            let buf = &head[..end];
            if worth_parsing(buf, seen) {
                parses += 1;
                match check(buf) {
                    Ok(Some(_)) => break,
                    Ok(None) => seen = buf.len(),
                    Err(r) => panic!("{r:?}"),
                }
            }
        }
        assert_eq!(parses, 4, "first byte, request line, Host line, blank line");
        // Crossing a limit is worth a parse (it gives the 414 or the 431).
        let long = vec![b'a'; MAX_REQUEST_LINE + 10];
        assert!(worth_parsing(&long, MAX_REQUEST_LINE));
        assert!(!worth_parsing(&long, MAX_REQUEST_LINE + 5), "past the limit already: parsed then");
        let big = vec![b'a'; MAX_HEAD + 1];
        assert!(worth_parsing(&big, MAX_HEAD));
    }

    /// Properties over generated input: heads come from clients that may send anything.
    mod properties {
        use proptest::collection::vec;
        use proptest::prelude::*;
        use proptest::sample::{select, Index};

        use super::*;
        use crate::test_input::{self, split};

        /// Request lines and headers of requests, with what all heads share.
        fn head_piece() -> impl Strategy<Value = Vec<u8>> {
            test_input::head_piece(&[
                b"GET / HTTP/1.1\r\n",
                b"POST /a?b HTTP/1.0\r\n",
                b"CONNECT a:1 HTTP/1.1\r\n",
                b"GET http://h/ HTTP/1.1\r\n",
                b"Host: a\r\n",
                b"Host:",
                b"Expect: 100-continue\r\n",
                b"x-a: b\r\n",
                b"5",
                b"-1",
                b"/",
                b"a",
                b" HTTP/1.1",
                b"HTTP/9.9",
            ])
        }

        /// An answer other than "more bytes", and the number of pieces fed when it came.
        type Answered = Option<(usize, String)>;

        fn answer(r: &Result<Option<RequestHead>, Reject>) -> String {
            format!("{r:?}")
        }

        /// Feeds `pieces` as a server does: a parse only when [`worth_parsing`] says so. Returns
        /// the first answer other than "more bytes", with the number of pieces it took, and the
        /// first such answer of a parse after every piece.
        fn feed(pieces: &[&[u8]]) -> (Answered, Answered) {
            let (mut gated, mut every) = (None, None);
            let mut seen = 0;
            let mut buf = Vec::new();
            for (n, piece) in pieces.iter().enumerate() {
                buf.extend_from_slice(piece);
                let now = parse(&mut BytesMut::from(&buf[..]));
                if every.is_none() && !matches!(now, Ok(None)) {
                    every = Some((n, answer(&now)));
                }
                if gated.is_none() && worth_parsing(&buf, seen) {
                    match now {
                        Ok(None) => seen = buf.len(),
                        _ => gated = Some((n, answer(&now))),
                    }
                }
            }
            (gated, every)
        }

        proptest! {
            #[test]
            fn any_head_is_answered_without_panic_and_a_whole_one_is_never_put_off(
                pieces in vec(head_piece(), 0..40),
                cuts in vec(any::<Index>(), 0..8),
            ) {
                let data = pieces.concat();
                let mut buf = BytesMut::from(&data[..]);
                if let Ok(Some(_)) = parse(&mut buf) {
                    prop_assert!(buf.len() < data.len() && data.ends_with(&buf), "the head is split off the front");
                }
                let (gated, every) = feed(&split(&data, &cuts));
                // Gating may put an error off to the next line end or limit, never an answer
                // ahead of a parse after every piece; and a complete head is taken as soon as its
                // last byte arrives.
                if let Some((n, _)) = gated {
                    prop_assert!(every.as_ref().is_some_and(|e| e.0 <= n), "{gated:?} {every:?}");
                }
                if let Some((n, ref a)) = every {
                    if a.starts_with("Ok(Some") {
                        prop_assert_eq!(gated, Some((n, a.clone())));
                    }
                }
            }

            #[test]
            fn a_valid_head_parses_to_what_was_sent(
                method in select(vec!["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]),
                path in "/[A-Za-z0-9._~-]{0,20}(\\?[a-z0-9=&]{0,10})?",
                fields in vec(("x-[a-z0-9-]{1,12}", "([!-~]([ -~]{0,18}[!-~])?)?"), 0..10),
                body in proptest::option::of(vec(any::<u8>(), 0..20)),
                cuts in vec(any::<Index>(), 0..8),
            ) {
                let mut wire = format!("{method} {path} HTTP/1.1\r\nHost: h.test\r\n");
                for (name, value) in &fields {
                    wire.push_str(&format!("{name}: {value}\r\n"));
                }
                if let Some(body) = &body {
                    wire.push_str(&format!("Content-Length: {}\r\n", body.len()));
                }
                wire.push_str("\r\n");
                let mut wire = wire.into_bytes();
                let head_len = wire.len();
                wire.extend_from_slice(body.as_deref().unwrap_or_default());
                let mut buf = BytesMut::from(&wire[..]);
                let head = parse(&mut buf).unwrap().unwrap();
                prop_assert_eq!(&buf[..], &wire[head_len..]);
                prop_assert_eq!(head.parts.method.as_str(), method);
                prop_assert_eq!(head.parts.uri.to_string(), path);
                prop_assert_eq!(&head.parts.headers["host"], "h.test");
                for (name, value) in &fields {
                    let got: Vec<_> = head.parts.headers.get_all(name.as_str()).iter().collect();
                    prop_assert!(got.iter().any(|v| v.as_bytes() == value.as_bytes()), "{name}: {got:?}");
                }
                match body.map(|b| b.len() as u64) {
                    None => prop_assert_eq!(head.framing, Framing::Empty),
                    Some(0) => prop_assert!(matches!(head.framing, Framing::Empty | Framing::Length(0))),
                    Some(n) => prop_assert_eq!(head.framing, Framing::Length(n)),
                }
                // In pieces, it is taken with the piece that ends it, as a whole.
                let pieces = split(&wire[..head_len], &cuts);
                let (gated, _) = feed(&pieces);
                let last = pieces.iter().rposition(|p| !p.is_empty());
                prop_assert_eq!(gated.map(|g| g.0), last);
            }
        }
    }
}
