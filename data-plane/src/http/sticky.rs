//! Sticky sessions: a signed cookie that pins a client to one endpoint of one cluster.
//!
//! The value is `<cluster>.<endpoint>.<expires>.<mac>`: the endpoint by its configured name, or
//! by an id derived from the address with the key (so the cookie never reveals an address),
//! the expiry in Unix seconds, and an HMAC-SHA256 (first 16 bytes, base64url) over the rest. The
//! key comes from the control plane, the same for the whole fleet, so any node honours a cookie
//! another node issued. A cookie that is forged, expired, names an endpoint or cluster the route
//! no longer has, or an endpoint that is unhealthy, is ignored and replaced.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http::header::{self, HeaderMap, HeaderValue};
use ring::hmac;

use crate::table::{ClusterLb, EndpointGuard, RouteEntry, Table};

const MAC_LEN: usize = 16;
/// Bytes of the keyed hash naming an unnamed endpoint.
const ID_LEN: usize = 9;

/// The signing key and, per cluster that a sticky route uses, the endpoint ids. Built once per
/// revision.
pub struct StickySessions {
    key: hmac::Key,
    clusters: HashMap<Arc<str>, EndpointIds>,
}

#[derive(Default)]
struct EndpointIds {
    by_id: HashMap<Box<str>, SocketAddr>,
    by_address: HashMap<SocketAddr, Box<str>>,
}

impl StickySessions {
    pub fn new(key: &[u8], table: &Table) -> StickySessions {
        let key = hmac::Key::new(hmac::HMAC_SHA256, key);
        let mut clusters = HashMap::new();
        let sticky_routes = table.listeners().flat_map(|(_, l)| l.routes()).filter(|r| r.sticky().is_some());
        for route in sticky_routes {
            for b in route.backends() {
                let name: Arc<str> = b.cluster.name().into();
                if clusters.contains_key(&name) {
                    continue;
                }
                let mut ids = EndpointIds::default();
                for e in b.cluster.endpoints() {
                    let addr = e.state.address();
                    let id: Box<str> = match &e.name {
                        Some(n) => n.as_ref().into(),
                        // `_` cannot start an endpoint name, so derived ids never collide with names.
                        None => format!("_{}", address_id(&key, &name, addr)).into(),
                    };
                    ids.by_id.insert(id.clone(), addr);
                    ids.by_address.insert(addr, id);
                }
                clusters.insert(name, ids);
            }
        }
        StickySessions { key, clusters }
    }

    /// The endpoint a request's cookie pins it to, when the cookie is genuine, unexpired, and
    /// its cluster (a backend of `route` with a non-zero weight) and endpoint can take it now.
    pub fn pinned<'r>(&self, route: &'r RouteEntry, value: &str) -> Option<(&'r Arc<ClusterLb>, EndpointGuard)> {
        let (signed, mac) = value.rsplit_once('.')?;
        let mac = URL_SAFE_NO_PAD.decode(mac).ok()?;
        let expected = hmac::sign(&self.key, signed.as_bytes());
        if mac.len() != MAC_LEN || !constant_time_eq(&mac, &expected.as_ref()[..MAC_LEN]) {
            return None;
        }
        let mut parts = signed.splitn(3, '.');
        let (cluster, endpoint, expires) = (parts.next()?, parts.next()?, parts.next()?);
        if expires.parse::<u64>().ok()? <= unix_now() {
            return None;
        }
        let lb = route.backend(cluster)?;
        let addr = *self.clusters.get(cluster)?.by_id.get(endpoint)?;
        Some((lb, lb.pick_address(addr)?))
    }

    /// A new cookie value pinning to `endpoint` of `cluster` for `ttl_s` seconds.
    pub fn issue(&self, cluster: &str, endpoint: SocketAddr, ttl_s: u64) -> Option<String> {
        let id = self.clusters.get(cluster)?.by_address.get(&endpoint)?;
        let signed = format!("{cluster}.{id}.{}", unix_now().saturating_add(ttl_s));
        let mac = hmac::sign(&self.key, signed.as_bytes());
        Some(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(&mac.as_ref()[..MAC_LEN])))
    }
}

/// The `Set-Cookie` header for a sticky cookie.
pub fn set_cookie(name: &str, value: &str, ttl_s: u64, secure: bool) -> Option<HeaderValue> {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::try_from(format!("{name}={value}; Path=/; Max-Age={ttl_s}; HttpOnly; SameSite=Lax{secure}")).ok()
}

/// The value of cookie `name` in the request's `Cookie` headers (the first one if repeated).
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.trim_matches('"'))
}

fn address_id(key: &hmac::Key, cluster: &str, addr: SocketAddr) -> String {
    let tag = hmac::sign(key, format!("endpoint\0{cluster}\0{addr}").as_bytes());
    URL_SAFE_NO_PAD.encode(&tag.as_ref()[..ID_LEN])
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use sluice_shared::Config;

    use super::*;
    use crate::table::compile;

    fn table() -> Table {
        let cfg: Config = serde_json::from_value(json!({
            "listeners": {"web": {"address": "127.0.0.1:8080", "protocol": "http"}},
            "clusters": {
                "a": {"endpoints": [
                    {"address": "127.0.0.1:9001", "name": "a-1"},
                    {"address": "127.0.0.1:9002"}
                ]},
                "b": {"endpoints": [{"address": "127.0.0.1:9003"}]}
            },
            "routes": {"r": {"listener": "web", "backends": [{"cluster": "a"}, {"cluster": "b", "weight": 0}],
                             "sticky": {"cookie": "sid", "ttl_s": 60}}}
        }))
        .unwrap();
        compile(&cfg, None).unwrap()
    }

    fn route(t: &Table) -> &RouteEntry {
        &t.listener("web").unwrap().routes()[0]
    }

    #[test]
    fn an_issued_cookie_pins_and_hides_the_address() {
        let t = table();
        let s = StickySessions::new(b"k", &t);
        let named = s.issue("a", "127.0.0.1:9001".parse().unwrap(), 60).unwrap();
        assert!(named.starts_with("a.a-1."), "{named}");
        let unnamed = s.issue("a", "127.0.0.1:9002".parse().unwrap(), 60).unwrap();
        assert!(!unnamed.contains("9002") && !unnamed.contains("127"), "{unnamed}");
        let (c, g) = s.pinned(route(&t), &unnamed).unwrap();
        assert_eq!((c.name(), g.address().port()), ("a", 9002));
    }

    #[test]
    fn forged_expired_foreign_and_unusable_cookies_are_refused() {
        let t = table();
        let s = StickySessions::new(b"k", &t);
        let good = s.issue("a", "127.0.0.1:9001".parse().unwrap(), 60).unwrap();
        // Tampered: the endpoint swapped, the signature kept.
        let forged = good.replacen("a-1", "a-2", 1);
        assert!(s.pinned(route(&t), &forged).is_none());
        assert!(s.pinned(route(&t), "garbage").is_none());
        assert!(s.pinned(route(&t), "a.a-1.99999999999.!!!").is_none());
        // Signed by another fleet's key.
        let other = StickySessions::new(b"other", &t).issue("a", "127.0.0.1:9001".parse().unwrap(), 60).unwrap();
        assert!(s.pinned(route(&t), &other).is_none());
        // Expired (ttl 0: expires now).
        let expired = s.issue("a", "127.0.0.1:9001".parse().unwrap(), 0).unwrap();
        assert!(s.pinned(route(&t), &expired).is_none());
        // Unhealthy endpoint.
        let (_, g) = s.pinned(route(&t), &good).unwrap();
        g.set_healthy(false);
        assert!(s.pinned(route(&t), &good).is_none());
        // A zero-weight backend takes no pinned clients either ("b" has weight 0; never issued).
        assert!(s.issue("b", "127.0.0.1:9003".parse().unwrap(), 60).is_some());
        let b = s.issue("b", "127.0.0.1:9003".parse().unwrap(), 60).unwrap();
        assert!(s.pinned(route(&t), &b).is_none());
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; sid=xyz"));
        h.append(header::COOKIE, HeaderValue::from_static("uid=\"7\""));
        assert_eq!(cookie(&h, "sid"), Some("xyz"));
        assert_eq!(cookie(&h, "uid"), Some("7"));
        assert_eq!(cookie(&h, "id"), None);
        let v = set_cookie("sid", "v", 60, true).unwrap();
        assert_eq!(v, "sid=v; Path=/; Max-Age=60; HttpOnly; SameSite=Lax; Secure");
    }
}
