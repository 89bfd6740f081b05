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
                let name = name.trim_end_matches('.');
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._*".contains(&b)) {
                    return Err(HelloError::Malformed);
                }
                return Ok(Some(name.to_ascii_lowercase()));
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

    /// Properties over generated ClientHellos: the bytes come from any client.
    mod properties {
        use proptest::collection::vec;
        use proptest::prelude::*;
        use proptest::sample::Index;

        use super::*;
        use crate::test_input::split;

        fn vec8(out: &mut Vec<u8>, data: &[u8]) {
            out.push(data.len() as u8);
            out.extend_from_slice(data);
        }

        fn vec16(out: &mut Vec<u8>, data: &[u8]) {
            out.extend_from_slice(&(data.len() as u16).to_be_bytes());
            out.extend_from_slice(data);
        }

        /// A ClientHello handshake message: random session id and suites, other extensions around
        /// the server_name one (when there is a name).
        fn hello(
            session: &[u8],
            suites: &[u16],
            before: &[(u16, Vec<u8>)],
            name: Option<&str>,
            after: &[(u16, Vec<u8>)],
        ) -> Vec<u8> {
            let mut body = vec![3, 3];
            body.extend_from_slice(&[7; 32]);
            vec8(&mut body, session);
            let suites: Vec<u8> = suites.iter().flat_map(|s| s.to_be_bytes()).collect();
            vec16(&mut body, &suites);
            vec8(&mut body, &[0]);
            let mut exts = Vec::new();
            let mut push = |kind: u16, data: &[u8]| {
                exts.extend_from_slice(&kind.to_be_bytes());
                vec16(&mut exts, data);
            };
            before.iter().for_each(|(k, d)| push(*k, d));
            if let Some(name) = name {
                let mut entry = vec![NAME_TYPE_HOST];
                vec16(&mut entry, name.as_bytes());
                let mut list = Vec::new();
                vec16(&mut list, &entry);
                push(EXT_SERVER_NAME, &list);
            }
            after.iter().for_each(|(k, d)| push(*k, d));
            vec16(&mut body, &exts);
            let mut message = vec![HANDSHAKE_CLIENT_HELLO];
            message.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
            message.extend_from_slice(&body);
            message
        }

        /// The message in handshake records cut at the given places (no record is empty).
        fn records(message: &[u8], cuts: &[Index]) -> Vec<u8> {
            let mut wire = Vec::new();
            for part in split(message, cuts).into_iter().filter(|p| !p.is_empty()) {
                wire.extend_from_slice(&[CONTENT_HANDSHAKE, 3, 1]);
                wire.extend_from_slice(&(part.len() as u16).to_be_bytes());
                wire.extend_from_slice(part);
            }
            wire
        }

        fn other_extension() -> impl Strategy<Value = (u16, Vec<u8>)> {
            (1u16.., vec(any::<u8>(), 0..40))
        }

        proptest! {
            #[test]
            fn the_server_name_is_found_however_the_hello_is_cut_into_records(
                session in vec(any::<u8>(), 0..33),
                suites in vec(any::<u16>(), 1..20),
                before in vec(other_extension(), 0..4),
                name in proptest::option::of("[a-zA-Z0-9-]{1,20}(\\.[a-zA-Z0-9-]{1,20}){0,3}\\.?"),
                after in vec(other_extension(), 0..4),
                cuts in vec(any::<Index>(), 0..6),
                tail in vec(any::<u8>(), 0..10),
            ) {
                let message = hello(&session, &suites, &before, name.as_deref(), &after);
                let wire = records(&message, &cuts);
                let expected = name.map(|n| n.trim_end_matches('.').to_ascii_lowercase());
                for cut in 0..wire.len() {
                    prop_assert_eq!(parse(&wire[..cut]), Ok(Parsed::Incomplete), "cut at {}", cut);
                }
                let mut more = wire.clone();
                more.extend_from_slice(&tail);
                prop_assert_eq!(parse(&more), Ok(Parsed::Hello(expected)));
            }

            #[test]
            fn damaged_hellos_are_refused_or_read_never_panicked_over(
                message in vec(any::<u8>(), 0..300),
                flips in vec((any::<Index>(), any::<u8>()), 0..6),
                cuts in vec(any::<Index>(), 0..4),
                as_hello in any::<bool>(),
            ) {
                // Random bytes, or a real-looking hello with a few bytes changed.
                let mut message = if as_hello {
                    hello(&message[..message.len().min(32)], &[0x1301, 0x1302], &[(10, message.clone())], Some("a.test"), &[])
                } else {
                    message
                };
                if !message.is_empty() {
                    for (at, byte) in &flips {
                        let i = at.index(message.len());
                        message[i] = *byte;
                    }
                }
                let wire = records(&message, &cuts);
                let _ = parse(&wire);
                let _ = parse(&message);
            }
        }
    }
}
