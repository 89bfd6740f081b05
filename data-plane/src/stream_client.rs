//! The config stream client (DESIGN §4): one bidirectional stream to a control plane, Hello first,
//! then each Snapshot is installed and answered with Ack or Nack. When the stream fails, the node
//! keeps serving and reconnects with jittered exponential backoff (capped at 30 s), rotating over
//! every configured control-plane URL. A control plane that refuses this node's client certificate
//! (or one this node does not trust) is named as such in the log, with what to check.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sluice_shared::model::{Certificate as CertificatePem, UpstreamProtocol, UpstreamTls};
use sluice_shared::proto::v1 as pb;
use sluice_shared::proto::v1::config_discovery_client::ConfigDiscoveryClient;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch, Mutex, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::health::report;
use crate::install::Installer;
use crate::node::ControlPlaneTls;
use crate::state::Shared;
use crate::tls::upstream::UpstreamTlsConfig;

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct StreamClient {
    pub endpoints: Vec<ControlPlaneEndpoint>,
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
            let target = &self.endpoints[attempt % self.endpoints.len()];
            attempt += 1;
            let url = target.endpoint.uri().to_string();
            let mut progressed = false;
            let result = tokio::select! {
                r = self.session(&target.endpoint, &mut progressed) => r,
                _ = stop.changed() => return,
            };
            match result {
                Ok(()) => tracing::info!(control_plane = %url, "config stream closed by the control plane"),
                Err(e) => {
                    // A refusal after the handshake often reaches the request as a mere
                    // "connection closed": a handshake of our own tells.
                    let refusal = match classify(&e) {
                        None if !progressed && matches!(e, SessionError::Status(_)) => tokio::select! {
                            r = target.probe() => r,
                            _ = stop.changed() => return,
                        },
                        found => found,
                    };
                    match refusal {
                        Some(r) => tracing::error!(control_plane = %url, "{}", r.explain(&url)),
                        None => tracing::warn!(control_plane = %url, error = %e, "config stream failed"),
                    }
                }
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
                            self.shared.synced.store(true, std::sync::atomic::Ordering::Relaxed);
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
                    self.shared.synced.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                Some(pb::server_message::Msg::FleetShare(f)) => {
                    tracing::debug!(group_nodes = f.group_nodes, "fleet-wide limits shared among the group's nodes");
                    self.shared.group_nodes.store(f.group_nodes.max(1), std::sync::atomic::Ordering::Relaxed);
                    // Sent after the control plane brought the node up to date: what the node
                    // holds is current (a node already current gets no snapshot).
                    self.shared.synced.store(true, std::sync::atomic::Ordering::Relaxed);
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

/// One `--control-plane` URL: its tonic endpoint, and the TLS settings it was made with (kept to
/// tell why a handshake was refused).
pub struct ControlPlaneEndpoint {
    endpoint: Endpoint,
    tls: Option<ControlPlaneTls>,
}

/// A tonic endpoint for a `--control-plane` URL; `https://` ones verify the control plane against
/// `tls.ca_pem` and present the client certificate, if any (mTLS).
pub fn endpoint(url: &str, tls: Option<&ControlPlaneTls>) -> Result<ControlPlaneEndpoint, EndpointError> {
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
    Ok(ControlPlaneEndpoint { endpoint: e, tls: tls.filter(|_| https).cloned() })
}

/// Why TLS to a control plane failed, in terms an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsRefusal {
    /// The control plane refused this node's client certificate; the TLS alert it sent.
    ClientCertificate(String),
    /// This node does not trust the control plane's certificate; why.
    ServerCertificate(String),
}

impl TlsRefusal {
    pub fn explain(&self, url: &str) -> String {
        match self {
            TlsRefusal::ClientCertificate(alert) => format!(
                "the control plane at {url} refused this node's client certificate ({alert}): check --tls-cert/--tls-key \
                 and the control plane's --grpc-client-ca"
            ),
            TlsRefusal::ServerCertificate(why) => format!(
                "this node does not trust the certificate of the control plane at {url} ({why}): check --tls-ca and \
                 the control plane's --grpc-tls-cert"
            ),
        }
    }
}

/// The alerts a server sends about the client's certificate.
const CLIENT_CERTIFICATE_ALERTS: [&str; 8] = [
    "CertificateRequired",
    "BadCertificate",
    "UnsupportedCertificate",
    "CertificateRevoked",
    "CertificateExpired",
    "CertificateUnknown",
    "UnknownCA",
    "AccessDenied",
];

/// Walks `err`'s sources for a TLS refusal. h2 and hyper pass I/O errors on as their text only,
/// so the rustls error is recognised by type or by its wording.
pub fn classify(err: &(dyn std::error::Error + 'static)) -> Option<TlsRefusal> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(refusal) = classify_one(e) {
            return Some(refusal);
        }
        // io::Error's own source() skips the error it wraps.
        next = match e.downcast_ref::<std::io::Error>().and_then(std::io::Error::get_ref) {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}

fn classify_one(e: &(dyn std::error::Error + 'static)) -> Option<TlsRefusal> {
    if let Some(tls) = e.downcast_ref::<rustls::Error>() {
        return match tls {
            rustls::Error::AlertReceived(alert) => client_alert(&format!("{alert:?}")),
            rustls::Error::InvalidCertificate(why) => Some(TlsRefusal::ServerCertificate(format!("{why:?}"))),
            _ => None,
        };
    }
    let text = e.to_string();
    if let Some((_, rest)) = text.split_once("received fatal alert: ") {
        return client_alert(rest.split(|c: char| !c.is_ascii_alphanumeric()).next().unwrap_or_default());
    }
    let (_, why) = text.split_once("invalid peer certificate: ")?;
    Some(TlsRefusal::ServerCertificate(why.trim().to_string()))
}

fn client_alert(name: &str) -> Option<TlsRefusal> {
    CLIENT_CERTIFICATE_ALERTS.contains(&name).then(|| TlsRefusal::ClientCertificate(name.to_string()))
}

impl ControlPlaneEndpoint {
    /// A TLS handshake of our own with the same settings, then one read: in TLS 1.3 the server
    /// judges the client certificate after the client's handshake is done, and its alert is what
    /// that read returns (an accepted node reads the server's first HTTP/2 frame instead).
    async fn probe(&self) -> Option<TlsRefusal> {
        let tls = self.tls.as_ref()?;
        let uri = self.endpoint.uri();
        let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(443);
        let spec =
            UpstreamTls { ca_pem: tls.ca_pem.clone(), server_name: Some(host.to_string()), client_certificate: None };
        let client =
            tls.client.as_ref().map(|(cert, key)| CertificatePem { cert_pem: cert.clone(), key_pem: key.clone() });
        let config = UpstreamTlsConfig::new(&spec, client.as_ref(), UpstreamProtocol::Http2).ok()?;
        let handshake = async {
            let addr = tokio::net::lookup_host((host, port)).await.ok()?.next()?;
            let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
            let mut stream = match config.connect(addr, tcp).await {
                Ok(s) => s,
                Err(e) => return classify(&e),
            };
            match stream.read(&mut [0u8; 1]).await {
                Err(e) => classify(&e),
                Ok(_) => None,
            }
        };
        tokio::time::timeout(CONNECT_TIMEOUT, handshake).await.ok().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(text: &str) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, text.to_string())
    }

    #[test]
    fn tls_refusals_are_found_in_the_source_chain() {
        // As tonic reports it: a Status whose source is a transport error around hyper's I/O error.
        let alert = rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired);
        let status = tonic::Status::from_error(Box::new(io(&alert.to_string())));
        assert_eq!(classify(&status), Some(TlsRefusal::ClientCertificate("CertificateRequired".into())));

        // A rustls error kept as such inside an io::Error (a failed handshake).
        let unknown_ca = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA),
        );
        assert_eq!(classify(&unknown_ca), Some(TlsRefusal::ClientCertificate("UnknownCA".into())));

        let untrusted = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert_eq!(classify(&untrusted), Some(TlsRefusal::ServerCertificate("UnknownIssuer".into())));
        assert_eq!(
            classify(&io("invalid peer certificate: Expired")),
            Some(TlsRefusal::ServerCertificate("Expired".into()))
        );

        // Not about certificates: no refusal.
        assert_eq!(classify(&io("received fatal alert: ProtocolVersion")), None);
        assert_eq!(classify(&io("connection closed")), None);
        assert_eq!(classify(&std::io::Error::from(std::io::ErrorKind::ConnectionRefused)), None);
    }

    #[test]
    fn a_refusal_says_what_to_check() {
        let line = TlsRefusal::ClientCertificate("UnknownCA".into()).explain("https://cp:7071/");
        assert_eq!(
            line,
            "the control plane at https://cp:7071/ refused this node's client certificate (UnknownCA): check \
             --tls-cert/--tls-key and the control plane's --grpc-client-ca"
        );
        assert!(TlsRefusal::ServerCertificate("UnknownIssuer".into()).explain("https://cp:7071/").contains("--tls-ca"));
    }

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
