//! An http/https listener's HTTP versions and HTTP/2 limits, with the defaults filled in once at
//! compile time (the values Envoy's edge guide recommends, or close to them).

use std::time::Duration;

use sluice_shared::model::{self, Http2Settings, HttpVersion, Listener};

/// Streams a client connection may have open at once.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 100;
/// The decoded header list a client may send (the HTTP/1.1 head limit's equal).
pub const DEFAULT_MAX_HEADER_LIST: u32 = 64 * 1024;
pub const DEFAULT_STREAM_WINDOW: u32 = 64 * 1024;
pub const DEFAULT_CONNECTION_WINDOW: u32 = 1024 * 1024;
pub const DEFAULT_H2_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a client may take to send a request head (idle keep-alive time included).
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client sending a request body may go without sending any of it.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// What an http/https listener does with `%2F`, `%5C` and `\` in a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EscapedSlashes {
    /// Left encoded: they never separate segments here (the endpoint must not decode them either).
    Keep,
    /// 400.
    #[default]
    Reject,
    /// Decoded to `/`, and the client redirected to the decoded path.
    DecodeAndRedirect,
}

/// How an http/https listener normalizes request paths (see `http/codec/path.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathPolicy {
    pub merge_slashes: bool,
    pub escaped_slashes: EscapedSlashes,
}

impl Default for PathPolicy {
    fn default() -> Self {
        PathPolicy { merge_slashes: true, escaped_slashes: EscapedSlashes::Reject }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpOptions {
    pub http1: bool,
    pub http2: bool,
    pub max_concurrent_streams: u32,
    pub max_header_list: u32,
    pub stream_window: u32,
    pub connection_window: u32,
    pub idle_timeout: Duration,
    pub max_connection_age: Option<Duration>,
    pub paths: PathPolicy,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
}

impl Default for HttpOptions {
    fn default() -> HttpOptions {
        HttpOptions::new(&[], Http2Settings::default())
    }
}

impl HttpOptions {
    /// `versions` empty: both.
    pub fn new(versions: &[HttpVersion], h2: Http2Settings) -> HttpOptions {
        let has = |v| versions.is_empty() || versions.contains(&v);
        HttpOptions {
            http1: has(HttpVersion::Http1),
            http2: has(HttpVersion::Http2),
            max_concurrent_streams: h2.max_concurrent_streams.unwrap_or(DEFAULT_MAX_CONCURRENT_STREAMS),
            max_header_list: h2.max_header_list_bytes.unwrap_or(DEFAULT_MAX_HEADER_LIST),
            stream_window: h2.initial_stream_window_bytes.unwrap_or(DEFAULT_STREAM_WINDOW),
            connection_window: h2.initial_connection_window_bytes.unwrap_or(DEFAULT_CONNECTION_WINDOW),
            idle_timeout: h2.idle_timeout_ms.map_or(DEFAULT_H2_IDLE_TIMEOUT, Duration::from_millis),
            max_connection_age: h2.max_connection_age_ms.map(Duration::from_millis),
            paths: PathPolicy::default(),
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
        }
    }

    /// A listener's options, defaults filled in.
    pub fn of(l: &Listener) -> HttpOptions {
        let mut o = HttpOptions::new(&l.http_versions, l.http2.unwrap_or_default());
        if let Some(p) = &l.paths {
            o.paths.merge_slashes = p.merge_slashes.unwrap_or(true);
            o.paths.escaped_slashes = match p.escaped_slashes {
                Some(model::EscapedSlashes::Keep) => EscapedSlashes::Keep,
                Some(model::EscapedSlashes::DecodeAndRedirect) => EscapedSlashes::DecodeAndRedirect,
                Some(model::EscapedSlashes::Reject) | None => EscapedSlashes::Reject,
            };
        }
        o.header_timeout = l.header_timeout_ms.map_or(DEFAULT_HEADER_TIMEOUT, Duration::from_millis);
        o.body_timeout = l.body_timeout_ms.map_or(DEFAULT_BODY_TIMEOUT, Duration::from_millis);
        o
    }

    /// The ALPN protocols an https listener offers, preferred first.
    pub fn alpn(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::with_capacity(2);
        if self.http2 {
            out.push(b"h2".to_vec());
        }
        if self.http1 {
            out.push(b"http/1.1".to_vec());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_default_to_both_and_restrict_alpn() {
        let both = HttpOptions::default();
        assert_eq!(both.alpn(), vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
        let h1 = HttpOptions::new(&[HttpVersion::Http1], Http2Settings::default());
        assert_eq!(h1.alpn(), vec![b"http/1.1".to_vec()]);
        assert!(!h1.http2);
        let h2 = HttpOptions::new(
            &[HttpVersion::Http2],
            Http2Settings { max_concurrent_streams: Some(7), ..Default::default() },
        );
        assert_eq!(h2.alpn(), vec![b"h2".to_vec()]);
        assert_eq!(h2.max_concurrent_streams, 7);
        assert_eq!(h2.max_header_list, DEFAULT_MAX_HEADER_LIST);
    }
}
