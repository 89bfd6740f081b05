//! An endpoint's response head, parsed once off the connection's read buffer: status, the header
//! lines that pass through to the client (hop-by-hop ones left out), how the body is delimited
//! and whether the connection can carry another exchange. Endpoints are not trusted: any bytes get
//! an answer, never a panic.

use bytes::{Buf, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::response::Parts;
use http::{Response, StatusCode, Version};

use super::h1::ExchangeError;
use crate::http::codec::chunked::{ChunkScan, Framed};
use crate::http::codec::head::{parse_length, tokens, MAX_HEAD, MAX_HEADERS};
use crate::http::codec::headers::{is_hop_by_hop, push_header, strip_hop_by_hop, PassedHead};

/// What the request leads the response to be.
#[derive(Debug, Clone, Copy)]
pub(super) struct Expect {
    /// A HEAD request: the response has no body whatever its headers say.
    pub head_only: bool,
    /// The request asks to switch protocols: a 101 is a valid answer.
    pub upgrade: bool,
}

/// A response head parsed off the front of a read buffer.
pub(super) struct ParsedHead {
    pub parts: Parts,
    pub framing: BodyFraming,
    /// The connection may carry another exchange after this one.
    pub keep_alive: bool,
}

/// Parses the response head at the start of `rbuf`, skipping interim (1xx) answers, and takes it
/// off the buffer. `Ok(None)`: more bytes are needed. Endpoints are not trusted: any bytes get an
/// answer, never a panic.
#[inline]
pub(super) fn parse_response_head(rbuf: &mut BytesMut, expect: Expect) -> Result<Option<ParsedHead>, ExchangeError> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut headers);
        let len = match parsed.parse(rbuf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if rbuf.len() > MAX_HEAD => {
                return Err(ExchangeError::BadResponse("response head too large"))
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(ExchangeError::BadResponse("too many response header fields"))
            }
            Err(_) => return Err(ExchangeError::BadResponse("malformed response head")),
        };
        let code = parsed.code.unwrap_or(0);
        if (100..200).contains(&code) && code != 101 {
            // 100 Continue, 103 Early Hints: the final answer follows.
            rbuf.advance(len);
            if rbuf.is_empty() {
                return Ok(None);
            }
            continue;
        }
        if code == 101 && !expect.upgrade {
            return Err(ExchangeError::BadResponse("101 to a request that asked for no protocol switch"));
        }
        let status = StatusCode::from_u16(code).map_err(|_| ExchangeError::BadResponse("invalid status code"))?;
        let version = if parsed.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
        let mut meta = Meta::default();
        let base = rbuf.as_ptr() as usize;
        let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
        let count = parsed.headers.len();
        for (h, span) in parsed.headers.iter().zip(spans.iter_mut()) {
            meta.see(h)?;
            let name = h.name.as_ptr() as usize - base;
            let value = h.value.as_ptr() as usize - base;
            // Offsets fit: the head is at most MAX_HEAD (64 KiB) long.
            *span = (name as u32, h.name.len() as u32, value as u32, h.value.len() as u32);
        }
        // RFC 9112 §6.3: Transfer-Encoding wins; the length must not reach the client.
        let drop_length = meta.transfer_encoding && meta.length.is_some();
        let mut map = HeaderMap::new();
        let mut passed = PassedHead::default();
        if code != 101 && !meta.names_headers {
            // The usual case: the endpoint's headers go to the client as the lines they came
            // in, hop-by-hop ones left out. No map is built, hashed and dropped per response
            // (about 1,500 instructions, callgrind).
            passed.lines.reserve(len);
            for &(n, nl, v, vl) in &spans[..count] {
                let (n, nl, v, vl) = (n as usize, nl as usize, v as usize, vl as usize);
                let name = &rbuf[n..n + nl];
                if is_hop_by_hop(name) || (drop_length && name.eq_ignore_ascii_case(b"content-length")) {
                    continue;
                }
                push_header(&mut passed.lines, name, &rbuf[v..v + vl]);
            }
            passed.has_length = meta.length.is_some() && !drop_length;
            passed.has_date = meta.date;
            rbuf.advance(len);
        } else {
            // A 101 (the tunnel forwards its `Upgrade`), or a `Connection` that names other
            // headers (rare): into a map, stripped as a whole.
            let head = rbuf.split_to(len).freeze();
            map.reserve(count);
            for &(n, nl, v, vl) in &spans[..count] {
                let (n, nl, v, vl) = (n as usize, nl as usize, v as usize, vl as usize);
                let name = HeaderName::from_bytes(&head[n..n + nl])
                    .map_err(|_| ExchangeError::BadResponse("invalid header name"))?;
                let value = HeaderValue::from_maybe_shared(head.slice(v..v + vl))
                    .map_err(|_| ExchangeError::BadResponse("invalid header value"))?;
                map.append(name, value);
            }
            if code != 101 {
                strip_hop_by_hop(&mut map);
            }
            if drop_length {
                map.remove(header::CONTENT_LENGTH);
            }
        }
        let state = if code == 101 {
            BodyState::Switched
        } else if expect.head_only || code == 204 || code == 304 {
            BodyState::Framed(Framed::Length(0))
        } else if meta.transfer_encoding {
            if drop_length {
                meta.close = true;
            }
            match meta.chunked_last {
                true => BodyState::Framed(Framed::Chunked(ChunkScan::default())),
                false => BodyState::UntilClose,
            }
        } else {
            match meta.length {
                Some(n) => BodyState::Framed(Framed::Length(n)),
                None => BodyState::UntilClose,
            }
        };
        let keep_alive = !meta.close
            && (version == Version::HTTP_11 || meta.keep_alive)
            && !matches!(state, BodyState::UntilClose)
            && code != 101;
        let framing = BodyFraming { state, passed };
        let mut resp = Response::new(());
        *resp.status_mut() = status;
        *resp.version_mut() = version;
        *resp.headers_mut() = map;
        return Ok(Some(ParsedHead { parts: resp.into_parts().0, framing, keep_alive }));
    }
}

/// What the framing and connection headers of a response say.
#[derive(Default)]
struct Meta {
    length: Option<u64>,
    transfer_encoding: bool,
    chunked_last: bool,
    close: bool,
    keep_alive: bool,
    /// `Connection` names headers other than its own tokens (they are hop-by-hop too).
    names_headers: bool,
    date: bool,
}

impl Meta {
    fn see(&mut self, h: &httparse::Header<'_>) -> Result<(), ExchangeError> {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = parse_length(h.value).ok_or(ExchangeError::BadResponse("invalid Content-Length"))?;
            if self.length.is_some_and(|prev| prev != n) {
                return Err(ExchangeError::BadResponse("conflicting Content-Length headers"));
            }
            self.length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            self.transfer_encoding = true;
            for coding in tokens(h.value) {
                self.chunked_last = coding.eq_ignore_ascii_case(b"chunked");
            }
        } else if h.name.eq_ignore_ascii_case("date") {
            self.date = true;
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in tokens(h.value) {
                let close = token.eq_ignore_ascii_case(b"close");
                let keep_alive = token.eq_ignore_ascii_case(b"keep-alive");
                self.close |= close;
                self.keep_alive |= keep_alive;
                self.names_headers |= !close && !keep_alive && !is_hop_by_hop(token);
            }
        }
        Ok(())
    }
}

/// How the response body is delimited, and how far it has been read.
#[derive(Debug)]
pub(super) enum BodyState {
    /// Delimited by a length or the chunked coding.
    Framed(Framed),
    /// No length: the body ends when the endpoint closes (the connection cannot be reused).
    UntilClose,
    /// A 101: no body, and the connection now carries another protocol (see `into_upgraded`).
    Switched,
    Done,
}

/// How a response's body is delimited, and the header lines that pass through (opaque to
/// callers; see [`ResponseBody::new`]).
#[derive(Debug)]
pub struct BodyFraming {
    pub(super) state: BodyState,
    pub(super) passed: PassedHead,
}

#[cfg(test)]
#[path = "head_properties.rs"]
mod properties;
