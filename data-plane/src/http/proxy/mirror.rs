//! Request mirroring (Envoy's `request_mirror_policies`, NGINX's `mirror`): a copy of a routed
//! request goes to the route's mirror cluster on a task of its own; its answer is read and
//! discarded, and nothing about it reaches the client or slows its request. Only requests whose
//! body is known in full are copied (none, or one of at most 64 KiB kept in memory); the copy's
//! Host gets `-shadow` appended, so the mirror can tell copies from real traffic.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Request, Version};

use super::forward::one_try;
use super::Downstream;
use crate::http::codec::outgoing::RequestOut;
use crate::http::upstream::Dial;
use crate::state::Installed;
use crate::table::{ClusterLb, RouteEntry};

/// How long a copy may take, answer included, before it is dropped.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends a copy of the request (`parts` as prepared for the endpoint, `body` in full) to
/// `shadow`, in the background.
pub(super) fn send(
    down: &Downstream,
    installed: &Installed,
    route: &RouteEntry,
    shadow: &Arc<ClusterLb>,
    parts: &Parts,
    body: Option<Bytes>,
    forwarding: &[u8],
) {
    let mut request = Request::new(match body {
        Some(b) if !b.is_empty() => RequestOut::Buffered(Some(b)),
        _ => RequestOut::Empty,
    });
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = parts.headers.clone();
    if let Some(host) = parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
        if let Ok(v) = HeaderValue::try_from(shadow_host(host)) {
            request.headers_mut().insert(header::HOST, v);
        }
    }
    route.stats().record_mirrored();
    let (ctx, shadow, forwarding) = (down.ctx.clone(), shadow.clone(), forwarding.to_vec());
    let tls = installed.tls.upstream(shadow.name()).cloned();
    tokio::spawn(async move {
        let Some(endpoint) = shadow.pick() else { return };
        let down = Downstream::new(ctx);
        let dial = Dial { tls: tls.as_deref(), connect_timeout: shadow.connect_timeout() };
        let exchange = async {
            let resp = one_try(&down, &shadow, endpoint.address(), dial, false, request, &forwarding).await.ok()?;
            // Read to the end so that the connection goes back to the pool.
            let mut body = resp.into_body();
            while let Some(frame) = std::future::poll_fn(|cx| body.poll_frame(cx)).await {
                frame.ok()?;
            }
            Some(())
        };
        if tokio::time::timeout(MIRROR_TIMEOUT, exchange).await.is_err() {
            tracing::debug!(cluster = shadow.name(), "mirrored request timed out");
        }
        drop(endpoint);
    });
}

/// `host` with `-shadow` after its name, before any port (`api.test:8080` → `api.test-shadow:8080`).
fn shadow_host(host: &str) -> String {
    let (name, port) = match host.rfind(':') {
        Some(i) if !host.ends_with(']') && host[i + 1..].bytes().all(|b| b.is_ascii_digit()) => host.split_at(i),
        _ => (host, ""),
    };
    format!("{name}-shadow{port}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_copy_names_a_shadow_host() {
        assert_eq!(shadow_host("api.test"), "api.test-shadow");
        assert_eq!(shadow_host("api.test:8080"), "api.test-shadow:8080");
        assert_eq!(shadow_host("[::1]:80"), "[::1]-shadow:80");
        assert_eq!(shadow_host("[::1]"), "[::1]-shadow");
    }
}
