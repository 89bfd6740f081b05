//! Helpers for the property tests of the parsers that read bytes off the network.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{select, Index};

/// `data` cut at the given places, as reads off a socket would cut it (pieces may be empty).
pub fn split<'a>(data: &'a [u8], cuts: &[Index]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c.index(data.len() + 1)).collect();
    at.sort_unstable();
    let mut from = 0;
    let mut pieces: Vec<&[u8]> = at
        .into_iter()
        .map(|to| {
            let piece = &data[from..to];
            from = to;
            piece
        })
        .collect();
    pieces.push(&data[from..]);
    pieces
}

/// What request and response heads share: framing and connection headers, their values, and the
/// bytes that break a head (line ends, blanks, separators, control bytes, an overlong number).
const HEAD_FRAGMENTS: [&[u8]; 20] = [
    b"Content-Length: ",
    b"Transfer-Encoding: ",
    b"chunked",
    b"gzip",
    b"Connection: ",
    b"close",
    b"keep-alive",
    b"Upgrade: websocket\r\n",
    b"\r\n",
    b"\n",
    b"\r",
    b" ",
    b"\t",
    b":",
    b",",
    b"0",
    b"99999999999999999999",
    b"\0",
    b"\x7f",
    b"\xff",
];

/// Pieces of heads, right and wrong, so that generated input gets past the first line and reaches
/// the header checks: `own` (start lines and headers of one direction) and [`HEAD_FRAGMENTS`],
/// now and then a few random bytes.
pub fn head_piece(own: &[&'static [u8]]) -> impl Strategy<Value = Vec<u8>> {
    let words: Vec<&'static [u8]> = own.iter().copied().chain(HEAD_FRAGMENTS).collect();
    prop_oneof![8 => select(words).prop_map(<[u8]>::to_vec), 1 => vec(any::<u8>(), 1..4)]
}
