//! The PROXY protocol (HAProxy's spec, "The PROXY protocol", versions 1 and 2), both ways:
//!
//! - **Sent** ([`header`]): a tcp or tls listener with `proxy_protocol` writes it first on every
//!   upstream connection. An L4 proxy hides the client's address from the endpoint; this hands it
//!   over before the first byte of the client's stream. Source = the client, destination = the
//!   node's local address (the listener's, or the real one when it binds a wildcard), or both as
//!   an incoming header announced them. IPv4 clients of an IPv6 socket (`::ffff:a.b.c.d`) are
//!   sent as IPv4, as HAProxy does. A v2 header from a tls passthrough listener also carries the
//!   ClientHello's server name (`PP2_TYPE_AUTHORITY`, as HAProxy's `proxy-v2-options authority`),
//!   so the endpoint knows the name the client asked for without parsing the handshake itself.
//! - **Accepted** ([`accept`]): a listener with `accept_proxy_protocol` sits behind another L4
//!   balancer, and every connection must start with a v1 or v2 header (either, detected). Its
//!   source address then stands for the client everywhere: `X-Forwarded-For`, hashing on the
//!   source IP, the access log, the header sent on. A connection without a valid, complete header
//!   within [`ACCEPT_TIMEOUT`] is closed before anything else happens. The header is consumed to
//!   its last byte and no further (it is peeked, then read exactly), so what follows is the
//!   client's stream, untouched.

use std::net::{IpAddr, SocketAddr};

use sluice_shared::model::ProxyProtocol;

mod accept;

pub use accept::accept;

/// The 12 bytes every v2 header starts with.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Version 2, command PROXY.
const V2_PROXY: u8 = 0x21;
/// Address family and transport: TCP over IPv4, TCP over IPv6.
const V2_TCP4: u8 = 0x11;
const V2_TCP6: u8 = 0x21;
/// The TLV holding the host name the client asked for (UTF-8, no terminator).
const PP2_TYPE_AUTHORITY: u8 = 0x02;

/// The header announcing a connection from `client` to `local`; v2 adds `authority` (a TLS
/// server name) when there is one. v1 has no room for it.
pub fn header(version: ProxyProtocol, client: SocketAddr, local: SocketAddr, authority: Option<&str>) -> Vec<u8> {
    let (client, local) = same_family(client, local);
    match version {
        ProxyProtocol::V1 => v1(client, local),
        // A DNS name is at most 253 bytes: anything longer is no server name to hand on.
        ProxyProtocol::V2 => v2(client, local, authority.filter(|a| !a.is_empty() && a.len() <= 255)),
    }
}

fn v1(client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let family = if client.is_ipv4() { "TCP4" } else { "TCP6" };
    // At most 107 bytes (the spec's bound): "PROXY TCP6 " + 2 x 39 + 2 x 5 + spaces + CRLF.
    format!("PROXY {family} {} {} {} {}\r\n", client.ip(), local.ip(), client.port(), local.port()).into_bytes()
}

fn v2(client: SocketAddr, local: SocketAddr, authority: Option<&str>) -> Vec<u8> {
    let tlv = authority.map(str::as_bytes);
    let tlv_len = tlv.map_or(0, |a| 3 + a.len());
    let mut h = Vec::with_capacity(16 + 36 + tlv_len);
    h.extend_from_slice(&V2_SIGNATURE);
    h.push(V2_PROXY);
    match (client.ip(), local.ip()) {
        (IpAddr::V4(c), IpAddr::V4(l)) => {
            h.push(V2_TCP4);
            h.extend_from_slice(&((12 + tlv_len) as u16).to_be_bytes());
            h.extend_from_slice(&c.octets());
            h.extend_from_slice(&l.octets());
        }
        (c, l) => {
            h.push(V2_TCP6);
            h.extend_from_slice(&((36 + tlv_len) as u16).to_be_bytes());
            h.extend_from_slice(&v6(c).octets());
            h.extend_from_slice(&v6(l).octets());
        }
    }
    h.extend_from_slice(&client.port().to_be_bytes());
    h.extend_from_slice(&local.port().to_be_bytes());
    if let Some(a) = tlv {
        h.push(PP2_TYPE_AUTHORITY);
        h.extend_from_slice(&(a.len() as u16).to_be_bytes());
        h.extend_from_slice(a);
    }
    h
}

/// Both addresses in one family: IPv4 when both are IPv4 (mapped or not), else IPv6 (a lone
/// IPv4 address mapped into it; one socket never mixes them, this only keeps the header valid).
fn same_family(client: SocketAddr, local: SocketAddr) -> (SocketAddr, SocketAddr) {
    let unmap = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let (c, l) = (unmap(client), unmap(local));
    if c.is_ipv4() == l.is_ipv4() {
        (c, l)
    } else {
        (SocketAddr::new(IpAddr::V6(v6(c.ip())), c.port()), SocketAddr::new(IpAddr::V6(v6(l.ip())), l.port()))
    }
}

fn v6(ip: IpAddr) -> std::net::Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_is_the_text_line_of_the_spec() {
        let h = header(ProxyProtocol::V1, addr("192.168.0.1:56324"), addr("192.168.0.11:443"), None);
        assert_eq!(h, b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n");
        let h = header(ProxyProtocol::V1, addr("[2001:db8::1]:56324"), addr("[::1]:443"), None);
        assert_eq!(h, b"PROXY TCP6 2001:db8::1 ::1 56324 443\r\n");
    }

    #[test]
    fn v1_stays_within_the_specs_107_bytes() {
        let long = addr("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe]:65535");
        let h = header(ProxyProtocol::V1, long, long, None);
        assert_eq!(h.len(), 104);
        assert!(h.len() <= 107);
    }

    #[test]
    fn v2_ipv4_is_28_bytes_in_network_order() {
        let h = header(ProxyProtocol::V2, addr("10.0.0.1:1234"), addr("10.0.0.2:5432"), None);
        let mut want = b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a".to_vec();
        want.extend_from_slice(&[0x21, 0x11, 0x00, 0x0c]);
        want.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
        want.extend_from_slice(&[0x04, 0xd2, 0x15, 0x38]);
        assert_eq!(h, want);
    }

    #[test]
    fn v2_ipv6_is_52_bytes() {
        let h = header(ProxyProtocol::V2, addr("[2001:db8::1]:1"), addr("[::1]:2"), None);
        assert_eq!(h.len(), 16 + 36);
        assert_eq!(&h[12..16], &[0x21, 0x21, 0x00, 0x24]);
        assert_eq!(&h[16..32], &"2001:db8::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
        assert_eq!(&h[32..48], &std::net::Ipv6Addr::LOCALHOST.octets());
        assert_eq!(&h[48..], &[0, 1, 0, 2]);
    }

    #[test]
    fn v2_carries_the_server_name_as_an_authority_tlv_and_v1_ignores_it() {
        let (c, l) = (addr("10.0.0.1:1234"), addr("10.0.0.2:443"));
        let h = header(ProxyProtocol::V2, c, l, Some("db.example"));
        let bare = header(ProxyProtocol::V2, c, l, None);
        // The length counts the addresses and the TLV: 12 + 3 + 10.
        assert_eq!(&h[14..16], &[0x00, 25]);
        assert_eq!(&h[16..28], &bare[16..28]);
        assert_eq!(&h[28..], b"\x02\x00\x0adb.example");
        // No name, an empty one or one longer than a DNS name: no TLV.
        assert_eq!(header(ProxyProtocol::V2, c, l, Some("")), bare);
        assert_eq!(header(ProxyProtocol::V2, c, l, Some(&"a".repeat(256))), bare);
        assert_eq!(header(ProxyProtocol::V1, c, l, Some("db.example")), header(ProxyProtocol::V1, c, l, None));
        // IPv6: 36 + 3 + 10.
        let h = header(ProxyProtocol::V2, addr("[2001:db8::1]:1"), addr("[::1]:2"), Some("db.example"));
        assert_eq!(&h[14..16], &[0x00, 49]);
        assert_eq!(h.len(), 16 + 49);
    }

    #[test]
    fn ipv4_clients_of_an_ipv6_socket_are_sent_as_ipv4() {
        let h = header(ProxyProtocol::V1, addr("[::ffff:127.0.0.5]:4000"), addr("[::ffff:127.0.0.1]:5432"), None);
        assert_eq!(h, b"PROXY TCP4 127.0.0.5 127.0.0.1 4000 5432\r\n");
        let h = header(ProxyProtocol::V2, addr("[::ffff:127.0.0.5]:4000"), addr("[::ffff:127.0.0.1]:5432"), None);
        assert_eq!(h[13], V2_TCP4);
    }

    #[test]
    fn mixed_families_become_ipv6_rather_than_an_invalid_header() {
        let h = header(ProxyProtocol::V1, addr("127.0.0.5:4000"), addr("[::1]:5432"), None);
        assert_eq!(h, b"PROXY TCP6 ::ffff:127.0.0.5 ::1 4000 5432\r\n");
        let h = header(ProxyProtocol::V2, addr("127.0.0.5:4000"), addr("[::1]:5432"), None);
        assert_eq!(h[13], V2_TCP6);
    }
}
