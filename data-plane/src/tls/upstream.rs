//! TLS from the proxy to a cluster's endpoints: the endpoint's certificate is verified against the
//! cluster's CA bundle (name: `server_name`, else the endpoint's IP), and the cluster's client
//! certificate, if any, is presented (mTLS).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use sluice_shared::model::{Certificate, UpstreamProtocol, UpstreamTls};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::HANDSHAKE_TIMEOUT;

/// Tells pooled connections of different TLS settings apart (0 is plaintext).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// One cluster's client-side TLS settings, built once per change of them.
pub struct UpstreamTlsConfig {
    id: u64,
    connector: TlsConnector,
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for UpstreamTlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTlsConfig").field("id", &self.id).field("server_name", &self.server_name).finish()
    }
}

impl UpstreamTlsConfig {
    /// `client`: the certificate resource the cluster presents, already looked up.
    /// `protocol`: what ALPN offers (`http1`: `http/1.1`; `http2`: `h2`; `auto`: both, h2 first).
    pub fn new(
        spec: &UpstreamTls,
        client: Option<&Certificate>,
        protocol: UpstreamProtocol,
    ) -> Result<UpstreamTlsConfig, String> {
        let mut roots = RootCertStore::empty();
        for der in CertificateDer::pem_slice_iter(spec.ca_pem.as_bytes()) {
            let der = der.map_err(|_| "tls.ca_pem is not valid PEM".to_string())?;
            roots.add(der).map_err(|e| format!("tls.ca_pem: {e}"))?;
        }
        if roots.is_empty() {
            return Err("tls.ca_pem holds no certificate".into());
        }
        let builder = ClientConfig::builder_with_provider(super::provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        let mut config = match client {
            None => builder.with_no_client_auth(),
            Some(c) => {
                let chain = CertificateDer::pem_slice_iter(c.cert_pem.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| "client certificate: cert_pem is not valid PEM".to_string())?;
                let key = PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes())
                    .map_err(|_| "client certificate: key_pem holds no readable private key".to_string())?;
                builder.with_client_auth_cert(chain, key).map_err(|_| "client certificate: unusable key".to_string())?
            }
        };
        config.alpn_protocols = match protocol {
            UpstreamProtocol::Http1 => vec![b"http/1.1".to_vec()],
            UpstreamProtocol::Http2 => vec![b"h2".to_vec()],
            UpstreamProtocol::Auto => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        };
        let server_name = match &spec.server_name {
            Some(n) => Some(ServerName::try_from(n.clone()).map_err(|_| format!("tls.server_name {n:?} is invalid"))?),
            None => None,
        };
        Ok(UpstreamTlsConfig {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }

    /// Distinguishes pools: connections made with other settings are never reused for these.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The TLS handshake on a connected stream to `addr`, bounded in time.
    pub async fn connect(&self, addr: SocketAddr, stream: TcpStream) -> io::Result<TlsStream<TcpStream>> {
        let name = self.server_name.clone().unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.connector.connect(name, stream)).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "upstream TLS handshake timed out")),
        }
    }
}
