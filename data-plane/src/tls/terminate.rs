//! `https` listeners: the TLS handshake (bounded in time) with the installed revision's config for
//! the listener, then the HTTP proxy over the decrypted stream with `x-forwarded-proto: https`.

use std::sync::Arc;

use hyper::server::conn::http1;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::HANDSHAKE_TIMEOUT;
use crate::listeners::Phase;
use crate::state::ConnCtx;

pub async fn serve(stream: TcpStream, conn: Arc<ConnCtx>, http: &http1::Builder, phase: watch::Receiver<Phase>) {
    // The config of the revision installed now: a later rotation only affects later handshakes,
    // and this connection keeps its session whatever gets installed meanwhile.
    let config = {
        let installed = conn.shared.installed.load();
        let Some(config) = installed.as_ref().and_then(|i| i.tls.get(&conn.listener)).cloned() else {
            tracing::debug!("no TLS configuration for this listener in the installed table");
            return;
        };
        config
    };
    let handshake = TlsAcceptor::from(config).accept(stream);
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!("TLS handshake timed out");
            return;
        }
    };
    crate::http::server::serve(tls, conn, http, phase).await;
}
