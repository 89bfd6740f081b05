//! TLS on the data plane: termination for `https` listeners (rustls, certificate by SNI) and
//! ClientHello peeking for `tls` passthrough listeners.
//!
//! Each installed revision carries its own [`ServerConfigs`]: a rotated certificate reaches the
//! handshakes that start after the swap, while connections already up keep their session. A
//! listener whose certificates did not change keeps its `ServerConfig` (and so its resumption state).

pub mod client_hello;
pub mod passthrough;
pub mod resolver;
pub mod terminate;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::ServerConfig;
use rustls::sign::CertifiedKey;
use sluice_shared::model::{Certificate, Protocol};
use sluice_shared::Config;

use resolver::SniResolver;

/// A client gets this long to complete a TLS handshake (or, on passthrough, to send its ClientHello).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a snapshot's TLS material cannot serve; the text ends up in the NACK (never key material).
#[derive(Debug, thiserror::Error)]
#[error("listener {listener}: {message}")]
pub struct TlsError {
    pub listener: String,
    pub message: String,
}

/// The rustls server configuration of every https listener of one revision.
#[derive(Default)]
pub struct ServerConfigs {
    by_listener: HashMap<String, Entry>,
}

struct Entry {
    /// What the config was built from, to reuse it when a later revision leaves it unchanged.
    source: Vec<Certificate>,
    config: Arc<ServerConfig>,
}

impl ServerConfigs {
    /// Builds the configs of `cfg`'s https listeners, reusing `previous` ones whose certificates are
    /// unchanged. CPU work (key parsing): call it off the runtime's worker threads.
    pub fn build(cfg: &Config, previous: Option<&ServerConfigs>) -> Result<ServerConfigs, TlsError> {
        let mut keys: HashMap<&str, (Arc<CertifiedKey>, Vec<String>)> = HashMap::new();
        let mut by_listener = HashMap::new();
        for (name, l) in &cfg.listeners {
            if l.protocol != Protocol::Https {
                continue;
            }
            let err = |message: String| TlsError { listener: name.clone(), message };
            let mut source = Vec::with_capacity(l.certificates.len());
            for c in &l.certificates {
                let cert = cfg.certificates.get(c).ok_or_else(|| err(format!("certificate {c:?} does not exist")))?;
                source.push(cert.clone());
            }
            if let Some(prev) = previous.and_then(|p| p.by_listener.get(name)).filter(|e| e.source == source) {
                by_listener.insert(name.clone(), Entry { source, config: prev.config.clone() });
                continue;
            }
            let mut certs = Vec::with_capacity(source.len());
            for (c, cert) in l.certificates.iter().zip(&source) {
                if !keys.contains_key(c.as_str()) {
                    let loaded = load(cert).map_err(|m| err(format!("certificate {c}: {m}")))?;
                    keys.insert(c, loaded);
                }
                certs.push(keys[c.as_str()].clone());
            }
            let resolver = SniResolver::new(certs).ok_or_else(|| err("an https listener needs a certificate".into()))?;
            let config = server_config(resolver).map_err(|e| err(e.to_string()))?;
            by_listener.insert(name.clone(), Entry { source, config });
        }
        Ok(ServerConfigs { by_listener })
    }

    pub fn get(&self, listener: &str) -> Option<&Arc<ServerConfig>> {
        self.by_listener.get(listener).map(|e| &e.config)
    }
}

/// The crypto provider of every TLS endpoint of the node.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS 1.2 and 1.3 only, ALPN `http/1.1`, certificate by SNI.
fn server_config(resolver: SniResolver) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
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
        let first = ServerConfigs::build(&cfg, None).unwrap();
        assert!(first.get("web").is_some());
        assert!(first.get("plain").is_none());
        let same = ServerConfigs::build(&cfg, Some(&first)).unwrap();
        assert!(Arc::ptr_eq(first.get("web").unwrap(), same.get("web").unwrap()));
        let rotated = ServerConfigs::build(&config(&[("a", cert(&["a.test"]))]), Some(&first)).unwrap();
        assert!(!Arc::ptr_eq(first.get("web").unwrap(), rotated.get("web").unwrap()));
        let cfg = first.get("web").unwrap();
        assert_eq!(cfg.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn a_mismatched_key_is_refused_without_quoting_it() {
        let mut bad = cert(&["a.test"]);
        bad.key_pem = cert(&["b.test"]).key_pem;
        let err = ServerConfigs::build(&config(&[("a", bad.clone())]), None).err().unwrap().to_string();
        assert!(err.contains("listener web: certificate a: the private key does not match"), "{err}");
        assert!(!err.contains("PRIVATE KEY"));
    }
}
