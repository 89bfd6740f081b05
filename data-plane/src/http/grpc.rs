//! What the proxy does differently for gRPC calls (`content-type: application/grpc*`): its own
//! errors become gRPC statuses (HTTP 200, `grpc-status` and `grpc-message` in a trailers-only
//! response, never an HTML or text 503), and `grpc-timeout` bounds the call.

use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};

use super::body::ProxyBody;
pub use super::codec::headers::is_grpc;
use super::errors::ProxyError;

pub static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// gRPC status codes (grpc/doc/statuscodes.md) the proxy answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
    DeadlineExceeded = 4,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
}

/// The status a gRPC client gets for an answer the proxy makes itself.
pub fn code(err: ProxyError) -> Code {
    match err {
        ProxyError::NoRoute => Code::Unimplemented,
        ProxyError::Overflow(_) | ProxyError::EndpointsFull | ProxyError::BodyTooLarge => Code::ResourceExhausted,
        ProxyError::NoHealthyEndpoint
        | ProxyError::UpstreamConnect
        | ProxyError::UpstreamFailed
        | ProxyError::NotReady => Code::Unavailable,
        ProxyError::UpstreamTimeout | ProxyError::ClientTimeout => Code::DeadlineExceeded,
        ProxyError::ClientBody | ProxyError::NoHost | ProxyError::BadPath(_) | ProxyError::BadHost => Code::Internal,
        ProxyError::Connect => Code::Unimplemented,
        ProxyError::Forbidden => Code::PermissionDenied,
        ProxyError::BadRewrite => Code::Internal,
        ProxyError::RateLimited => Code::ResourceExhausted,
    }
}

/// `err` as a gRPC client reads it: a trailers-only response (RFC 9113 allows the status in
/// the only HEADERS frame), HTTP 200.
pub fn error_response(err: ProxyError) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::Empty);
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert(GRPC_STATUS.clone(), HeaderValue::from(code(err) as u16));
    // The messages are printable ASCII: nothing to percent-encode.
    h.insert(GRPC_MESSAGE.clone(), HeaderValue::from_static(err.message().trim_end()));
    err.mark_overflow(h);
    resp.extensions_mut().insert(err);
    resp
}

/// A response the proxy made for an error (it carries the [`ProxyError`]) as the gRPC status
/// answer; any other response as it is.
pub fn proxy_error_as_status(resp: Response<ProxyBody>) -> Response<ProxyBody> {
    match resp.extensions().get::<ProxyError>() {
        Some(&err) => error_response(err),
        None => resp,
    }
}

/// A `grpc-status` value as counted: 0-16, UNKNOWN (2) when absent or malformed.
pub fn parse_status(v: Option<&[u8]>) -> u8 {
    v.and_then(|v| std::str::from_utf8(v).ok()).and_then(|v| v.parse::<u8>().ok()).filter(|s| *s <= 16).unwrap_or(2)
}

/// The call's `grpc-timeout` (`1-8 digits` and a unit: H, M, S, m, u, n); `None` when absent or
/// malformed (the gRPC spec has servers ignore a malformed one).
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(&GRPC_TIMEOUT)?.as_bytes();
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n * 3600),
        b"M" => Duration::from_secs(n * 60),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::Overflow;

    fn with(name: &'static str, value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HeaderName::from_static(name), HeaderValue::from_static(value));
        h
    }

    #[test]
    fn grpc_timeout_units_and_malformed_values() {
        let t = |v| timeout(&with("grpc-timeout", v));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("2M"), Some(Duration::from_secs(120)));
        assert_eq!(t("3S"), Some(Duration::from_secs(3)));
        assert_eq!(t("250m"), Some(Duration::from_millis(250)));
        assert_eq!(t("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(t("7n"), Some(Duration::from_nanos(7)));
        for bad in ["", "S", "100", "123456789S", "1x", "-1S", "1.5S", " 1S"] {
            assert_eq!(t(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn grpc_content_types() {
        assert!(is_grpc(&with("content-type", "application/grpc")));
        assert!(is_grpc(&with("content-type", "application/grpc+proto")));
        assert!(is_grpc(&with("content-type", "application/grpc-web")));
        assert!(!is_grpc(&with("content-type", "application/json")));
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn proxy_errors_map_to_grpc_statuses_in_a_200() {
        let cases = [
            (ProxyError::NoRoute, "12"),
            (ProxyError::NoHealthyEndpoint, "14"),
            (ProxyError::UpstreamConnect, "14"),
            (ProxyError::UpstreamTimeout, "4"),
            (ProxyError::Overflow(Overflow::Requests), "8"),
            (ProxyError::EndpointsFull, "8"),
        ];
        for (err, status) in cases {
            let r = error_response(err);
            assert_eq!(r.status(), 200);
            assert_eq!(r.headers()["grpc-status"], status, "{err:?}");
            assert_eq!(r.headers()["content-type"], "application/grpc");
            assert!(!r.headers()["grpc-message"].is_empty());
        }
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            /// Whatever a client sends as grpc-timeout or grpc-status is read without a panic, a
            /// timeout only from its exact form, a status always within 0-16.
            #[test]
            fn any_grpc_header_is_read_safely(v in proptest::collection::vec(any::<u8>(), 0..24)) {
                if let Ok(value) = HeaderValue::from_bytes(&v) {
                    let mut h = HeaderMap::new();
                    h.insert(HeaderName::from_static("grpc-timeout"), value);
                    if timeout(&h).is_some() {
                        let (digits, unit) = v.split_at(v.len() - 1);
                        prop_assert!((1..=8).contains(&digits.len()) && digits.iter().all(u8::is_ascii_digit));
                        prop_assert!(b"HMSmun".contains(&unit[0]));
                    }
                }
                prop_assert!(parse_status(Some(&v)) <= 16);
            }

            #[test]
            fn well_formed_timeouts_read_exactly(n in 0u64..100_000_000, unit in 0usize..6) {
                let (u, d) = [
                    ("H", Duration::from_secs(n * 3600)), ("M", Duration::from_secs(n * 60)),
                    ("S", Duration::from_secs(n)), ("m", Duration::from_millis(n)),
                    ("u", Duration::from_micros(n)), ("n", Duration::from_nanos(n)),
                ][unit];
                let mut h = HeaderMap::new();
                h.insert(HeaderName::from_static("grpc-timeout"), HeaderValue::try_from(format!("{n}{u}")).unwrap());
                prop_assert_eq!(timeout(&h), Some(d));
            }
        }
    }
}
