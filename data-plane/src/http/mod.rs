//! The L7 proxy: HTTP/1.1 with strict request-head checks, our own server and upstream client.

pub mod body;
pub mod chunked;
pub mod errors;
mod grpc;
mod h2_body;
pub mod h2_server;
pub mod head;
pub mod headers;
pub mod proxy;
pub mod redirect;
pub mod request_body;
pub mod response_head;
pub mod server;
pub mod sticky;
pub mod tunnel;
pub mod upstream;
pub mod upstream_conn;
mod upstream_h2;
mod upstream_head;
#[cfg(test)]
mod upstream_tests;

/// Whether an `Upgrade` value makes the proxy switch protocols with the endpoint (a WebSocket and
/// the like). Not `h2c`: the proxy speaks HTTP/1.1 to endpoints and routes every request, so an
/// HTTP/2 upgrade is ignored (the request is served as HTTP/1.1), as RFC 9110 §7.8 allows.
pub(crate) fn switches_protocol(upgrade: &[u8]) -> bool {
    let v = upgrade.trim_ascii();
    !v.is_empty() && !v.eq_ignore_ascii_case(b"h2c")
}
