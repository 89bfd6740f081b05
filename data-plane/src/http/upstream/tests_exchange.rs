//! The upstream client against raw, scripted endpoints: response framing, interim answers, bad
//! answers, and which connections are reused.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::h1::ResponseBody;
use super::{client, Dial, Failed};
use crate::http::codec::outgoing::RequestOut;

/// What the endpoint does with the next request it reads.
enum Step {
    /// Writes these pieces one after the other (pausing between them, so the client is likely to
    /// read them apart) and keeps the connection.
    Answer(&'static [&'static [u8]]),
    /// The same, then closes the connection.
    AnswerAndClose(&'static [&'static [u8]]),
    /// Closes the connection without a word.
    Close,
}

struct Endpoint {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    /// Each request as received, head and body; and a `None` each time the endpoint closed a
    /// connection.
    seen: mpsc::UnboundedReceiver<Option<Vec<u8>>>,
}

impl Endpoint {
    async fn start(steps: Vec<Step>) -> Endpoint {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let steps = Arc::new(Mutex::new(VecDeque::from(steps)));
        let (tx, seen) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let (steps, tx) = (steps.clone(), tx.clone());
                tokio::spawn(async move {
                    while let Some(req) = read_request(&mut s).await {
                        let _ = tx.send(Some(req));
                        let step = steps.lock().unwrap().pop_front();
                        let (pieces, close) = match step {
                            Some(Step::Answer(p)) => (p, false),
                            Some(Step::AnswerAndClose(p)) => (p, true),
                            Some(Step::Close) | None => (&[][..], true),
                        };
                        for (i, piece) in pieces.iter().enumerate() {
                            if i > 0 {
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                            if s.write_all(piece).await.is_err() {
                                return;
                            }
                        }
                        if close {
                            break;
                        }
                    }
                    drop(s);
                    let _ = tx.send(None);
                });
            }
        });
        Endpoint { addr, accepted, seen }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Waits until the endpoint has closed a connection.
    async fn closed_one(&mut self) {
        loop {
            match tokio::time::timeout(Duration::from_secs(5), self.seen.recv()).await {
                Ok(Some(None)) => return,
                Ok(Some(Some(_))) => {}
                other => panic!("no connection closed: {other:?}"),
            }
        }
    }

    async fn next_request(&mut self) -> String {
        loop {
            match tokio::time::timeout(Duration::from_secs(5), self.seen.recv()).await {
                Ok(Some(Some(r))) => return String::from_utf8(r).unwrap(),
                Ok(Some(None)) => {}
                other => panic!("no request: {other:?}"),
            }
        }
    }
}

/// A head up to its blank line, then as many body bytes as its Content-Length says.
async fn read_request(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut req = Vec::new();
    let mut byte = [0u8; 1];
    while !req.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte).await {
            Ok(1) => req.push(byte[0]),
            _ => return None,
        }
    }
    let head = String::from_utf8_lossy(&req).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    s.read_exact(&mut body).await.ok()?;
    req.extend_from_slice(&body);
    Some(req)
}

fn request(method: Method, body: Option<&'static str>) -> Request<RequestOut> {
    let mut b = Request::builder().method(method).uri("/p?q=1").header("host", "x");
    if let Some(body) = body {
        b = b.header("content-length", body.len());
    }
    b.body(body.map_or(RequestOut::Empty, |s| RequestOut::Buffered(Some(Bytes::from_static(s.as_bytes()))))).unwrap()
}

async fn send(addr: SocketAddr, req: Request<RequestOut>) -> Result<Response<ResponseBody>, Failed> {
    client().request(addr, Dial::default(), None, req, &[]).await
}

/// One exchange read to its end: the status, the headers as the client gets them (the map's and
/// the lines passed through) and the body.
async fn exchange(addr: SocketAddr, req: Request<RequestOut>) -> (u16, http::HeaderMap, String) {
    let Ok(resp) = send(addr, req).await else { panic!("request failed") };
    let (mut head, body) = resp.into_parts();
    let lines = String::from_utf8(body.passed_head().lines().to_vec()).unwrap();
    for line in lines.split_terminator("\r\n") {
        let (name, value) = line.split_once(": ").expect("a header line");
        head.headers.append(http::HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
    }
    let body = body.collect().await.expect("body").to_bytes();
    (head.status.as_u16(), head.headers, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn the_request_goes_out_as_given_with_its_body() {
    let mut e = Endpoint::start(vec![Step::Answer(&[b"HTTP/1.1 204 No Content\r\n\r\n"])]).await;
    let mut req = request(Method::PUT, Some("hi"));
    req.headers_mut().insert("x-a", "1".parse().unwrap());
    assert_eq!(exchange(e.addr, req).await.0, 204);
    assert_eq!(e.next_request().await, "PUT /p?q=1 HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\nx-a: 1\r\n\r\nhi");
}

#[tokio::test]
async fn a_head_trickled_in_pieces_is_read_whole() {
    // Cuts inside the status line, inside a name, between CR and LF, and right before the blank
    // line: the head is parsed again only when a line end comes, and still found complete.
    let e = Endpoint::start(vec![Step::Answer(&[
        b"HTTP/1.1 2",
        b"00 OK\r\ncontent-le",
        b"ngth: 2\r",
        b"\nx-a: 1\r\n",
        b"\r\nok",
    ])])
    .await;
    let (status, headers, body) = exchange(e.addr, request(Method::GET, None)).await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    assert_eq!(headers["x-a"], "1");
}

#[tokio::test]
async fn a_chunked_answer_read_in_pieces_is_decoded_and_the_connection_reused() {
    let e = Endpoint::start(vec![
        Step::Answer(&[
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel",
            b"lo\r\n0\r\nx-t: 1\r\n",
            b"\r\n",
        ]),
        Step::Answer(&[b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]),
    ])
    .await;
    assert_eq!(exchange(e.addr, request(Method::GET, None)).await.2, "hello");
    assert_eq!(exchange(e.addr, request(Method::GET, None)).await.2, "ok");
    assert_eq!(e.accepted(), 1);
}

#[tokio::test]
async fn a_head_answer_has_no_body_whatever_its_length() {
    let e = Endpoint::start(vec![
        Step::Answer(&[b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n"]),
        Step::Answer(&[b"HTTP/1.1 304 Not Modified\r\ncontent-length: 100\r\n\r\n"]),
        Step::Answer(&[b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]),
    ])
    .await;
    let (status, headers, body) = exchange(e.addr, request(Method::HEAD, None)).await;
    assert_eq!((status, body.as_str()), (200, ""));
    assert_eq!(headers["content-length"], "100", "a HEAD answer keeps its length");
    assert_eq!(exchange(e.addr, request(Method::GET, None)).await.0, 304);
    assert_eq!(exchange(e.addr, request(Method::GET, None)).await.2, "ok");
    assert_eq!(e.accepted(), 1);
}

#[tokio::test]
async fn interim_answers_are_skipped() {
    let e = Endpoint::start(vec![Step::Answer(&[
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 1\r\n\r\nx",
    ])])
    .await;
    let (status, headers, body) = exchange(e.addr, request(Method::POST, Some("b"))).await;
    assert_eq!((status, body.as_str()), (201, "x"));
    assert!(!headers.contains_key("link"));
}

#[tokio::test]
async fn a_body_without_length_lasts_until_close_and_its_connection_is_not_reused() {
    let e = Endpoint::start(vec![
        Step::AnswerAndClose(&[b"HTTP/1.1 200 OK\r\n\r\nab", b"c"]),
        Step::Answer(&[b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n1"]),
        Step::Answer(&[b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\n2"]),
        Step::Answer(&[b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n3"]),
    ])
    .await;
    assert_eq!(exchange(e.addr, request(Method::GET, None)).await.2, "abc");
    // HTTP/1.0 without keep-alive, and `connection: close`, end their connections too.
    assert_eq!(exchange(e.addr, request(Method::GET, None)).await.2, "1");
    assert_eq!(exchange(e.addr, request(Method::GET, None)).await.2, "2");
    assert_eq!(exchange(e.addr, request(Method::GET, None)).await.2, "3");
    assert_eq!(e.accepted(), 4);
}

#[tokio::test]
async fn transfer_encoding_wins_over_content_length_and_the_connection_closes() {
    let e = Endpoint::start(vec![
        Step::Answer(&[
            b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        ]),
        Step::Answer(&[b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n1"]),
    ])
    .await;
    let (_, headers, body) = exchange(e.addr, request(Method::GET, None)).await;
    assert_eq!(body, "ok");
    assert!(!headers.contains_key("content-length"), "the length must not reach the client");
    assert_eq!(exchange(e.addr, request(Method::GET, None)).await.2, "1");
    assert_eq!(e.accepted(), 2);
}

#[tokio::test]
async fn malformed_answers_fail_the_exchange() {
    let bad: [&'static [&'static [u8]]; 5] = [
        &[b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nx"],
        &[b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n"],
        &[b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n"],
        &[b"HTTP/1.1 2000 OK\r\n\r\n"],
        &[b"NOT HTTP\r\n\r\n"],
    ];
    for answer in bad {
        let e = Endpoint::start(vec![Step::AnswerAndClose(answer)]).await;
        assert!(send(e.addr, request(Method::GET, None)).await.is_err(), "{:?}", String::from_utf8_lossy(answer[0]));
    }
    // A broken chunked body fails while the body is read.
    let e =
        Endpoint::start(vec![Step::Answer(&[b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"])]).await;
    let Ok(resp) = send(e.addr, request(Method::GET, None)).await else { panic!("the head was fine") };
    assert!(resp.into_body().collect().await.is_err());
    // So does a body cut short.
    let e = Endpoint::start(vec![Step::AnswerAndClose(&[b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nab"])]).await;
    let Ok(resp) = send(e.addr, request(Method::GET, None)).await else { panic!("the head was fine") };
    assert!(resp.into_body().collect().await.is_err());
}

#[tokio::test]
async fn an_idle_connection_the_endpoint_closed_is_not_used() {
    // The endpoint closes after answering without saying so; a POST (never sent twice) must not
    // meet that connection.
    let mut e = Endpoint::start(vec![
        Step::AnswerAndClose(&[b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n1"]),
        Step::Answer(&[b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n2"]),
    ])
    .await;
    assert_eq!(exchange(e.addr, request(Method::POST, Some("a"))).await.2, "1");
    e.closed_one().await;
    // Lets the runtime's I/O driver run (and see the FIN) before this task goes on.
    tokio::task::yield_now().await;
    assert_eq!(exchange(e.addr, request(Method::POST, Some("b"))).await.2, "2");
    assert_eq!(e.accepted(), 2);
}

#[tokio::test]
async fn an_idempotent_request_dropped_by_a_pooled_connection_is_sent_again() {
    // The endpoint reads the second request and closes: what an idle timeout firing just as the
    // request arrives looks like.
    let e = Endpoint::start(vec![
        Step::Answer(&[b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n1"]),
        Step::Close,
        Step::Answer(&[b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n2"]),
    ])
    .await;
    assert_eq!(exchange(e.addr, request(Method::GET, None)).await.2, "1");
    assert_eq!(exchange(e.addr, request(Method::GET, None)).await.2, "2");
    assert_eq!(e.accepted(), 2);

    // A POST is not sent twice: the endpoint may have acted on it.
    let e = Endpoint::start(vec![
        Step::Answer(&[b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n1"]),
        Step::Close,
        Step::Answer(&[b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n2"]),
    ])
    .await;
    assert_eq!(exchange(e.addr, request(Method::POST, Some("a"))).await.2, "1");
    assert!(send(e.addr, request(Method::POST, Some("b"))).await.is_err());
    assert_eq!(e.accepted(), 1);
}

#[tokio::test]
async fn hop_by_hop_headers_do_not_reach_the_response() {
    let e = Endpoint::start(vec![
        Step::Answer(&[b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nx-a: 1\r\ncontent-length: 1\r\n\r\n1"]),
        // Headers named by `Connection` are hop-by-hop too, wherever they come.
        Step::Answer(&[b"HTTP/1.1 200 OK\r\nx-secret: s\r\nConnection: x-secret, keep-alive\r\nx-b: 2\r\ncontent-length: 1\r\n\r\n2"]),
    ])
    .await;
    let names = |headers: http::HeaderMap| {
        let mut names: Vec<_> = headers.keys().map(|k| k.to_string()).collect();
        names.sort();
        names
    };
    assert_eq!(names(exchange(e.addr, request(Method::GET, None)).await.1), ["content-length", "x-a"]);
    assert_eq!(names(exchange(e.addr, request(Method::GET, None)).await.1), ["content-length", "x-b"]);
    assert_eq!(e.accepted(), 1);
}
