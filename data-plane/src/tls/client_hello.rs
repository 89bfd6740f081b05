//! Reads a TLS ClientHello off a connection without answering it, to learn the SNI server name.
//! The bytes read are kept so the connection can be replayed to a backend as if untouched.
//!
//! Only what SNI needs is parsed (RFC 8446 §4.1.2, RFC 6066 §3); the message may span records.

use tokio::io::{AsyncRead, AsyncReadExt};

/// The most bytes read while looking for the end of the ClientHello.
pub const MAX_CLIENT_HELLO: usize = 64 * 1024;

const RECORD_HEADER: usize = 5;
const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;
const NAME_TYPE_HOST: u8 = 0;

#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// The buffer ends before the ClientHello does.
    Incomplete,
    /// A whole ClientHello; `None`: it names no server.
    Hello(Option<String>),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HelloError {
    #[error("not a TLS handshake")]
    NotTls,
    #[error("malformed ClientHello")]
    Malformed,
    #[error("ClientHello larger than {MAX_CLIENT_HELLO} bytes")]
    TooLarge,
    #[error("connection closed before the ClientHello was complete")]
    Eof,
    #[error("read failed: {0}")]
    Io(String),
}

/// Reads from `io` into `buf` until a whole ClientHello is there; returns its server name.
/// The caller bounds the time it may take.
pub async fn read<R: AsyncRead + Unpin>(io: &mut R, buf: &mut Vec<u8>) -> Result<Option<String>, HelloError> {
    loop {
        if let Parsed::Hello(name) = parse(buf)? {
            return Ok(name);
        }
        if buf.len() >= MAX_CLIENT_HELLO {
            return Err(HelloError::TooLarge);
        }
        buf.reserve(4096.min(MAX_CLIENT_HELLO - buf.len()));
        let n = io.read_buf(buf).await.map_err(|e| HelloError::Io(e.to_string()))?;
        if n == 0 {
            return Err(HelloError::Eof);
        }
    }
}

/// Parses the ClientHello at the start of `data` (raw records, as read off the wire).
pub fn parse(data: &[u8]) -> Result<Parsed, HelloError> {
    // Reassemble the handshake message from the handshake records seen so far.
    let mut message = Vec::new();
    let mut rest = data;
    loop {
        if rest.len() < RECORD_HEADER {
            if !rest.is_empty() && rest[0] != CONTENT_HANDSHAKE {
                return Err(HelloError::NotTls);
            }
            return Ok(Parsed::Incomplete);
        }
        if rest[0] != CONTENT_HANDSHAKE || rest[1] != 3 {
            return Err(HelloError::NotTls);
        }
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if len == 0 || len > 16384 + 2048 {
            return Err(HelloError::Malformed);
        }
        let Some(fragment) = rest.get(RECORD_HEADER..RECORD_HEADER + len) else { return Ok(Parsed::Incomplete) };
        message.extend_from_slice(fragment);
        rest = &rest[RECORD_HEADER + len..];
        if message.len() >= 4 {
            if message[0] != HANDSHAKE_CLIENT_HELLO {
                return Err(HelloError::NotTls);
            }
            let body_len = (usize::from(message[1]) << 16) | (usize::from(message[2]) << 8) | usize::from(message[3]);
            if body_len > MAX_CLIENT_HELLO {
                return Err(HelloError::TooLarge);
            }
            if message.len() >= 4 + body_len {
                return server_name(&message[4..4 + body_len]).map(Parsed::Hello);
            }
        }
    }
}

/// A cursor over a byte slice whose reads fail (as `Malformed`) past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], HelloError> {
        if self.0.len() < n {
            return Err(HelloError::Malformed);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, HelloError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, HelloError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn vec8(&mut self) -> Result<&'a [u8], HelloError> {
        let n = self.u8()?;
        self.take(n.into())
    }

    fn vec16(&mut self) -> Result<&'a [u8], HelloError> {
        let n = self.u16()?;
        self.take(n.into())
    }
}

/// The host name of the server_name extension of a ClientHello body, lower-cased, no trailing dot.
fn server_name(body: &[u8]) -> Result<Option<String>, HelloError> {
    let mut r = Reader(body);
    r.take(2 + 32)?; // legacy_version, random
    r.vec8()?; // legacy_session_id
    r.vec16()?; // cipher_suites
    r.vec8()?; // legacy_compression_methods
    if r.0.is_empty() {
        return Ok(None); // no extensions at all (old clients)
    }
    let mut exts = Reader(r.vec16()?);
    while !exts.0.is_empty() {
        let kind = exts.u16()?;
        let data = exts.vec16()?;
        if kind != EXT_SERVER_NAME {
            continue;
        }
        let mut list = Reader(Reader(data).vec16()?);
        while !list.0.is_empty() {
            let name_type = list.u8()?;
            let name = list.vec16()?;
            if name_type == NAME_TYPE_HOST {
                let name = std::str::from_utf8(name).map_err(|_| HelloError::Malformed)?;
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._*".contains(&b)) {
                    return Err(HelloError::Malformed);
                }
                return Ok(Some(name.trim_end_matches('.').to_ascii_lowercase()));
            }
        }
        return Ok(None);
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// The first flight of a real rustls client.
    fn client_hello(server_name: &str) -> Vec<u8> {
        let roots = rustls::RootCertStore::empty();
        let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(server_name.to_string()).unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn finds_the_server_name_of_a_real_client_hello() {
        let hello = client_hello("API.Example.com");
        assert_eq!(parse(&hello), Ok(Parsed::Hello(Some("api.example.com".into()))));
        // An IP address is not sent as SNI.
        assert_eq!(parse(&client_hello("127.0.0.1")), Ok(Parsed::Hello(None)));
    }

    #[test]
    fn every_prefix_is_incomplete_and_split_records_reassemble() {
        let hello = client_hello("a.test");
        for cut in 0..hello.len() {
            assert_eq!(parse(&hello[..cut]), Ok(Parsed::Incomplete), "cut at {cut}");
        }
        // The same handshake message split over two records.
        let msg = &hello[RECORD_HEADER..];
        let (a, b) = msg.split_at(msg.len() / 2);
        let mut split = Vec::new();
        for part in [a, b] {
            split.extend_from_slice(&[CONTENT_HANDSHAKE, 3, 1]);
            split.extend_from_slice(&(part.len() as u16).to_be_bytes());
            split.extend_from_slice(part);
        }
        assert_eq!(parse(&split), Ok(Parsed::Hello(Some("a.test".into()))));
    }

    #[test]
    fn refuses_what_is_not_a_client_hello() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(HelloError::NotTls));
        assert_eq!(parse(b"G"), Err(HelloError::NotTls));
        assert_eq!(parse(&[22, 3, 1, 0, 4, 2, 0, 0, 0]), Err(HelloError::NotTls)); // a ServerHello
        assert_eq!(parse(&[22, 3, 1, 0, 5, 1, 0, 0, 1, 3]), Err(HelloError::Malformed));
        let mut hello = client_hello("a.test");
        let n = hello.len();
        hello[n - 1] ^= 0xff; // damage the tail: still parses or errors, never panics
        let _ = parse(&hello);
    }

    #[tokio::test]
    async fn read_stops_at_the_end_of_the_hello_and_keeps_the_bytes() {
        let hello = client_hello("b.test");
        let mut wire = hello.clone();
        wire.extend_from_slice(b"later");
        let mut buf = Vec::new();
        let mut io = &wire[..];
        assert_eq!(read(&mut io, &mut buf).await, Ok(Some("b.test".into())));
        assert!(wire.starts_with(&buf) && buf.len() >= hello.len());
        let mut buf = Vec::new();
        let mut short = &hello[..10];
        assert_eq!(read(&mut short, &mut buf).await, Err(HelloError::Eof));
    }
}
