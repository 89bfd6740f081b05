//! TLS on the data plane: termination for `https` listeners (rustls, certificate by SNI) and
//! ClientHello peeking for `tls` passthrough listeners.
//!
//! Each installed revision carries its own [`TlsConfigs`]: a rotated certificate reaches the
//! handshakes that start after the swap, while connections already up keep their session. A
//! listener whose certificates did not change keeps its `ServerConfig` (and so its resumption state).

pub mod client_hello;
pub mod passthrough;
pub mod resolver;
pub mod terminate;
pub mod upstream;

use std::collections::{hash_map, HashMap};
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::aws_lc_rs::sign::any_supported_type;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::ServerConfig;
use rustls::sign::CertifiedKey;
use sluice_shared::model::{Certificate, Protocol, UpstreamProtocol, UpstreamTls};
use sluice_shared::Config;

use crate::table::HttpOptions;
use resolver::SniResolver;
use upstream::UpstreamTlsConfig;

/// A client gets this long to complete a TLS handshake (or, on passthrough, to send its ClientHello).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a snapshot's TLS material cannot serve; the text ends up in the NACK (never key material).
#[derive(Debug, thiserror::Error)]
#[error("{resource}: {message}")]
pub struct TlsError {
    /// `listener NAME` or `cluster NAME`.
    pub resource: String,
    pub message: String,
}

/// The TLS settings of one revision: rustls server configs of the https listeners, and client
/// configs of the clusters with upstream TLS.
#[derive(Default)]
pub struct TlsConfigs {
    by_listener: HashMap<String, Entry>,
    by_cluster: HashMap<String, UpstreamEntry>,
}

struct UpstreamEntry {
    source: (UpstreamTls, Option<Certificate>, UpstreamProtocol),
    config: Arc<UpstreamTlsConfig>,
}

struct Entry {
    /// What the config was built from, to reuse it when a later revision leaves it unchanged.
    source: (Vec<Certificate>, Vec<Vec<u8>>),
    config: Arc<ServerConfig>,
}

impl TlsConfigs {
    /// Builds the configs of `cfg`'s https listeners and TLS clusters, reusing `previous` ones whose
    /// inputs are unchanged. CPU work (key parsing): call it off the runtime's worker threads.
    pub fn build(cfg: &Config, previous: Option<&TlsConfigs>) -> Result<TlsConfigs, TlsError> {
        let mut by_cluster = HashMap::new();
        for (name, c) in &cfg.clusters {
            let Some(spec) = &c.tls else { continue };
            let err = |message: String| TlsError { resource: format!("cluster {name}"), message };
            let client = match &spec.client_certificate {
                Some(n) => Some(
                    cfg.certificates
                        .get(n)
                        .cloned()
                        .ok_or_else(|| err(format!("client certificate {n:?} does not exist")))?,
                ),
                None => None,
            };
            let source = (spec.clone(), client, c.protocol);
            let config = match previous.and_then(|p| p.by_cluster.get(name)).filter(|e| e.source == source) {
                Some(prev) => prev.config.clone(),
                None => Arc::new(UpstreamTlsConfig::new(spec, source.1.as_ref(), c.protocol).map_err(err)?),
            };
            by_cluster.insert(name.clone(), UpstreamEntry { source, config });
        }
        let mut keys: HashMap<&str, (Arc<CertifiedKey>, Vec<String>)> = HashMap::new();
        let mut by_listener = HashMap::new();
        for (name, l) in &cfg.listeners {
            if l.protocol != Protocol::Https {
                continue;
            }
            let err = |message: String| TlsError { resource: format!("listener {name}"), message };
            let mut certs_in = Vec::with_capacity(l.certificates.len());
            for c in &l.certificates {
                let cert = cfg.certificates.get(c).ok_or_else(|| err(format!("certificate {c:?} does not exist")))?;
                certs_in.push(cert.clone());
            }
            let alpn = HttpOptions::new(&l.http_versions, Default::default()).alpn();
            let source = (certs_in, alpn);
            if let Some(prev) = previous.and_then(|p| p.by_listener.get(name)).filter(|e| e.source == source) {
                by_listener.insert(name.clone(), Entry { source, config: prev.config.clone() });
                continue;
            }
            let mut certs = Vec::with_capacity(source.0.len());
            for (c, cert) in l.certificates.iter().zip(&source.0) {
                let loaded = match keys.entry(c.as_str()) {
                    hash_map::Entry::Occupied(o) => o.get().clone(),
                    hash_map::Entry::Vacant(v) => {
                        v.insert(load(cert).map_err(|m| err(format!("certificate {c}: {m}")))?).clone()
                    }
                };
                certs.push(loaded);
            }
            let resolver =
                SniResolver::new(certs).ok_or_else(|| err("an https listener needs a certificate".into()))?;
            let config = server_config(resolver, source.1.clone()).map_err(|e| err(e.to_string()))?;
            by_listener.insert(name.clone(), Entry { source, config });
        }
        Ok(TlsConfigs { by_listener, by_cluster })
    }

    /// The server config of an https listener.
    pub fn server(&self, listener: &str) -> Option<&Arc<ServerConfig>> {
        self.by_listener.get(listener).map(|e| &e.config)
    }

    /// The client config of a cluster with upstream TLS.
    pub fn upstream(&self, cluster: &str) -> Option<&Arc<UpstreamTlsConfig>> {
        if self.by_cluster.is_empty() {
            return None; // the common case: no hashing on the request path
        }
        self.by_cluster.get(cluster).map(|e| &e.config)
    }
}

/// The crypto provider of every TLS endpoint of the node: aws-lc-rs, whose assembly (AVX-512 RSA,
/// faster P-256 and X25519) cut the CPU per full handshake against ring (see docs/BENCHMARKS.md).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// TLS 1.2 and 1.3 only, the listener's ALPN protocols (`h2`, `http/1.1`), certificate by SNI.
fn server_config(resolver: SniResolver, alpn: Vec<Vec<u8>>) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = alpn;
    Ok(Arc::new(config))
}

/// A certificate's chain and signing key, plus the names it serves. Messages never quote the key.
fn load(cert: &Certificate) -> Result<(Arc<CertifiedKey>, Vec<String>), String> {
    let chain = CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| "cert_pem is not a valid PEM certificate chain".to_string())?;
    if chain.is_empty() {
        return Err("cert_pem holds no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes())
        .map_err(|_| "key_pem holds no readable private key".to_string())?;
    let signer = any_supported_type(&key).map_err(|_| "the private key type is not supported".to_string())?;
    let names = sluice_shared::certs::inspect(&cert.cert_pem).map_err(|e| e.to_string())?.server_names;
    let key = CertifiedKey::new(chain, signer);
    // The key must belong to the leaf, or every handshake would fail at the client.
    key.keys_match().map_err(|_| "the private key does not match the certificate".to_string())?;
    Ok((Arc::new(key), names))
}

#[cfg(test)]
pub(crate) fn test_signing_key() -> Arc<dyn rustls::sign::SigningKey> {
    let pair = rcgen::KeyPair::generate().unwrap();
    let der = PrivateKeyDer::try_from(pair.serialize_der()).unwrap();
    any_supported_type(&der).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(names: &[&str]) -> Certificate {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        let c = params.self_signed(&key).unwrap();
        Certificate { cert_pem: c.pem(), key_pem: key.serialize_pem() }
    }

    fn config(certs: &[(&str, Certificate)]) -> Config {
        let mut cfg: Config = serde_json::from_value(serde_json::json!({
            "clusters": {"c": {"endpoints": [{"address": "127.0.0.1:1"}]}},
            "listeners": {
                "web": {"address": "127.0.0.1:0", "protocol": "https",
                        "certificates": certs.iter().map(|(n, _)| *n).collect::<Vec<_>>()},
                "plain": {"address": "127.0.0.1:0", "protocol": "http"}
            }
        }))
        .unwrap();
        for (n, c) in certs {
            cfg.certificates.insert(n.to_string(), c.clone());
        }
        cfg
    }

    #[test]
    fn builds_https_listeners_only_and_reuses_unchanged_ones() {
        let a = cert(&["a.test"]);
        let cfg = config(&[("a", a.clone())]);
        let first = TlsConfigs::build(&cfg, None).unwrap();
        assert!(first.server("web").is_some());
        assert!(first.server("plain").is_none());
        let same = TlsConfigs::build(&cfg, Some(&first)).unwrap();
        assert!(Arc::ptr_eq(first.server("web").unwrap(), same.server("web").unwrap()));
        let rotated = TlsConfigs::build(&config(&[("a", cert(&["a.test"]))]), Some(&first)).unwrap();
        assert!(!Arc::ptr_eq(first.server("web").unwrap(), rotated.server("web").unwrap()));
        let cfg = first.server("web").unwrap();
        assert_eq!(cfg.alpn_protocols, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
    }

    #[test]
    fn a_mismatched_key_is_refused_without_quoting_it() {
        let mut bad = cert(&["a.test"]);
        bad.key_pem = cert(&["b.test"]).key_pem;
        let err = TlsConfigs::build(&config(&[("a", bad.clone())]), None).err().unwrap().to_string();
        assert!(err.contains("listener web: certificate a: the private key does not match"), "{err}");
        assert!(!err.contains("PRIVATE KEY"));
    }
}
