//! One health probe: a TCP connect, an HTTP/1.1 `GET path` whose status is checked, or a gRPC
//! health `Check` (`grpc_probe.rs`). Plain
//! bytes rather than a pooled client: a probe must see a fresh connection, and the status line is
//! all it reads.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use sluice_shared::model::HttpHealthCheck;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::tls::upstream::UpstreamTlsConfig;

/// The status line must fit in this many bytes.
const MAX_STATUS_LINE: usize = 1024;

/// What a probe checks, compiled from the cluster's `health_check`.
#[derive(Debug, Clone)]
pub enum Probe {
    Tcp,
    Http { path: String, expected_status: Option<u16>, tls: Option<Arc<UpstreamTlsConfig>> },
    Grpc { service: String, tls: Option<Arc<UpstreamTlsConfig>> },
}

impl Probe {
    pub fn http(spec: &HttpHealthCheck, tls: Option<Arc<UpstreamTlsConfig>>) -> Probe {
        Probe::Http { path: spec.path.clone(), expected_status: spec.expected_status, tls }
    }

    /// Runs the probe once against `addr`; `Err` says why it failed. The caller bounds it in time.
    pub async fn run(&self, addr: SocketAddr) -> Result<(), String> {
        let stream = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        if let Probe::Grpc { service, tls } = self {
            let _ = stream.set_nodelay(true);
            let authority = addr.to_string();
            return match tls {
                Some(tls) => {
                    let stream = tls.connect(addr, stream).await.map_err(|e| format!("tls: {e}"))?;
                    super::grpc_probe::check(stream, &authority, true, service).await
                }
                None => super::grpc_probe::check(stream, &authority, false, service).await,
            };
        }
        let Probe::Http { path, expected_status, tls } = self else { return Ok(()) };
        let _ = stream.set_nodelay(true);
        let status = match tls {
            Some(tls) => {
                let stream = tls.connect(addr, stream).await.map_err(|e| format!("tls: {e}"))?;
                http_status(stream, addr, path).await
            }
            None => http_status(stream, addr, path).await,
        }
        .map_err(|e| format!("http: {e}"))?;
        let ok = match expected_status {
            Some(want) => status == *want,
            None => (200..300).contains(&status),
        };
        if ok {
            Ok(())
        } else {
            Err(format!("status {status}"))
        }
    }
}

/// Sends `GET path` and reads the status code of the answer.
async fn http_status<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    addr: SocketAddr,
    path: &str,
) -> io::Result<u16> {
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: sluice-health-check\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await?;
    stream.flush().await?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    loop {
        if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
            return parse_status_line(&buf[..end])
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed status line"));
        }
        if buf.len() >= MAX_STATUS_LINE {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "status line too long"));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed before a status line"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// `HTTP/1.x NNN reason` -> NNN.
fn parse_status_line(line: &[u8]) -> Option<u16> {
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.splitn(3, ' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok().filter(|c| (100..=599).contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK"), Some(200));
        assert_eq!(parse_status_line(b"HTTP/1.0 503"), Some(503));
        assert_eq!(parse_status_line(b"HTTP/1.1 2000 OK"), None);
        assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1 abc"), None);
    }
}
