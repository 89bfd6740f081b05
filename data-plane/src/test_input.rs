//! Helpers for the property tests of the parsers that read bytes off the network.

use proptest::sample::Index;

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
