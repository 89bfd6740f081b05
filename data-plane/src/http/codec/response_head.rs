//! Writing a response head for the client: status line, the headers as the proxy leaves them,
//! then what the connection needs (body framing, `connection`, `date`).

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderMap};
use http::response::Parts;
use http::{StatusCode, Version};
use http_body::SizeHint;

use super::head::tokens;
use super::headers::push_header;
use super::headers::PassedHead;

/// How the body after a head is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyOut {
    /// No body (HEAD, 1xx, 204, 304), or one the headers or the size announce.
    Plain,
    Chunked,
    /// Unknown length to an HTTP/1.0 client: the body ends when the connection closes.
    UntilClose,
}

/// What the server decided about the exchange before the head goes out.
#[derive(Debug, Clone, Copy)]
pub struct HeadOptions {
    /// The request's version: an HTTP/1.0 client gets no chunked coding, and `keep-alive` said.
    pub version: Version,
    /// The response carries no body, whatever its headers say.
    pub no_body: bool,
    /// The connection stays open after this response.
    pub keep_alive: bool,
}

/// Whether a response to `method`'s request with `status` never has a body (RFC 9112 §6.3).
pub fn bodiless(head_request: bool, status: StatusCode) -> bool {
    head_request || status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED
}

/// Whether the headers say `Connection: close`.
pub fn says_close(headers: &HeaderMap) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|v| tokens(v.as_bytes()).any(|t| t.eq_ignore_ascii_case(b"close")))
}

/// Appends the head to `out`; returns how the body goes, and whether the connection can stay
/// open (an HTTP/1.0 client reads a body of unknown length to the connection's end).
/// `passed`: an endpoint's header lines, written after the response's own headers.
pub fn encode(
    out: &mut Vec<u8>,
    parts: &Parts,
    passed: Option<&PassedHead>,
    size: SizeHint,
    opts: HeadOptions,
) -> (BodyOut, bool) {
    let status = parts.status;
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.extend_from_slice(b"\r\n");
    let (mut has_length, mut has_date, mut has_connection) = (false, false, false);
    for (name, value) in &parts.headers {
        // Standard names compare as enum tags, not strings.
        has_length |= name == header::CONTENT_LENGTH;
        has_date |= name == header::DATE;
        has_connection |= name == header::CONNECTION;
        push_header(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if let Some(p) = passed {
        // Hop-by-hop headers (`connection` among them) were left out of these.
        out.extend_from_slice(p.lines());
        has_length |= p.has_length();
        has_date |= p.has_date();
    }
    let mut keep_alive = opts.keep_alive;
    let mut body = BodyOut::Plain;
    if !opts.no_body && !has_length {
        match size.exact() {
            Some(n) => {
                push_header(out, b"content-length", itoa::Buffer::new().format(n).as_bytes());
            }
            None if opts.version == Version::HTTP_11 => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                body = BodyOut::Chunked;
            }
            None => {
                body = BodyOut::UntilClose;
                keep_alive = false;
            }
        }
    }
    if !has_connection {
        if !keep_alive {
            out.extend_from_slice(b"connection: close\r\n");
        } else if opts.version == Version::HTTP_10 {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
    }
    if !has_date {
        // RFC 9110 §6.6.1: a recipient with a clock adds the Date an answer came without.
        out.extend_from_slice(b"date: ");
        push_date(out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    (body, keep_alive)
}

thread_local! {
    /// The formatted date of the current second: formatted once a second per worker thread.
    static DATE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
}

fn push_date(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != secs {
            let formatted = httpdate::fmt_http_date(now);
            if formatted.len() == text.len() {
                text.copy_from_slice(formatted.as_bytes());
                *at = secs;
            }
        }
        out.extend_from_slice(text);
    });
}

#[cfg(test)]
mod tests {
    use http::{HeaderValue, Response};

    use super::*;

    fn head(status: u16, headers: &[(&'static str, &'static str)]) -> Parts {
        let mut r = Response::new(());
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        for (n, v) in headers {
            r.headers_mut().append(*n, HeaderValue::from_static(v));
        }
        r.into_parts().0
    }

    fn text(parts: &Parts, size: SizeHint, opts: HeadOptions) -> (String, BodyOut, bool) {
        let mut out = Vec::new();
        let (body, keep) = encode(&mut out, parts, None, size, opts);
        (String::from_utf8(out).unwrap(), body, keep)
    }

    const KEEP_11: HeadOptions = HeadOptions { version: Version::HTTP_11, no_body: false, keep_alive: true };

    #[test]
    fn framing_follows_the_body_and_the_client_version() {
        let (t, body, keep) = text(&head(200, &[("x-a", "1")]), SizeHint::with_exact(5), KEEP_11);
        assert!(t.starts_with("HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 5\r\ndate: "), "{t}");
        assert!(t.ends_with(" GMT\r\n\r\n") && !t.contains("connection"), "{t}");
        assert_eq!((body, keep), (BodyOut::Plain, true));

        let (t, body, _) = text(&head(200, &[]), SizeHint::default(), KEEP_11);
        assert!(t.contains("transfer-encoding: chunked\r\n"));
        assert_eq!(body, BodyOut::Chunked);

        let old = HeadOptions { version: Version::HTTP_10, ..KEEP_11 };
        let (t, body, keep) = text(&head(200, &[]), SizeHint::default(), old);
        assert!(t.contains("connection: close\r\n") && !t.contains("transfer-encoding"), "{t}");
        assert_eq!((body, keep), (BodyOut::UntilClose, false));
        let (t, _, keep) = text(&head(200, &[]), SizeHint::with_exact(0), old);
        assert!(t.contains("content-length: 0\r\nconnection: keep-alive\r\n") && keep, "{t}");
    }

    #[test]
    fn given_headers_win_and_bodiless_answers_get_no_framing() {
        let given = head(200, &[("content-length", "3"), ("date", "Tue, 01 Dec 2026 00:00:00 GMT")]);
        let (t, _, _) = text(&given, SizeHint::with_exact(3), KEEP_11);
        assert_eq!(t.matches("content-length").count(), 1);
        assert_eq!(t.matches("date").count(), 1);

        let (t, _, _) = text(&head(304, &[]), SizeHint::default(), HeadOptions { no_body: true, ..KEEP_11 });
        assert!(!t.contains("content-length") && !t.contains("transfer-encoding"), "{t}");
        assert!(bodiless(true, StatusCode::OK) && bodiless(false, StatusCode::NO_CONTENT));
        assert!(!bodiless(false, StatusCode::NOT_FOUND));

        let closing = HeadOptions { keep_alive: false, ..KEEP_11 };
        let (t, _, _) = text(&head(413, &[("connection", "close")]), SizeHint::with_exact(0), closing);
        assert_eq!(t.matches("connection").count(), 1, "{t}");
        assert!(says_close(&head(413, &[("connection", "Keep-Alive, Close")]).headers));
    }

    #[test]
    fn the_date_is_an_imf_fixdate() {
        let mut out = Vec::new();
        push_date(&mut out);
        let s = String::from_utf8(out).unwrap();
        assert!(httpdate::parse_http_date(&s).is_ok(), "{s}");
    }
}
