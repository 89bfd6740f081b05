//! Basic L4: a TCP listener forwards each connection to an endpoint of its cluster, bytes both ways.
//! (Idle timeouts, hashing and UDP come with the full L4 work.)

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::listeners::Phase;
use crate::state::Shared;

/// How long to wait for one endpoint before trying the next.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn serve(mut client: TcpStream, listener: &str, shared: &Arc<Shared>, mut phase: watch::Receiver<Phase>) {
    // Loaded once: the connection keeps this table (and so its endpoint states) until it ends.
    let Some(installed) = shared.installed.load_full() else { return };
    let Some(cluster) = installed.table.listener(listener).and_then(|l| l.cluster()) else {
        tracing::debug!("listener has no cluster in the installed table");
        return;
    };
    let mut tried: Vec<SocketAddr> = Vec::new();
    let connected = loop {
        // Every endpoint gets one try at most; the guard keeps the connection counted as active.
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
    let (mut upstream, _endpoint) = connected;
    let _ = upstream.set_nodelay(true);
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    tokio::pin!(copy);
    loop {
        tokio::select! {
            res = &mut copy => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "tcp proxy ended with an error");
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
