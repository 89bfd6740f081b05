//! The gRPC health protocol as a probe: `grpc.health.v1.Health/Check` over a fresh HTTP/2
//! connection, passing on SERVING. The two messages are tiny, so they are encoded and read here
//! (protobuf field 1 of each) rather than through generated code.

use bytes::{BufMut, Bytes, BytesMut};
use http::Request;
use tokio::io::{AsyncRead, AsyncWrite};

/// `HealthCheckResponse.status` SERVING.
const SERVING: u64 = 1;
/// Responses larger than this are not a health answer.
const MAX_ANSWER: usize = 4096;

/// Asks the endpoint on `stream` (already connected, TLS done) whether `service` is SERVING.
pub async fn check<S>(stream: S, authority: &str, https: bool, service: &str) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = h2::client::handshake(stream).await.map_err(|e| format!("h2 handshake: {e}"))?;
    let exchange = async move {
        let mut send = send.ready().await.map_err(|e| format!("h2: {e}"))?;
        let scheme = if https { "https" } else { "http" };
        let req = Request::post(format!("{scheme}://{authority}/grpc.health.v1.Health/Check"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("user-agent", "sluice-health-check")
            .body(())
            .map_err(|e| format!("request: {e}"))?;
        let (response, mut body) = send.send_request(req, false).map_err(|e| format!("h2: {e}"))?;
        body.send_data(request_message(service), true).map_err(|e| format!("h2: {e}"))?;
        let resp = response.await.map_err(|e| format!("h2: {e}"))?;
        if resp.status() != 200 {
            return Err(format!("status {}", resp.status().as_u16()));
        }
        // A trailers-only answer carries its status in the headers.
        if let Some(status) = resp.headers().get("grpc-status") {
            return Err(format!("grpc-status {}", status.to_str().unwrap_or("?")));
        }
        let mut recv = resp.into_body();
        let mut answer = BytesMut::new();
        while let Some(data) = recv.data().await {
            let data = data.map_err(|e| format!("h2: {e}"))?;
            let _ = recv.flow_control().release_capacity(data.len());
            answer.extend_from_slice(&data);
            if answer.len() > MAX_ANSWER {
                return Err("answer too large".into());
            }
        }
        let trailers = recv.trailers().await.map_err(|e| format!("h2: {e}"))?.unwrap_or_default();
        match trailers.get("grpc-status").map(|v| v.as_bytes()) {
            Some(b"0") => {}
            Some(s) => return Err(format!("grpc-status {}", String::from_utf8_lossy(s))),
            None => return Err("no grpc-status".into()),
        }
        match serving_status(&answer) {
            Some(SERVING) => Ok(()),
            Some(s) => Err(format!("serving status {s}")),
            None => Err("malformed HealthCheckResponse".into()),
        }
    };
    tokio::select! {
        biased;
        r = exchange => r,
        r = conn => Err(format!("connection ended: {}", r.err().map(|e| e.to_string()).unwrap_or_default())),
    }
}

/// A `HealthCheckRequest { service }` in its gRPC frame (uncompressed, 4-byte length).
fn request_message(service: &str) -> Bytes {
    let mut msg = BytesMut::new();
    if !service.is_empty() {
        msg.put_u8(0x0a); // field 1, length-delimited
        put_varint(&mut msg, service.len() as u64);
        msg.put_slice(service.as_bytes());
    }
    let mut frame = BytesMut::with_capacity(5 + msg.len());
    frame.put_u8(0);
    frame.put_u32(msg.len() as u32);
    frame.put_slice(&msg);
    frame.freeze()
}

fn put_varint(out: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        out.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

fn varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// `HealthCheckResponse.status` from one uncompressed gRPC frame; a message without the field
/// is UNKNOWN (0), protobuf's default.
fn serving_status(frame: &[u8]) -> Option<u64> {
    let (&flag, rest) = frame.split_first()?;
    if flag != 0 || rest.len() < 4 {
        return None;
    }
    let len = u32::from_be_bytes(rest[..4].try_into().ok()?) as usize;
    let mut msg = rest.get(4..4 + len)?;
    let mut status = 0;
    while !msg.is_empty() {
        let (key, n) = varint(msg)?;
        msg = &msg[n..];
        match key & 7 {
            0 => {
                let (v, n) = varint(msg)?;
                msg = &msg[n..];
                if key >> 3 == 1 {
                    status = v;
                }
            }
            2 => {
                let (l, n) = varint(msg)?;
                msg = msg.get(n + l as usize..)?;
            }
            _ => return None,
        }
    }
    Some(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_frames() {
        assert_eq!(&request_message("")[..], &[0, 0, 0, 0, 0]);
        assert_eq!(&request_message("svc")[..], &[0, 0, 0, 0, 5, 0x0a, 3, b's', b'v', b'c']);
    }

    #[test]
    fn response_statuses() {
        assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 1]), Some(1));
        assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 2]), Some(2));
        // Empty message: UNKNOWN; an unknown field is skipped.
        assert_eq!(serving_status(&[0, 0, 0, 0, 0]), Some(0));
        assert_eq!(serving_status(&[0, 0, 0, 0, 5, 0x12, 1, b'x', 0x08, 1]), Some(1));
        // Compressed, truncated, or garbage.
        assert_eq!(serving_status(&[1, 0, 0, 0, 2, 0x08, 1]), None);
        assert_eq!(serving_status(&[0, 0, 0, 0, 9, 0x08, 1]), None);
        assert_eq!(serving_status(&[0, 0, 0, 0, 1, 0xff]), None);
        assert_eq!(serving_status(&[]), None);
    }
}
