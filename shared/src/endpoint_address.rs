//! An endpoint's address: `IP:port`, or `host:port` with a DNS name the nodes resolve (a compose
//! service, a Kubernetes headless Service). Listener addresses stay `IP:port`: a node binds them.

use std::fmt;
use std::net::SocketAddr;

/// The longest DNS name (RFC 1035 §2.3.4), without a trailing dot.
const MAX_NAME: usize = 253;
const MAX_LABEL: usize = 63;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EndpointAddress {
    Ip(SocketAddr),
    /// `host` is lower case, without a trailing dot.
    Name {
        host: String,
        port: u16,
    },
}

impl EndpointAddress {
    /// Parses `IP:port`, `[v6]:port` or `name:port`; the error says what is wrong, in the API's words.
    pub fn parse(s: &str) -> Result<EndpointAddress, String> {
        if let Ok(a) = s.parse::<SocketAddr>() {
            return if a.port() == 0 { Err(format!("{s:?}: port 0 is not allowed")) } else { Ok(Self::Ip(a)) };
        }
        let not_an_address = || format!("{s:?} is not an IP:port or host:port address");
        let (host, port) = s.rsplit_once(':').ok_or_else(not_an_address)?;
        let port: u16 = match port.parse() {
            Ok(0) => return Err(format!("{s:?}: port 0 is not allowed")),
            Ok(p) if !port.starts_with('+') => p,
            _ => return Err(not_an_address()),
        };
        let host = host.strip_suffix('.').unwrap_or(host);
        if !is_dns_name(host) {
            return Err(not_an_address());
        }
        Ok(Self::Name { host: host.to_ascii_lowercase(), port })
    }

    /// The DNS name, if the address is one.
    pub fn host(&self) -> Option<&str> {
        match self {
            Self::Ip(_) => None,
            Self::Name { host, .. } => Some(host),
        }
    }
}

impl fmt::Display for EndpointAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(a) => a.fmt(f),
            Self::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens (underscores too,
/// which service discovery names carry). The last label is not all digits, so a mistyped IP
/// (`10.0.0.300`) is an error rather than a name no resolver will answer.
fn is_dns_name(host: &str) -> bool {
    if host.is_empty() || host.len() > MAX_NAME {
        return false;
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= MAX_LABEL
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let last = host.rsplit('.').next().unwrap_or(host);
    host.split('.').all(label_ok) && !last.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_and_names_are_told_apart() {
        assert_eq!(EndpointAddress::parse("10.0.0.1:80"), Ok(EndpointAddress::Ip("10.0.0.1:80".parse().unwrap())));
        assert_eq!(EndpointAddress::parse("[::1]:443"), Ok(EndpointAddress::Ip("[::1]:443".parse().unwrap())));
        let name = |h: &str, p| Ok(EndpointAddress::Name { host: h.into(), port: p });
        assert_eq!(EndpointAddress::parse("api.internal:8080"), name("api.internal", 8080));
        assert_eq!(EndpointAddress::parse("API.Internal.:8080"), name("api.internal", 8080));
        assert_eq!(EndpointAddress::parse("db:5432"), name("db", 5432));
        assert_eq!(
            EndpointAddress::parse("_grpc.svc-1.ns.svc.cluster.local:9"),
            name("_grpc.svc-1.ns.svc.cluster.local", 9)
        );
        assert_eq!(EndpointAddress::parse("api.internal:8080").unwrap().to_string(), "api.internal:8080");
    }

    #[test]
    fn what_is_neither_is_refused() {
        for bad in [
            "nope",
            "api:0",
            "api:",
            "api:+80",
            "api:65536",
            ":80",
            "10.0.0.300:80",
            "-api:80",
            "api-:80",
            "a..b:80",
            "a b:80",
            "a/b:80",
            "user@api:80",
            "[::1:80",
            "::1:80",
            "127.0.0.1:0",
        ] {
            assert!(EndpointAddress::parse(bad).is_err(), "{bad}");
        }
        assert!(EndpointAddress::parse(&format!("{}:80", "a".repeat(64))).is_err());
        let long = ["a".repeat(63), "b".repeat(63), "c".repeat(63), "d".repeat(62)].join(".");
        assert!(EndpointAddress::parse(&format!("{long}:80")).is_err(), "254 characters");
        assert!(EndpointAddress::parse(&format!("{}:80", &long[..253])).is_ok());
    }
}
