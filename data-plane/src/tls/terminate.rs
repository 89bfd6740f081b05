//! `https` listeners: the TLS handshake (bounded in time) with the installed revision's config for
//! the listener, then the HTTP proxy over the decrypted stream with `x-forwarded-proto: https`.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::HANDSHAKE_TIMEOUT;
use crate::listeners::Phase;
use crate::state::ConnCtx;

pub async fn serve(stream: TcpStream, conn: Arc<ConnCtx>, phase: watch::Receiver<Phase>) {
    // The config of the revision installed now: a later rotation only affects later handshakes,
    // and this connection keeps its session whatever gets installed meanwhile.
    let config = {
        let installed = conn.shared.installed.load();
        let Some(config) = installed.as_ref().and_then(|i| i.tls.server(&conn.listener)).cloned() else {
            tracing::debug!("no TLS configuration for this listener in the installed table");
            return;
        };
        config
    };
    let Some(tls) = handshake(config, stream, HANDSHAKE_TIMEOUT).await else { return };
    let opts = conn.http_options();
    // A client that negotiated no protocol speaks HTTP/1.1, unless the listener has only HTTP/2.
    let h2 = match tls.get_ref().1.alpn_protocol() {
        Some(p) => p == b"h2",
        None => !opts.http1,
    };
    if h2 {
        crate::http::downstream::h2::serve(tls, conn, phase, opts).await;
    } else {
        crate::http::downstream::h1::serve(tokio_util::either::Either::Right(Box::new(tls)), conn, phase).await;
    }
}

/// The server side of the handshake; `None` when it fails or takes longer than `limit`.
async fn handshake(config: Arc<ServerConfig>, stream: TcpStream, limit: Duration) -> Option<TlsStream<TcpStream>> {
    match tokio::time::timeout(limit, TlsAcceptor::from(config).accept(stream)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!("TLS handshake timed out");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    use super::*;

    fn config() -> Arc<ServerConfig> {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.test".to_string()]).unwrap().self_signed(&key).unwrap();
        let cfg: sluice_shared::Config = serde_json::from_value(serde_json::json!({
            "listeners": {"web": {"address": "127.0.0.1:0", "protocol": "https", "certificates": ["a"]}},
            "certificates": {"a": {"cert_pem": cert.pem(), "key_pem": key.serialize_pem()}}
        }))
        .unwrap();
        crate::tls::TlsConfigs::build(&cfg, None).unwrap().server("web").unwrap().clone()
    }

    #[tokio::test]
    async fn a_client_that_stalls_the_handshake_is_dropped_in_time() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        // A record header promising more than ever comes.
        client.write_all(&[22, 3, 1, 0, 200, 1]).await.unwrap();
        let limit = Duration::from_millis(200);
        let started = tokio::time::Instant::now();
        assert!(handshake(config(), server, limit).await.is_none());
        assert!(started.elapsed() >= limit && started.elapsed() < Duration::from_secs(5));
    }
}
