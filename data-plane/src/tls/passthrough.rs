//! `tls` passthrough listeners: read the ClientHello's SNI without terminating, pick the cluster
//! from the listener's `sni` map (exact, then wildcard, else its default `cluster`), connect, replay
//! the bytes read so far and splice both ways. The TLS session is between client and backend.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::client_hello;
use super::HANDSHAKE_TIMEOUT;
use crate::listeners::Phase;
use crate::state::Shared;

/// How long to wait for one endpoint before trying the next.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn serve(mut client: TcpStream, listener: &str, shared: &Arc<Shared>, mut phase: watch::Receiver<Phase>) {
    let Some((hello, server_name)) = read_hello(&mut client, HANDSHAKE_TIMEOUT).await else { return };
    // Loaded after the hello: the connection routes by the table current when it is routable.
    let Some(installed) = shared.installed.load_full() else { return };
    let Some(cluster) = installed.table.listener(listener).and_then(|l| l.sni_cluster(server_name.as_deref())) else {
        tracing::debug!(sni = ?server_name, "no cluster for this server name");
        return;
    };
    let mut tried: Vec<SocketAddr> = Vec::new();
    let (mut upstream, _endpoint) = loop {
        let Some(endpoint) = cluster.pick_excluding(&tried) else {
            tracing::debug!(cluster = cluster.name(), tried = tried.len(), "no endpoint to connect to");
            return;
        };
        let addr = endpoint.address();
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(upstream)) => break (upstream, endpoint),
            Ok(Err(e)) => tracing::debug!(%addr, error = %e, "upstream connect failed"),
            Err(_) => tracing::debug!(%addr, "upstream connect timed out"),
        }
        tried.push(addr);
    };
    let _ = upstream.set_nodelay(true);
    tracing::debug!(sni = ?server_name, cluster = cluster.name(), "passthrough");
    if let Err(e) = upstream.write_all(&hello).await {
        tracing::debug!(error = %e, "replaying the ClientHello failed");
        return;
    }
    drop(hello);
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    tokio::pin!(copy);
    loop {
        tokio::select! {
            res = &mut copy => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "tls passthrough ended with an error");
                }
                return;
            }
            // Draining leaves established connections alone; only abort (or a gone listener) cuts.
            changed = phase.changed() => {
                if changed.is_err() || *phase.borrow_and_update() == Phase::Abort {
                    return;
                }
            }
        }
    }
}

/// The bytes of the ClientHello (and whatever followed it in the same reads) and its server name;
/// `None` when the client sends no usable ClientHello within `limit`.
async fn read_hello(client: &mut TcpStream, limit: Duration) -> Option<(Vec<u8>, Option<String>)> {
    let mut hello = Vec::with_capacity(2048);
    match tokio::time::timeout(limit, client_hello::read(client, &mut hello)).await {
        Ok(Ok(name)) => Some((hello, name)),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "no usable ClientHello, closing");
            None
        }
        Err(_) => {
            tracing::debug!("no ClientHello in time, closing");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    #[tokio::test]
    async fn a_silent_or_slow_client_is_given_up_on() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let limit = Duration::from_millis(200);
        let started = tokio::time::Instant::now();
        assert!(read_hello(&mut server, limit).await.is_none());
        assert!(started.elapsed() >= limit && started.elapsed() < Duration::from_secs(5));
        // Half a record header, then nothing: same.
        client.write_all(&[22, 3]).await.unwrap();
        assert!(read_hello(&mut server, limit).await.is_none());
    }
}
