//! Message bodies on the wire (RFC 9112 §6, §7.1), both directions: [`Framed`] takes a body
//! delimited by a length or by the chunked coding out of a read buffer (the server's request
//! bodies, the upstream client's responses), [`push_chunk`] writes the chunked coding.

use bytes::{Buf, Bytes, BytesMut};
use http_body::SizeHint;

/// A body delimited by its length or by the chunked coding, as far as it has been taken.
#[derive(Debug)]
pub enum Framed {
    /// Bytes left.
    Length(u64),
    Chunked(ChunkScan),
}

/// What [`Framed::take`] found at the start of a (non-empty) read buffer.
#[derive(Debug)]
pub enum Taken {
    /// Body bytes; the body may have ended with them (see [`Framed::ended`]).
    Data(Bytes),
    /// The buffer held chunk framing only, now used up: more bytes are needed.
    More,
    /// The body ended here (last chunk and trailers used up); what follows stays in the buffer.
    End,
    /// The chunked framing is broken.
    Bad,
}

impl Framed {
    /// Takes the next piece of the body off the front of `buf`, leaving what follows the body.
    pub fn take(&mut self, buf: &mut BytesMut) -> Taken {
        match self {
            Framed::Length(left) => {
                let n = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                *left -= n as u64;
                Taken::Data(buf.split_to(n).freeze())
            }
            Framed::Chunked(scan) => match scan.decode(buf) {
                Decoded::Data { skip, len } => {
                    buf.advance(skip);
                    Taken::Data(buf.split_to(len).freeze())
                }
                Decoded::More => {
                    buf.clear();
                    Taken::More
                }
                Decoded::End(k) => {
                    buf.advance(k);
                    Taken::End
                }
                Decoded::Bad(_) => Taken::Bad,
            },
        }
    }

    /// Whether a body delimited by its length has all its bytes.
    pub fn ended(&self) -> bool {
        matches!(self, Framed::Length(0))
    }

    pub fn size_hint(&self) -> SizeHint {
        match self {
            Framed::Length(n) => SizeHint::with_exact(*n),
            Framed::Chunked(_) => SizeHint::default(),
        }
    }
}

/// The chunked coding's last chunk, with no trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Appends `data` as one chunk (hex size line, data, CRLF).
pub fn push_chunk(out: &mut Vec<u8>, data: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut n = data.len();
    loop {
        i -= 1;
        digits[i] = HEX[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The most chunk-extension bytes one body may carry (hyper's limit). Extensions are dropped,
/// so without a bound a peer could keep the proxy reading forever while forwarding nothing.
pub const MAX_EXTENSIONS: u16 = 16 * 1024;
/// RFC 9110 §5.6.2 `tchar`: what a field name is made of.
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The most bytes of a size line before its extensions: hex digits (leading zeros included) and
/// the blanks after them.
pub const MAX_SIZE_LINE: u16 = 64;
/// The most bytes of a trailer section (trailers are rare and short; half of what a head may be).
pub const MAX_TRAILERS: u16 = 32 * 1024;

/// Follows a chunked body, a byte at a time or a slice at a time, with the same grammar as hyper's
/// decoder and bounds on the framing that carries no data.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChunkScan {
    state: ChunkState,
    size: u64,
    /// Extension bytes so far in the body.
    extensions: u16,
    /// Bytes of the current size line (without extensions), or of the trailer section.
    line: u16,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Start,
    Size,
    SizeLws,
    Extension,
    SizeLf,
    Body,
    BodyCr,
    BodyLf,
    /// A trailer field's name (token bytes up to `:`).
    TrailerName,
    /// A trailer field's value (visible bytes, blanks) up to CR.
    Trailer,
    TrailerLf,
    EndCr,
    EndLf,
}

/// What [`ChunkScan::scan`] found in the bytes it was given.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scanned {
    /// All bytes belong to the body, which goes on.
    More,
    /// The body ends after this many bytes.
    End(usize),
    /// The byte at this index breaks the chunked framing.
    Bad(usize),
}

/// What [`ChunkScan::decode`] found at the start of the bytes it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded {
    /// `data[skip..skip + len]` is chunk data; the first `skip + len` bytes are used up.
    Data { skip: usize, len: usize },
    /// All bytes were framing (sizes, extensions, line ends), used up; more are needed.
    More,
    /// The body (with its trailers, which are dropped) ends after this many bytes.
    End(usize),
    /// The byte at this index breaks the chunked framing.
    Bad(usize),
}

impl ChunkScan {
    /// Follows `data` to the end of the body, if it is in there (tests of the grammar).
    #[cfg(test)]
    pub fn scan(&mut self, data: &[u8]) -> Scanned {
        let mut i = 0;
        while i < data.len() {
            match self.decode(&data[i..]) {
                Decoded::Data { skip, len } => i += skip + len,
                Decoded::More => return Scanned::More,
                Decoded::End(k) => return Scanned::End(i + k),
                Decoded::Bad(k) => return Scanned::Bad(i + k),
            }
        }
        Scanned::More
    }

    /// Reads framing from the start of `data` up to the first run of chunk data, the end of the
    /// body, or the end of `data`.
    pub fn decode(&mut self, data: &[u8]) -> Decoded {
        use ChunkState::*;
        let mut i = 0;
        while i < data.len() {
            if self.state == Body {
                let len = usize::try_from(self.size).unwrap_or(usize::MAX).min(data.len() - i);
                self.size -= len as u64;
                if self.size == 0 {
                    self.state = BodyCr;
                }
                return Decoded::Data { skip: i, len };
            }
            let b = data[i];
            if !self.count(b) {
                return Decoded::Bad(i);
            }
            let next = match (self.state, b) {
                (Start | Size, b) if b.is_ascii_hexdigit() => match self.push_digit(b) {
                    Some(()) => Size,
                    None => return Decoded::Bad(i),
                },
                (Size | SizeLws, b'\t' | b' ') => SizeLws,
                (Size | SizeLws, b';') => Extension,
                (Size | SizeLws | Extension, b'\r') => SizeLf,
                (Extension, b'\n') => return Decoded::Bad(i),
                (Extension, _) => Extension,
                (SizeLf, b'\n') if self.size == 0 => EndCr,
                (SizeLf, b'\n') => Body,
                (BodyCr, b'\r') => BodyLf,
                (BodyLf, b'\n') => Start,
                (TrailerName, b':') => Trailer,
                (TrailerName, b) if is_token(b) => TrailerName,
                (Trailer, b'\r') => TrailerLf,
                (Trailer, b) if b == b'\t' || b >= b' ' && b != 0x7f => Trailer,
                (TrailerLf, b'\n') => EndCr,
                (EndCr, b'\r') => EndLf,
                (EndCr, b) if is_token(b) => TrailerName,
                (EndLf, b'\n') => {
                    *self = ChunkScan::default();
                    return Decoded::End(i + 1);
                }
                _ => return Decoded::Bad(i),
            };
            if self.state == SizeLf {
                self.line = 0; // the size line is over: what follows is counted afresh
            }
            self.state = next;
            i += 1;
        }
        Decoded::More
    }

    /// Counts byte `b` against the bound of the part of the framing it belongs to; false when
    /// that bound is passed. The CR ending a size line counts in neither part.
    fn count(&mut self, b: u8) -> bool {
        use ChunkState::*;
        let (counter, limit) = match self.state {
            Start | Size | SizeLws if b != b'\r' => (&mut self.line, MAX_SIZE_LINE),
            Extension if b != b'\r' => (&mut self.extensions, MAX_EXTENSIONS),
            TrailerName | Trailer | TrailerLf | EndCr | EndLf => (&mut self.line, MAX_TRAILERS),
            _ => return true,
        };
        *counter = counter.saturating_add(1);
        *counter <= limit
    }

    fn push_digit(&mut self, b: u8) -> Option<()> {
        let d = (b as char).to_digit(16)?;
        self.size = self.size.checked_mul(16)?.checked_add(u64::from(d))?;
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = b"5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\nx-trailer: 1\r\n\r\nGET /next";

    #[test]
    fn chunk_scan_finds_the_end() {
        let end = BODY.len() - "GET /next".len();
        assert_eq!(ChunkScan::default().scan(BODY), Scanned::End(end));
        // Byte by byte gives the same answer.
        let mut scan = ChunkScan::default();
        let mut found = None;
        for (i, b) in BODY.iter().enumerate() {
            match scan.scan(std::slice::from_ref(b)) {
                Scanned::More => {}
                Scanned::End(1) => {
                    found = Some(i + 1);
                    break;
                }
                other => panic!("{other:?} at {i}"),
            }
        }
        assert_eq!(found, Some(end));
        assert_eq!(ChunkScan::default().scan(b"0\r\n\r\n"), Scanned::End(5));
        assert_eq!(ChunkScan::default().scan(b"zz\r\n"), Scanned::Bad(0));
        assert_eq!(ChunkScan::default().scan(b"2\r\nabX"), Scanned::Bad(5));
        assert_eq!(ChunkScan::default().scan(b"2;a\nb"), Scanned::Bad(3));
        assert_eq!(ChunkScan::default().scan(b"fffffffffffffffff\r\n"), Scanned::Bad(16));
        // Trailers are field lines ending in CRLF, or the body is malformed.
        assert_eq!(ChunkScan::default().scan(b"0\r\nx-a: b c\r\n\r\n"), Scanned::End(15));
        assert_eq!(ChunkScan::default().scan(b"0\r\nbad trailer\r\n\r\n"), Scanned::Bad(6));
        assert_eq!(ChunkScan::default().scan(b"0\r\n: v\r\n\r\n"), Scanned::Bad(3));
        assert_eq!(ChunkScan::default().scan(b"0\r\nx:1\n\r\n"), Scanned::Bad(6));
        assert_eq!(ChunkScan::default().scan(b"0\r\nx:\x01\r\n\r\n"), Scanned::Bad(5));
    }

    /// The outcome of decoding `pieces` one after the other, as they would arrive from a socket:
    /// the data, and where the body ended (`Ok`) or broke (`Err`) as an index into the whole input.
    type Outcome = (Vec<u8>, Option<Result<usize, usize>>);

    fn run(pieces: &[&[u8]]) -> Outcome {
        let mut scan = ChunkScan::default();
        let mut out = Vec::new();
        let mut base = 0;
        for piece in pieces {
            let mut at = 0;
            while at < piece.len() {
                match scan.decode(&piece[at..]) {
                    Decoded::Data { skip, len } => {
                        out.extend_from_slice(&piece[at + skip..at + skip + len]);
                        at += skip + len;
                    }
                    Decoded::More => break,
                    Decoded::End(k) => return (out, Some(Ok(base + at + k))),
                    Decoded::Bad(k) => return (out, Some(Err(base + at + k))),
                }
            }
            base += piece.len();
        }
        (out, None)
    }

    /// [`run`] of a body that must not break: the data and where it ended.
    fn decode_all(pieces: &[&[u8]]) -> (Vec<u8>, Option<usize>) {
        let (out, end) = run(pieces);
        (out, end.map(|e| e.unwrap_or_else(|k| panic!("bad byte at {k}"))))
    }

    #[test]
    fn decode_yields_the_data_whatever_the_split() {
        let end = BODY.len() - "GET /next".len();
        assert_eq!(decode_all(&[BODY]), (b"helloabc".to_vec(), Some(end)));
        for cut in 1..BODY.len() {
            let (a, b) = BODY.split_at(cut);
            assert_eq!(decode_all(&[a, b]), (b"helloabc".to_vec(), Some(end)), "split at {cut}");
        }
        let bytes: Vec<&[u8]> = BODY.chunks(1).collect();
        assert_eq!(decode_all(&bytes), (b"helloabc".to_vec(), Some(end)));
        assert_eq!(ChunkScan::default().decode(b"2\r\nab"), Decoded::Data { skip: 3, len: 2 });
        assert_eq!(ChunkScan::default().decode(b"\r\n"), Decoded::Bad(0));
    }

    #[test]
    fn chunks_are_written_with_lowercase_hex_sizes() {
        let mut out = Vec::new();
        push_chunk(&mut out, b"hello, world");
        push_chunk(&mut out, &[b'x'; 255]);
        out.extend_from_slice(LAST_CHUNK);
        assert!(out.starts_with(b"c\r\nhello, world\r\nff\r\nxxx"));
        let mut one = Vec::new();
        push_chunk(&mut one, b"hello, world");
        assert_eq!(one, b"c\r\nhello, world\r\n");
        let mut big = Vec::new();
        push_chunk(&mut big, &vec![0u8; 0x10000]);
        assert!(big.starts_with(b"10000\r\n"));
        let mut empty = Vec::new();
        push_chunk(&mut empty, b"");
        assert_eq!(empty, LAST_CHUNK, "a zero size is written as 0");
        // What is written decodes to what went in.
        let mut buf = BytesMut::from(&out[..]);
        let mut framed = Framed::Chunked(ChunkScan::default());
        let mut got = Vec::new();
        while !buf.is_empty() {
            match framed.take(&mut buf) {
                Taken::Data(d) => got.extend_from_slice(&d),
                Taken::More => {}
                Taken::End => break,
                Taken::Bad => panic!("bad"),
            }
        }
        assert_eq!(got.len(), 12 + 255);
        assert!(buf.is_empty());
    }

    #[test]
    fn a_length_body_leaves_what_follows() {
        let mut buf = BytesMut::from(&b"abcGET /"[..]);
        let mut framed = Framed::Length(3);
        assert!(matches!(framed.take(&mut buf), Taken::Data(d) if d == "abc"));
        assert!(framed.ended());
        assert_eq!(&buf[..], b"GET /");
    }

    #[test]
    fn framing_without_data_is_bounded() {
        // Leading zeros and blanks count against the size line.
        let zeros = format!("{}1\r\nx\r\n0\r\n\r\n", "0".repeat(MAX_SIZE_LINE as usize - 1));
        assert_eq!(ChunkScan::default().scan(zeros.as_bytes()), Scanned::End(zeros.len()));
        let too_many = format!("{}1\r\n", "0".repeat(MAX_SIZE_LINE as usize));
        assert_eq!(ChunkScan::default().scan(too_many.as_bytes()), Scanned::Bad(MAX_SIZE_LINE as usize));
        // Extensions count over the whole body, however they are spread over chunks.
        let ext = "a".repeat(1024);
        let one = format!("1;{ext}\r\nx\r\n");
        let mut body = one.repeat(16);
        assert_eq!(ChunkScan::default().scan(body.as_bytes()), Scanned::More, "16 KiB of extensions pass");
        body.push_str("1;a\r\nx\r\n");
        assert_eq!(ChunkScan::default().scan(body.as_bytes()), Scanned::Bad(one.len() * 16 + 2));
        // Trailers: as much as a head, and not a byte more.
        let line = format!("x-t: {}\r\n", "v".repeat(1000));
        let fits = format!("0\r\n{}\r\n", line.repeat((MAX_TRAILERS as usize - 2) / line.len()));
        assert_eq!(ChunkScan::default().scan(fits.as_bytes()), Scanned::End(fits.len()));
        let over = format!("0\r\n{}", "t".repeat(MAX_TRAILERS as usize + 1));
        assert_eq!(ChunkScan::default().scan(over.as_bytes()), Scanned::Bad(3 + MAX_TRAILERS as usize));
        // A size line's count starts afresh after each chunk.
        let many = format!("{}0\r\n\r\n", format!("{}1\r\nx\r\n", "0".repeat(40)).repeat(100));
        assert_eq!(ChunkScan::default().scan(many.as_bytes()), Scanned::End(many.len()));
    }

    #[test]
    fn a_chunk_scan_stays_two_words() {
        // It rides in every response body's framing, which the upstream client moves by value:
        // past 16 bytes those moves became `memcpy` calls (callgrind, +185 instructions per
        // request on the L7 load).
        assert!(std::mem::size_of::<ChunkScan>() <= 16);
    }

    /// Properties over generated input: the decoder is fed hostile bytes from the network.
    mod properties {
        use proptest::collection::vec;
        use proptest::prelude::*;
        use proptest::sample::{select, Index};

        use super::run;
        use crate::test_input::split;

        /// Mostly the grammar's own bytes, so that generated input gets past the first one.
        fn framing_byte() -> impl Strategy<Value = u8> {
            prop_oneof![9 => select(b"0123456789abcdefABCDEF;= \t\r\n\r\nxX:".to_vec()), 1 => any::<u8>()]
        }

        /// A chunk's size line: its size in hex, either case, with a few leading zeros.
        fn size_line(len: usize, zeros: usize, upper: bool, extension: &str) -> String {
            let hex = if upper { format!("{len:X}") } else { format!("{len:x}") };
            let ext = if extension.is_empty() { String::new() } else { format!(";{extension}") };
            format!("{}{hex}{ext}\r\n", "0".repeat(zeros))
        }

        proptest! {
            #[test]
            fn any_bytes_decode_alike_whatever_the_reads(
                data in vec(framing_byte(), 0..400),
                cuts in vec(any::<Index>(), 0..8),
            ) {
                let whole = run(&[&data]);
                prop_assert_eq!(run(&split(&data, &cuts)), whole.clone());
                if let (_, Some(Ok(end) | Err(end))) = whole {
                    prop_assert!(end <= data.len());
                }
            }

            #[test]
            fn a_chunked_body_decodes_to_its_data_and_ends_where_it_ends(
                chunks in vec((vec(any::<u8>(), 1..200), 0..3usize, any::<bool>(), "([a-z]{1,5}(=[a-z0-9]{0,5})?)?"), 0..8),
                last_extension in "([a-z]{1,5}(=[a-z0-9]{0,5})?)?",
                trailers in vec(("x-[a-z]{1,8}", "[a-z0-9 ]{0,20}"), 0..3),
                cuts in vec(any::<Index>(), 0..8),
            ) {
                let mut wire = Vec::new();
                let mut data = Vec::new();
                for (chunk, zeros, upper, extension) in &chunks {
                    wire.extend_from_slice(size_line(chunk.len(), *zeros, *upper, extension).as_bytes());
                    wire.extend_from_slice(chunk);
                    wire.extend_from_slice(b"\r\n");
                    data.extend_from_slice(chunk);
                }
                wire.extend_from_slice(size_line(0, 0, false, &last_extension).as_bytes());
                for (name, value) in &trailers {
                    wire.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
                }
                wire.extend_from_slice(b"\r\n");
                let end = wire.len();
                wire.extend_from_slice(b"GET /next HTTP/1.1\r\n");
                prop_assert_eq!(run(&split(&wire, &cuts)), (data, Some(Ok(end))));
                // Cut short anywhere, the body is neither over nor broken.
                let short = cuts.first().map_or(0, |c| c.index(end));
                prop_assert_eq!(run(&[&wire[..short]]).1, None);
            }
        }
    }
}
