//! Properties of the response head parser over generated input: endpoints are not trusted, so any
//! bytes get an answer without a panic, and a valid head comes out as it was sent, hop-by-hop
//! headers left out, framing and reuse read right.

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::{select, Index};

use super::*;
use crate::test_input::{self, split};

fn expect(head_only: bool, upgrade: bool) -> Expect {
    Expect { head_only, upgrade }
}

/// Status lines and headers of responses, with what all heads share.
fn head_piece() -> impl Strategy<Value = Vec<u8>> {
    test_input::head_piece(&[
        b"HTTP/1.1 200 OK\r\n",
        b"HTTP/1.0 404 Not Found\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\n",
        b"HTTP/1.1 204 No Content\r\n",
        b"HTTP/1.1 999 X\r\n",
        b"HTTP/1.1 20 X\r\n",
        b"x-a",
        b"Date: x\r\n",
        b"x-b: v\r\n",
        b"7",
    ])
}

proptest! {
    #[test]
    fn any_response_head_is_answered_without_panic(
        pieces in vec(head_piece(), 0..40),
        head_only in any::<bool>(),
        upgrade in any::<bool>(),
    ) {
        let data = pieces.concat();
        let mut buf = BytesMut::from(&data[..]);
        if let Ok(Some(_)) = parse_response_head(&mut buf, expect(head_only, upgrade)) {
            prop_assert!(buf.len() < data.len() && data.ends_with(&buf), "the head is taken off the front");
        }
    }

    #[test]
    fn a_valid_response_head_parses_to_what_was_sent(
        interim in any::<bool>(),
        status in 200u16..600,
        http10 in any::<bool>(),
        fields in vec(("x-[a-z0-9-]{1,12}", "([!-~]([ -~]{0,18}[!-~])?)?"), 0..8),
        framing in option::of(prop_oneof![(0u64..100_000).prop_map(Some), Just(None)]),
        close in any::<bool>(),
        hop in vec(select(vec!["Keep-Alive: timeout=5", "Proxy-Connection: x", "TE: trailers", "Trailer: x-t"]), 0..3),
        cuts in vec(any::<Index>(), 0..6),
    ) {
        // framing: None = no length (until close), Some(Some(n)) = Content-Length n,
        // Some(None) = chunked (HTTP/1.1 only).
        let version = if http10 { "1.0" } else { "1.1" };
        let framing = framing.filter(|f| f.is_some() || !http10);
        let mut wire = String::new();
        if interim {
            wire.push_str("HTTP/1.1 100 Continue\r\n\r\n");
        }
        wire.push_str(&format!("HTTP/{version} {status} Whatever\r\n"));
        for (name, value) in &fields {
            wire.push_str(&format!("{name}: {value}\r\n"));
        }
        for h in &hop {
            wire.push_str(&format!("{h}\r\n"));
        }
        match framing {
            Some(Some(n)) => wire.push_str(&format!("Content-Length: {n}\r\n")),
            Some(None) => wire.push_str("Transfer-Encoding: chunked\r\n"),
            None => {}
        }
        wire.push_str(if close { "Connection: close\r\n" } else if http10 { "Connection: keep-alive\r\n" } else { "" });
        wire.push_str("\r\n");
        let head_len = wire.len();
        wire.push_str("body bytes");
        let wire = wire.into_bytes();

        let mut buf = BytesMut::from(&wire[..]);
        let head = parse_response_head(&mut buf, expect(false, false)).unwrap().unwrap();
        prop_assert_eq!(&buf[..], &wire[head_len..], "what follows the head stays");
        prop_assert_eq!(head.parts.status.as_u16(), status);
        let lines = String::from_utf8(head.framing.passed.lines.clone()).unwrap();
        for (name, value) in &fields {
            prop_assert!(lines.contains(&format!("{name}: {value}\r\n")), "{name} missing from {lines:?}");
        }
        for line in lines.split_terminator("\r\n") {
            let name = line.split(':').next().unwrap_or_default();
            prop_assert!(!is_hop_by_hop(name.as_bytes()), "{name} passed on: {lines:?}");
        }
        let bodiless = status == 204 || status == 304;
        let delimited = framing.is_some() || bodiless;
        prop_assert_eq!(head.keep_alive, !close && delimited, "keep-alive");
        match (&head.framing.state, framing) {
            (BodyState::Framed(Framed::Length(0)), _) if bodiless => {}
            (BodyState::Framed(Framed::Length(n)), Some(Some(m))) => prop_assert_eq!(*n, m),
            (BodyState::Framed(Framed::Chunked(_)), Some(None)) => {}
            (BodyState::UntilClose, None) => {}
            (state, framing) => prop_assert!(false, "{state:?} for {framing:?}"),
        }
        // Cut short anywhere, it is never a head yet (an interim answer may be taken off).
        for piece in split(&wire[..head_len], &cuts).iter().take(1) {
            let mut short = BytesMut::from(*piece);
            if piece.len() < head_len {
                prop_assert!(parse_response_head(&mut short, expect(false, false)).unwrap().is_none());
            }
        }
    }
}
