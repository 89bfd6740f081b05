//! Reading the PROXY protocol header a listener with `accept_proxy_protocol` expects first on
//! every connection (see the parent module), checked byte by byte as hostile input.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::V2_SIGNATURE;

/// How long a connection has to send its whole header, when its listener expects one.
pub const ACCEPT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest header taken: v1 lines are at most 107 bytes; a v2 header is 16 bytes plus its
/// addresses and TLVs, which balancers keep to a few hundred bytes. Longer is refused, not buffered.
const MAX_HEADER: usize = 16 + 1024;
const V1_MAX: usize = 107;

/// What an accepted header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// The real client.
    pub client: SocketAddr,
    /// Where the client connected to (the balancer in front's address).
    pub local: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("the connection does not start with a PROXY protocol header")]
    NotProxy,
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
    #[error("no complete PROXY protocol header within {ACCEPT_TIMEOUT:?}")]
    Timeout,
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] io::Error),
}

/// Reads the header a connection must start with: `Some` origin it announces, or `None` when it
/// announces none (v2 `LOCAL`, a balancer's own health check; v1 `UNKNOWN`; a non-IP family):
/// then the connection's own addresses stand.
pub async fn accept(stream: &mut TcpStream) -> Result<Option<Origin>, AcceptError> {
    tokio::time::timeout(ACCEPT_TIMEOUT, read_header(stream)).await.map_err(|_| AcceptError::Timeout)?
}

async fn read_header(stream: &mut TcpStream) -> Result<Option<Origin>, AcceptError> {
    let mut buf = vec![0u8; MAX_HEADER];
    // Peeked until the header is whole; a header split over segments is rare (balancers send it
    // in one write), so the wait for the rest backs off instead of spinning on a readable socket.
    let mut backoff = Duration::from_millis(1);
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        if let Parsed::Done { len, origin } = parse(&buf[..n])? {
            stream.read_exact(&mut buf[..len]).await?;
            return Ok(origin);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(64));
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    /// A valid start, not whole yet.
    Incomplete,
    /// The header is `len` bytes.
    Done { len: usize, origin: Option<Origin> },
}

fn parse(buf: &[u8]) -> Result<Parsed, AcceptError> {
    let starts = |prefix: &[u8]| buf[..buf.len().min(prefix.len())] == prefix[..buf.len().min(prefix.len())];
    if starts(&V2_SIGNATURE) {
        parse_v2(buf)
    } else if starts(b"PROXY ") {
        parse_v1(buf)
    } else {
        Err(AcceptError::NotProxy)
    }
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, AcceptError> {
    let Some(end) = buf.windows(2).take(V1_MAX - 1).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err(AcceptError::Malformed("v1 line longer than 107 bytes"))
        } else {
            Ok(Parsed::Incomplete)
        };
    };
    let line = std::str::from_utf8(&buf[..end]).map_err(|_| AcceptError::Malformed("v1 line is not text"))?;
    let fields: Vec<&str> = line.split(' ').collect();
    let origin = match fields[..] {
        ["PROXY", "UNKNOWN", ..] => None,
        ["PROXY", family @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let ip = |s: &str| -> Result<IpAddr, AcceptError> {
                let ip = match family {
                    "TCP4" => s.parse::<Ipv4Addr>().map(IpAddr::V4),
                    _ => s.parse::<Ipv6Addr>().map(IpAddr::V6),
                };
                ip.map_err(|_| AcceptError::Malformed("v1 address does not match its family"))
            };
            let port = |s: &str| -> Result<u16, AcceptError> {
                let digits = !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit());
                digits.then(|| s.parse().ok()).flatten().ok_or(AcceptError::Malformed("v1 port is not 0-65535"))
            };
            Some(Origin {
                client: SocketAddr::new(ip(src)?, port(sport)?),
                local: SocketAddr::new(ip(dst)?, port(dport)?),
            })
        }
        _ => return Err(AcceptError::Malformed("v1 line is not PROXY TCP4|TCP6|UNKNOWN with four fields")),
    };
    Ok(Parsed::Done { len: end + 2, origin })
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, AcceptError> {
    if buf.len() < 16 {
        return Ok(Parsed::Incomplete);
    }
    let (version_command, family) = (buf[12], buf[13]);
    let len = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if version_command >> 4 != 2 {
        return Err(AcceptError::Malformed("v2 version is not 2"));
    }
    let local_command = match version_command & 0x0f {
        0 => true,
        1 => false,
        _ => return Err(AcceptError::Malformed("v2 command is neither LOCAL nor PROXY")),
    };
    if len > MAX_HEADER {
        return Err(AcceptError::Malformed("v2 header longer than 1040 bytes"));
    }
    if buf.len() < len {
        return Ok(Parsed::Incomplete);
    }
    let body = &buf[16..len];
    // Stream or datagram over IPv4 or IPv6 carry addresses; UNSPEC and unix sockets do not.
    let origin = match (local_command, family >> 4) {
        (true, _) => None,
        (false, 1) => {
            let a: &[u8; 12] = body
                .get(..12)
                .and_then(|b| b.try_into().ok())
                .ok_or(AcceptError::Malformed("v2 IPv4 addresses cut short"))?;
            let ip = |i: usize| IpAddr::V4(Ipv4Addr::new(a[i], a[i + 1], a[i + 2], a[i + 3]));
            let port = |i: usize| u16::from_be_bytes([a[i], a[i + 1]]);
            Some(Origin { client: SocketAddr::new(ip(0), port(8)), local: SocketAddr::new(ip(4), port(10)) })
        }
        (false, 2) => {
            let a: &[u8; 36] = body
                .get(..36)
                .and_then(|b| b.try_into().ok())
                .ok_or(AcceptError::Malformed("v2 IPv6 addresses cut short"))?;
            let ip = |i: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&a[i..i + 16]);
                IpAddr::V6(Ipv6Addr::from(octets))
            };
            let port = |i: usize| u16::from_be_bytes([a[i], a[i + 1]]);
            Some(Origin { client: SocketAddr::new(ip(0), port(32)), local: SocketAddr::new(ip(16), port(34)) })
        }
        (false, _) => None,
    };
    Ok(Parsed::Done { len, origin })
}

#[cfg(test)]
mod tests {
    use super::super::header;
    use super::*;
    use sluice_shared::model::ProxyProtocol;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn origin(client: &str, local: &str) -> Option<Origin> {
        Some(Origin { client: addr(client), local: addr(local) })
    }

    #[test]
    fn what_we_send_is_what_we_accept() {
        for (client, local) in [("198.51.100.7:40000", "10.0.0.1:5432"), ("[2001:db8::7]:1", "[2001:db8::1]:65535")] {
            for (version, authority) in
                [(ProxyProtocol::V1, None), (ProxyProtocol::V2, None), (ProxyProtocol::V2, Some("db.example"))]
            {
                let mut h = header(version, addr(client), addr(local), authority);
                let len = h.len();
                h.extend_from_slice(b"GET / HTTP/1.1\r\n");
                assert_eq!(parse(&h).unwrap(), Parsed::Done { len, origin: origin(client, local) }, "{version:?}");
                // Every strict prefix of the header is a valid start, not yet whole.
                for cut in 0..len {
                    assert_eq!(parse(&h[..cut]).unwrap(), Parsed::Incomplete, "{version:?} cut at {cut}");
                }
            }
        }
    }

    #[test]
    fn headers_without_an_origin_leave_the_connections_own() {
        assert_eq!(parse(b"PROXY UNKNOWN\r\n").unwrap(), Parsed::Done { len: 15, origin: None });
        let unknown_with_fields = b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\nrest";
        assert_eq!(parse(unknown_with_fields).unwrap(), Parsed::Done { len: 35, origin: None });
        // v2 LOCAL (a balancer's health check), with and without addresses; v2 UNSPEC and unix.
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
        assert_eq!(parse(&local).unwrap(), Parsed::Done { len: 16, origin: None });
        let mut local = header(ProxyProtocol::V2, addr("1.2.3.4:5"), addr("5.6.7.8:9"), None);
        local[12] = 0x20;
        assert_eq!(parse(&local).unwrap(), Parsed::Done { len: 28, origin: None });
        for family in [0x00, 0x31, 0x32] {
            let mut h = V2_SIGNATURE.to_vec();
            h.extend_from_slice(&[0x21, family, 0x00, 0x04, 1, 2, 3, 4]);
            assert_eq!(parse(&h).unwrap(), Parsed::Done { len: 20, origin: None });
        }
    }

    #[test]
    fn v2_tlvs_are_skipped_and_udp_addresses_taken() {
        let mut h = header(ProxyProtocol::V2, addr("1.2.3.4:5"), addr("5.6.7.8:9"), None);
        h[13] = 0x12;
        h[15] = 12 + 7;
        h.extend_from_slice(&[0x04, 0x00, 0x04, b'n', b'o', b'o', b'p']);
        assert_eq!(parse(&h).unwrap(), Parsed::Done { len: 35, origin: origin("1.2.3.4:5", "5.6.7.8:9") });
    }

    #[test]
    fn anything_else_is_refused() {
        let malformed = |b: &[u8]| matches!(parse(b), Err(AcceptError::Malformed(_)));
        assert!(matches!(parse(b"GET / HTTP/1.1\r\n"), Err(AcceptError::NotProxy)));
        assert!(matches!(parse(b"\x16\x03\x01"), Err(AcceptError::NotProxy)));
        assert!(matches!(parse(b"PROXX"), Err(AcceptError::NotProxy)));
        for bad in [
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"[..],
            b"PROXY TCP4 ::1 ::1 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.\xff 5.6.7.8 1 2\r\n",
        ] {
            assert!(malformed(bad), "{}", String::from_utf8_lossy(bad));
        }
        // No CRLF within 107 bytes.
        let mut long = b"PROXY TCP6 ".to_vec();
        long.resize(200, b'1');
        assert!(malformed(&long));
        assert_eq!(parse(&long[..106]).unwrap(), Parsed::Incomplete);
        let v2 = |version_command: u8, family: u8, len: u16| {
            let mut h = V2_SIGNATURE.to_vec();
            h.extend_from_slice(&[version_command, family]);
            h.extend_from_slice(&len.to_be_bytes());
            h.resize(16 + usize::from(len).min(64), 0);
            h
        };
        assert!(malformed(&v2(0x11, 0x11, 12)), "version 1 in a v2 header");
        assert!(malformed(&v2(0x22, 0x11, 12)), "command 2");
        assert!(malformed(&v2(0x21, 0x11, 8)), "IPv4 addresses need 12 bytes");
        assert!(malformed(&v2(0x21, 0x21, 12)), "IPv6 addresses need 36 bytes");
        assert!(malformed(&v2(0x21, 0x11, 1025)), "longer than we buffer");
    }

    /// Properties over generated input: the header comes from whatever connects.
    mod properties {
        use proptest::collection::vec;
        use proptest::prelude::*;
        use proptest::sample::select;

        use super::super::super::{header, same_family};
        use super::*;
        use sluice_shared::model::ProxyProtocol;

        proptest! {
            #[test]
            fn every_header_we_send_is_accepted_as_sent(
                client in any::<SocketAddr>(),
                local in any::<SocketAddr>(),
                v2 in any::<bool>(),
                authority in proptest::option::of("[a-z0-9.-]{0,300}"),
                tail in vec(any::<u8>(), 0..20),
            ) {
                let version = if v2 { ProxyProtocol::V2 } else { ProxyProtocol::V1 };
                let mut h = header(version, client, local, authority.as_deref());
                let len = h.len();
                let (c, l) = same_family(client, local);
                let origin = Some(Origin {
                    client: SocketAddr::new(c.ip(), c.port()),
                    local: SocketAddr::new(l.ip(), l.port()),
                });
                for cut in 0..len {
                    prop_assert_eq!(parse(&h[..cut]).unwrap(), Parsed::Incomplete, "cut at {}", cut);
                }
                h.extend_from_slice(&tail);
                prop_assert_eq!(parse(&h).unwrap(), Parsed::Done { len, origin });
            }

            #[test]
            fn any_start_is_answered_without_panic_and_what_follows_is_not_read(
                start in select(vec![&b"PROXY "[..], b"PROXY TCP4 ", b"PROXY TCP6 ", b"PROXY UNKNOWN", &V2_SIGNATURE[..], b""]),
                rest in vec(prop_oneof![4 => select(b"0123456789.: abcdef\r\n".to_vec()), 1 => any::<u8>()], 0..140),
                tail in vec(any::<u8>(), 0..20),
            ) {
                let mut buf = start.to_vec();
                buf.extend_from_slice(&rest);
                if let Ok(Parsed::Done { len, origin }) = parse(&buf) {
                    prop_assert!(len <= buf.len() && len <= MAX_HEADER);
                    buf.extend_from_slice(&tail);
                    prop_assert_eq!(parse(&buf).unwrap(), Parsed::Done { len, origin });
                }
            }
        }
    }

    /// A real socket: a header written in two pieces with a pause, then the client's bytes. The
    /// header is consumed exactly: the stream then reads the client's bytes, untouched.
    #[tokio::test]
    async fn a_header_in_pieces_is_waited_for_and_consumed_exactly() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let to = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let mut c = TcpStream::connect(to).await.unwrap();
            let h = header(ProxyProtocol::V2, addr("203.0.113.9:4444"), addr("192.0.2.1:443"), None);
            c.write_all(&h[..10]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(30)).await;
            c.write_all(&h[10..]).await.unwrap();
            c.write_all(b"hello").await.unwrap();
            c
        });
        let (mut s, _) = listener.accept().await.unwrap();
        assert_eq!(accept(&mut s).await.unwrap(), origin("203.0.113.9:4444", "192.0.2.1:443"));
        let mut rest = [0u8; 5];
        s.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"hello");
        drop(client.await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_or_unfinished_header_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let to = listener.local_addr().unwrap();
        for sent in [&b""[..], b"PROXY TCP4 1.2.3.4"] {
            let mut c = TcpStream::connect(to).await.unwrap();
            tokio::io::AsyncWriteExt::write_all(&mut c, sent).await.unwrap();
            let (mut s, _) = listener.accept().await.unwrap();
            let started = tokio::time::Instant::now();
            assert!(matches!(accept(&mut s).await, Err(AcceptError::Timeout)));
            assert_eq!(started.elapsed().as_secs(), ACCEPT_TIMEOUT.as_secs());
        }
    }
}
