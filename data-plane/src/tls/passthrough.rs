//! `tls` passthrough listeners: read the ClientHello's SNI without terminating, pick the cluster
//! from the listener's `sni` map (exact, then wildcard, else its default `cluster`), connect, replay
//! the bytes read so far and splice both ways as a tcp listener does (`tcp/`: `max_connections`,
//! `idle_timeout_ms`, the next endpoint on failure, the `sluice_l4_*` metrics). The TLS session is
//! between client and backend.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::client_hello;
use super::HANDSHAKE_TIMEOUT;
use crate::access_log::L4Entry;
use crate::l4_stats::L4Stats;
use crate::listeners::Phase;
use crate::state::Shared;
use crate::tcp;

pub async fn serve(
    mut client: TcpStream,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    listener: &str,
    shared: &Arc<Shared>,
    stats: &Arc<L4Stats>,
    phase: watch::Receiver<Phase>,
) {
    let mut log = L4Entry::start(listener, peer);
    let Some((hello, server_name)) = read_hello(&mut client, HANDSHAKE_TIMEOUT).await else {
        return log.end("no_client_hello");
    };
    log.sni(server_name.as_deref());
    // Loaded after the hello: the connection routes by the table current when it is routable.
    // From here on it is an L4 connection: admitted under `max_connections`, connected with
    // retries on the next endpoint, counted and spliced like a tcp listener's.
    let (upstream, idle) = {
        let Some(installed) = shared.installed.load_full() else { return log.end("no_config") };
        let Some(table) = installed.table.listener(listener) else { return log.end("no_listener") };
        let Some(cluster) = table.sni_cluster(server_name.as_deref()) else {
            tracing::debug!(sni = ?server_name, "no cluster for this server name");
            return log.end("no_cluster");
        };
        let downstream = tcp::Downstream { stream: &client, peer, local, server_name: server_name.as_deref() };
        let upstream = match tcp::admit_and_connect(downstream, table, cluster, stats, &mut log).await {
            Ok(upstream) => upstream,
            Err(refused) => return log.end(refused.as_str()),
        };
        tracing::debug!(sni = ?server_name, cluster = cluster.name(), "passthrough");
        (upstream, table.idle_timeout())
    };
    let tcp::Upstream { mut stream, endpoint: _endpoint, slot: _slot, permit: _permit, closing } = upstream;
    if let Err(e) = stream.write_all(&hello).await {
        tracing::debug!(error = %e, "replaying the ClientHello failed");
        return log.end("error");
    }
    stats.bytes_from_clients.fetch_add(hello.len() as u64, Ordering::Relaxed);
    log.bytes(hello.len() as u64, 0);
    drop(hello);
    tcp::splice(client, stream, idle, stats, phase, closing).await.log_to(&mut log);
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
