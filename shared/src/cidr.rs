//! IP networks as operators write them (`10.0.0.0/8`, `2001:db8::/32`, or a bare address for one
//! host), for lists of trusted sources.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    len: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidrError(String);

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CidrError {}

impl FromStr for Cidr {
    type Err = CidrError;

    /// Host bits must be zero (`10.0.0.1/8` is refused, not read as `10.0.0.0/8`): a typo in a
    /// trust list should be an error, not a silently wider or narrower network.
    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let bad = || CidrError(format!("{s:?} is not an IP network (a.b.c.d/n, x:y::/n or an address)"));
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) if !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()) && l.len() <= 3 => {
                (a, Some(l.parse::<u8>().map_err(|_| bad())?))
            }
            Some(_) => return Err(bad()),
            None => (s, None),
        };
        let network: IpAddr = addr.parse().map_err(|_| bad())?;
        let (bits, family) = if network.is_ipv4() { (32, 4) } else { (128, 6) };
        let len = len.unwrap_or(bits);
        if len > bits {
            return Err(CidrError(format!("{s:?}: the prefix of an IPv{family} network is at most /{bits}")));
        }
        let cidr = Cidr { network, len };
        if cidr.mask(network) != network {
            let fixed = Cidr { network: cidr.mask(network), len };
            return Err(CidrError(format!("{s:?} has host bits set (the network is {fixed})")));
        }
        Ok(cidr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.len)
    }
}

impl Cidr {
    /// Whether `ip` is in this network; an IPv4 address written as IPv6 (`::ffff:a.b.c.d`, as a
    /// dual-stack socket reports IPv4 clients) is matched as the IPv4 address it is.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.network.is_ipv4() && self.mask(ip) == self.network
    }

    fn mask(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(a) => {
                let m = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                IpAddr::V4((u32::from(a) & m).into())
            }
            IpAddr::V6(a) => {
                let m = u128::MAX.checked_shl(128 - u32::from(self.len)).unwrap_or(0);
                IpAddr::V6((u128::from(a) & m).into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_contain_their_addresses_only() {
        let ten: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(ten.contains(ip("10.255.1.2")) && !ten.contains(ip("11.0.0.0")));
        assert!(ten.contains(ip("::ffff:10.1.2.3")), "an IPv4 client of a dual-stack socket");
        assert!(!ten.contains(ip("::a00:1")), "IPv6 is not IPv4");
        let one: Cidr = "192.0.2.7".parse().unwrap();
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.1")) && !all.contains(ip("2001:db8::1")));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")) && !v6.contains(ip("2001:db9::1")));
        assert_eq!("::/0".parse::<Cidr>().unwrap().to_string(), "::/0");
        assert_eq!("fe80::1/128".parse::<Cidr>().unwrap().to_string(), "fe80::1/128");
    }

    #[test]
    fn typos_are_errors_that_say_what_is_wrong() {
        let err = |s: &str| s.parse::<Cidr>().unwrap_err().to_string();
        assert!(err("10.0.0.1/8").contains("the network is 10.0.0.0/8"), "{}", err("10.0.0.1/8"));
        assert!(err("10.0.0.0/33").contains("at most /32"), "{}", err("10.0.0.0/33"));
        assert!(err("::/129").contains("at most /128"), "{}", err("::/129"));
        for bad in ["", "10.0.0.0/", "10.0.0.0/-1", "10.0.0.0/+8", "10.0.0/8", "host/8", "10.0.0.0/8/8", "/8"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?}");
        }
    }
}
