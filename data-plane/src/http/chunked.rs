//! The chunked transfer coding (RFC 9112 §7.1), one grammar for both directions: the server
//! decodes a client's chunked request body, and the upstream client an endpoint's chunked
//! response ([`ChunkScan::decode`], both).

/// Follows a chunked body, a byte at a time or a slice at a time, with the same grammar as hyper's
/// decoder.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChunkScan {
    state: ChunkState,
    size: u64,
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
                (Trailer, b'\r') => TrailerLf,
                (Trailer, _) => Trailer,
                (TrailerLf, b'\n') => EndCr,
                (EndCr, b'\r') => EndLf,
                (EndCr, _) => Trailer,
                (EndLf, b'\n') => {
                    *self = ChunkScan::default();
                    return Decoded::End(i + 1);
                }
                _ => return Decoded::Bad(i),
            };
            self.state = next;
            i += 1;
        }
        Decoded::More
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
    }

    /// Decodes `pieces` one after the other as they would arrive from a socket.
    fn decode_all(pieces: &[&[u8]]) -> (Vec<u8>, Option<usize>) {
        let mut scan = ChunkScan::default();
        let mut out = Vec::new();
        for (n, piece) in pieces.iter().enumerate() {
            let mut at = 0;
            while at < piece.len() {
                match scan.decode(&piece[at..]) {
                    Decoded::Data { skip, len } => {
                        out.extend_from_slice(&piece[at + skip..at + skip + len]);
                        at += skip + len;
                    }
                    Decoded::More => break,
                    Decoded::End(k) => return (out, Some(pieces[..n].iter().map(|p| p.len()).sum::<usize>() + at + k)),
                    Decoded::Bad(k) => panic!("bad byte at {}", at + k),
                }
            }
        }
        (out, None)
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
}
