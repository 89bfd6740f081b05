//! What a lookup sees of a request, and the small helpers that bring raw request parts into that shape.

use std::borrow::Cow;

use http::{HeaderMap, Method};

/// The parts of an HTTP request that route matching reads. Borrowed, so building one costs nothing.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a Method,
    /// Lower-case, port stripped, no trailing dot: see [`normalize_host`]. `None` when the request
    /// names no host; then only routes without `hosts` can match.
    pub host: Option<&'a str>,
    /// The path as received (still percent-encoded, no query). Prefix and exact matches compare bytes.
    pub path: &'a str,
    /// The raw query string without `?`; names and values are percent-decoded (and `+` read as a
    /// space) when query conditions are checked.
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

/// Brings a `Host` header or URI authority into the form [`RequestView::host`] expects: port
/// stripped (also after an IPv6 `[..]`), trailing dot removed, lower-cased. Borrows when it can.
pub fn normalize_host(raw: &str) -> Cow<'_, str> {
    let raw = raw.trim();
    let host = if raw.starts_with('[') {
        // IPv6 literal: keep the brackets' content, drop any `:port` after `]`.
        match raw.find(']') {
            Some(end) => &raw[..=end],
            None => raw,
        }
    } else {
        match raw.rfind(':') {
            Some(colon) => &raw[..colon],
            None => raw,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

/// Whether `raw` (a Host value or a target's authority) is `host[:port]` as RFC 9110 §7.2 allows:
/// a DNS-style name (letters, digits, `-`, `_`, `~`, dots between non-empty labels) or an IP
/// literal, and a port of at most 65535. No userinfo, path, spaces or anything else.
pub fn valid_authority(raw: &str) -> bool {
    let b = raw.as_bytes();
    // One pass over the bytes with a table lookup each: this runs on every request.
    let host_end = if b.first() == Some(&b'[') {
        match b.iter().position(|&c| c == b']') {
            Some(end) if end > 1 && b[1..end].iter().all(|&c| c.is_ascii_hexdigit() || c == b':' || c == b'.') => {
                end + 1
            }
            _ => return false,
        }
    } else {
        // Labels of name bytes between single dots; one trailing dot allowed.
        let mut label = 0;
        let mut i = 0;
        while i < b.len() {
            match NAME_BYTE[usize::from(b[i])] {
                1 => label += 1,
                2 if label > 0 => label = 0,
                3 => break,
                _ => return false,
            }
            i += 1;
        }
        if i == 0 {
            return false;
        }
        i
    };
    match &b[host_end..] {
        [] => true,
        [b':', port @ ..] => {
            port.len() <= 5
                && port.iter().all(u8::is_ascii_digit)
                && port.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0')) <= 65_535
        }
        _ => false,
    }
}

/// Per byte of a host name: 1 a name byte (letter, digit, `-`, `_`, `~`), 2 `.`, 3 `:`, 0 other.
static NAME_BYTE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'~' {
            1
        } else if b == b'.' {
            2
        } else if b == b':' {
            3
        } else {
            0
        };
        c += 1;
    }
    t
};

/// `name=value` pairs of a query string, still encoded. A pair without `=` has an empty value.
pub(crate) fn query_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query.split('&').filter(|p| !p.is_empty()).map(|p| p.split_once('=').unwrap_or((p, "")))
}

/// Percent-decoding (`%41` -> `A`, `+` -> space) as a byte iterator, so comparisons need no buffer.
/// A `%` not followed by two hex digits stays as it is.
struct Decoded<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Iterator for Decoded<'_> {
    type Item = u8;

    fn next(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.at)?;
        self.at += 1;
        match b {
            b'+' => Some(b' '),
            b'%' => {
                let hi = self.bytes.get(self.at).and_then(|c| hex(*c));
                let lo = self.bytes.get(self.at + 1).and_then(|c| hex(*c));
                match (hi, lo) {
                    (Some(hi), Some(lo)) => {
                        self.at += 2;
                        Some(hi << 4 | lo)
                    }
                    _ => Some(b'%'),
                }
            }
            _ => Some(b),
        }
    }
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn decoded(raw: &str) -> Decoded<'_> {
    Decoded { bytes: raw.as_bytes(), at: 0 }
}

/// Whether `raw`, once decoded, equals `want`. Allocates nothing.
pub(crate) fn decoded_eq(raw: &str, want: &str) -> bool {
    if !raw.contains(['%', '+']) {
        return raw == want;
    }
    decoded(raw).eq(want.bytes())
}

/// The decoded text of `raw` (invalid UTF-8 replaced), borrowing when nothing needs decoding.
pub(crate) fn decode(raw: &str) -> Cow<'_, str> {
    if !raw.contains(['%', '+']) {
        return Cow::Borrowed(raw);
    }
    let bytes: Vec<u8> = decoded(raw).collect();
    Cow::Owned(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities() {
        for ok in ["a.test", "A.Test:8080", "a.test.", "[::1]", "[::1]:80", "127.0.0.1:1", "x_y-z~w", "h:"] {
            assert!(valid_authority(ok), "{ok}");
        }
        for bad in [
            "", "a/b", "u@a.test", "a b", "a..b", ".a", "a:99999", "a:8x", "[::1", "[zz]", "[::1]x", "a:1:2", "ä.test",
            "a%41",
        ] {
            assert!(!valid_authority(bad), "{bad}");
        }
    }

    #[test]
    fn host_normalization() {
        assert_eq!(normalize_host("MyShop.com:8080"), "myshop.com");
        assert_eq!(normalize_host("myshop.com."), "myshop.com");
        assert_eq!(normalize_host("[::1]:8080"), "[::1]");
        assert_eq!(normalize_host("127.0.0.1:80"), "127.0.0.1");
        assert!(matches!(normalize_host("a.b"), Cow::Borrowed(_)));
    }

    #[test]
    fn query_decoding() {
        let pairs: Vec<_> = query_pairs("a=1&&b&c=x%20y&d=%zz").collect();
        assert_eq!(pairs, vec![("a", "1"), ("b", ""), ("c", "x%20y"), ("d", "%zz")]);
        assert!(decoded_eq("x%20y", "x y"));
        assert!(decoded_eq("x+y", "x y"));
        assert!(decoded_eq("%zz", "%zz"));
        assert!(decoded_eq("%4", "%4"));
        assert!(!decoded_eq("x%20y", "x%20y"));
        assert_eq!(decode("caf%C3%A9"), "café");
        assert_eq!(decode("%FF"), "\u{FFFD}");
    }
}
