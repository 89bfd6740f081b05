//! The config stream client (DESIGN §4): one bidirectional stream to a control plane, Hello first,
//! then each Snapshot is installed and answered with Ack or Nack. When the stream fails, the node
//! keeps serving and reconnects with jittered exponential backoff (capped at 30 s), rotating over
//! every configured control-plane URL.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sluice_shared::proto::v1 as pb;
use sluice_shared::proto::v1::config_discovery_client::ConfigDiscoveryClient;
use tokio::sync::{mpsc, watch, Mutex, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::health::report;
use crate::install::Installer;
use crate::node::ControlPlaneTls;
use crate::state::Shared;

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct StreamClient {
    pub endpoints: Vec<Endpoint>,
    pub node_id: String,
    pub group: String,
    pub installer: Arc<Mutex<Installer>>,
    pub shared: Arc<Shared>,
}

/// Exponential backoff with full jitter in [d/2, d], reset once a stream delivered something.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    pub fn new() -> Backoff {
        Backoff { next: BACKOFF_START }
    }

    pub fn reset(&mut self) {
        self.next = BACKOFF_START;
    }

    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(BACKOFF_CAP);
        let half = d / 2;
        half + half.mul_f64(rand::random::<f64>())
    }
}

/// Why one stream ended; the loop reconnects either way.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("stream: {0}")]
    Status(#[from] tonic::Status),
    #[error("the stream's send side closed")]
    SendClosed,
}

impl StreamClient {
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut backoff = Backoff::new();
        let mut attempt = 0usize;
        loop {
            let endpoint = &self.endpoints[attempt % self.endpoints.len()];
            attempt += 1;
            let url = endpoint.uri().to_string();
            let mut progressed = false;
            let result = tokio::select! {
                r = self.session(endpoint, &mut progressed) => r,
                _ = stop.changed() => return,
            };
            match result {
                Ok(()) => tracing::info!(control_plane = %url, "config stream closed by the control plane"),
                Err(e) => tracing::warn!(control_plane = %url, error = %e, "config stream failed"),
            }
            if progressed {
                backoff.reset();
            }
            let delay = backoff.next_delay();
            tracing::debug!(?delay, "reconnecting to a control plane");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.changed() => return,
            }
        }
    }

    async fn session(&self, endpoint: &Endpoint, progressed: &mut bool) -> Result<(), SessionError> {
        let channel = endpoint.connect().await?;
        // A large group snapshot (tens of thousands of routes) exceeds tonic's 4 MiB default.
        let mut client =
            ConfigDiscoveryClient::new(channel).max_decoding_message_size(sluice_shared::proto::MAX_MESSAGE_SIZE);
        let (tx, rx) = mpsc::channel::<pb::NodeMessage>(4);
        let hello = pb::Hello {
            node_id: self.node_id.clone(),
            group: self.group.clone(),
            last_applied_revision: self.shared.metrics.revision.load(Ordering::Relaxed),
            version: env!("CARGO_PKG_VERSION").to_string(),
        };
        send(&tx, pb::node_message::Msg::Hello(hello)).await?;
        let mut inbound = client.stream(ReceiverStream::new(rx)).await?.into_inner();
        tracing::info!(control_plane = %endpoint.uri(), "config stream open");
        // Endpoint health goes up the same stream, after the Hello; it ends with the stream.
        let installed = Notify::new();
        tokio::select! {
            r = self.serve(&mut inbound, &tx, &installed, progressed) => r,
            () = report::run(self.shared.clone(), tx.clone(), &installed) => Err(SessionError::SendClosed),
            () = crate::traffic_report::run(self.shared.clone(), tx.clone()) => Err(SessionError::SendClosed),
        }
    }

    async fn serve(
        &self,
        inbound: &mut tonic::Streaming<pb::ServerMessage>,
        tx: &mpsc::Sender<pb::NodeMessage>,
        installed: &Notify,
        progressed: &mut bool,
    ) -> Result<(), SessionError> {
        while let Some(msg) = inbound.message().await? {
            *progressed = true;
            match msg.msg {
                Some(pb::server_message::Msg::Snapshot(snapshot)) => {
                    let (revision, nonce) = (snapshot.revision, snapshot.nonce.clone());
                    let mut installer = self.installer.lock().await;
                    let reply = match installer.install(snapshot, true).await {
                        Ok(left_out) => {
                            installed.notify_one();
                            let errors = left_out.into_iter().map(Into::into).collect();
                            pb::node_message::Msg::Ack(pb::Ack { revision, nonce, errors })
                        }
                        Err(e) => {
                            installer.rejected();
                            tracing::warn!(revision, error = %e, "snapshot refused, previous config keeps serving");
                            pb::node_message::Msg::Nack(pb::Nack { revision, nonce, message: e.to_string() })
                        }
                    };
                    drop(installer);
                    send(tx, reply).await?;
                }
                Some(pb::server_message::Msg::Advance(a)) => {
                    tracing::debug!(revision = a.revision, "revision advanced without changes");
                    self.installer.lock().await.advance(a.revision);
                }
                Some(pb::server_message::Msg::FleetShare(f)) => {
                    tracing::debug!(group_nodes = f.group_nodes, "fleet-wide limits shared among the group's nodes");
                    self.shared.group_nodes.store(f.group_nodes.max(1), std::sync::atomic::Ordering::Relaxed);
                }
                None => tracing::debug!("ignoring an empty server message"),
            }
        }
        Ok(())
    }
}

async fn send(tx: &mpsc::Sender<pb::NodeMessage>, msg: pb::node_message::Msg) -> Result<(), SessionError> {
    tx.send(pb::NodeMessage { msg: Some(msg) }).await.map_err(|_| SessionError::SendClosed)
}

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error(transparent)]
    Invalid(#[from] tonic::transport::Error),
    #[error("an https:// control plane needs the CA to verify it (--tls-ca)")]
    HttpsWithoutTls,
    #[error("TLS settings are given, so the control plane URL must be https://")]
    TlsWithoutHttps,
}

/// A tonic endpoint for a `--control-plane` URL; `https://` ones verify the control plane against
/// `tls.ca_pem` and present the client certificate, if any (mTLS).
pub fn endpoint(url: &str, tls: Option<&ControlPlaneTls>) -> Result<Endpoint, EndpointError> {
    let mut e = Endpoint::from_shared(url.to_string())?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(15))
        .keep_alive_timeout(Duration::from_secs(10));
    let https = e.uri().scheme_str() == Some("https");
    match (https, tls) {
        (true, Some(tls)) => {
            sluice_shared::certs::ensure_default_crypto_provider();
            let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&tls.ca_pem));
            if let Some((cert, key)) = &tls.client {
                config = config.identity(Identity::from_pem(cert, key));
            }
            e = e.tls_config(config)?;
        }
        (true, None) => return Err(EndpointError::HttpsWithoutTls),
        (false, Some(_)) => return Err(EndpointError::TlsWithoutHttps),
        (false, None) => {}
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut b = Backoff::new();
        let mut last_cap = Duration::ZERO;
        for _ in 0..20 {
            let cap = b.next;
            let d = b.next_delay();
            assert!(d >= cap / 2 && d <= cap, "{d:?} outside [{:?}, {cap:?}]", cap / 2);
            assert!(cap >= last_cap);
            last_cap = cap;
        }
        assert_eq!(last_cap, BACKOFF_CAP);
        b.reset();
        assert!(b.next_delay() <= BACKOFF_START);
    }
}
