//! A route's client networks: `allow_from` (empty: any) and `deny_from`, checked on the client
//! address (the one a trusted PROXY header names, where the listener takes one).

use std::net::IpAddr;

use sluice_shared::cidr::Cidr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpPolicy {
    allow: Box<[Cidr]>,
    deny: Box<[Cidr]>,
}

impl IpPolicy {
    /// `None` when both lists are empty (every client may come). Errors name the entry.
    pub fn new(allow: &[String], deny: &[String]) -> Result<Option<IpPolicy>, (String, String)> {
        if allow.is_empty() && deny.is_empty() {
            return Ok(None);
        }
        let parse = |field: &str, list: &[String]| {
            list.iter()
                .enumerate()
                .map(|(i, net)| net.parse::<Cidr>().map_err(|e| (format!("{field}[{i}]"), e.to_string())))
                .collect::<Result<Box<[Cidr]>, _>>()
        };
        Ok(Some(IpPolicy { allow: parse("allow_from", allow)?, deny: parse("deny_from", deny)? }))
    }

    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            // A v4 client on a dual-stack socket shows as ::ffff:a.b.c.d.
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        (self.allow.is_empty() || self.allow.iter().any(|n| n.contains(ip)))
            && !self.deny.iter().any(|n| n.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn allow_then_deny() {
        assert_eq!(IpPolicy::new(&[], &[]).unwrap(), None);
        let p = IpPolicy::new(&nets(&["10.0.0.0/8", "::1/128"]), &nets(&["10.9.0.0/16"])).unwrap().unwrap();
        assert!(p.permits("10.1.2.3".parse().unwrap()));
        assert!(!p.permits("10.9.2.3".parse().unwrap()), "denied inside an allowed network");
        assert!(!p.permits("192.168.1.1".parse().unwrap()));
        assert!(p.permits("::1".parse().unwrap()));
        assert!(p.permits("::ffff:10.1.2.3".parse().unwrap()), "a mapped v4 client");
        let deny_only = IpPolicy::new(&[], &nets(&["127.0.0.1"])).unwrap().unwrap();
        assert!(!deny_only.permits("127.0.0.1".parse().unwrap()));
        assert!(deny_only.permits("127.0.0.2".parse().unwrap()));
        assert_eq!(IpPolicy::new(&nets(&["nope"]), &[]).unwrap_err().0, "allow_from[0]");
    }
}
