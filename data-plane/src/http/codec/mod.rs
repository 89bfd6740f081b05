//! What both sides of the proxy frame and parse: request heads (strictly, once), chunked and
//! length framing, hop-by-hop and forwarding headers, response heads, the client's request body
//! as the pipeline reads it, and HTTP/2 stream bodies.

pub mod chunked;
pub mod h2_body;
pub mod head;
pub mod headers;
pub mod outgoing;
pub mod path;
pub mod request_body;
pub mod response_head;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body went past its route's `max_request_body_bytes` while streaming.
#[derive(Debug, thiserror::Error)]
#[error("request body over {0} bytes")]
pub struct BodyTooLarge(pub u64);

/// The client's request body broke while it was forwarded: its chunked framing is malformed, or
/// the client's connection failed or ended inside it. The client's doing, never the endpoint's.
#[derive(Debug, thiserror::Error)]
#[error("request body from the client: {0}")]
pub struct ClientBodyError(#[source] pub std::io::Error);

/// Whether an `Upgrade` value makes the proxy switch protocols with the endpoint (a WebSocket and
/// the like). Not `h2c`: HTTP/2 is spoken with prior knowledge or by ALPN, never by an upgrade,
/// so `Upgrade: h2c` is ignored (the request is served as HTTP/1.1), as RFC 9110 §7.8 allows.
pub(crate) fn switches_protocol(upgrade: &[u8]) -> bool {
    let v = upgrade.trim_ascii();
    !v.is_empty() && !v.eq_ignore_ascii_case(b"h2c")
}
