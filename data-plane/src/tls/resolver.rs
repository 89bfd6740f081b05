//! Picks an https listener's certificate by the ClientHello's SNI: an exact name first, then a
//! `*.` wildcard one label deep (`*.example.com` serves `a.example.com`, not `a.b.example.com`),
//! else the listener's first certificate.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

#[derive(Debug)]
pub struct SniResolver {
    exact: HashMap<Box<str>, Arc<CertifiedKey>>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<Box<str>, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    /// `certs`: each certificate with the names it serves, in the listener's order. On a name served
    /// by several, the earlier certificate wins. `None` when `certs` is empty.
    pub fn new(certs: Vec<(Arc<CertifiedKey>, Vec<String>)>) -> Option<SniResolver> {
        let default = certs.first()?.0.clone();
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (key, names) in certs {
            for name in names {
                let name = normalize(&name);
                let map = match name.strip_prefix("*.") {
                    Some(suffix) if !suffix.is_empty() => {
                        wildcard.entry(Box::from(suffix)).or_insert_with(|| key.clone());
                        continue;
                    }
                    _ => &mut exact,
                };
                map.entry(name.into_boxed_str()).or_insert_with(|| key.clone());
            }
        }
        Some(SniResolver { exact, wildcard, default })
    }

    /// The certificate for `server_name` (the default when absent or unknown).
    pub fn choose(&self, server_name: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(name) = server_name.map(normalize) else { return &self.default };
        if let Some(k) = self.exact.get(name.as_str()) {
            return k;
        }
        if let Some((first, parent)) = name.split_once('.') {
            if !first.is_empty() {
                if let Some(k) = self.wildcard.get(parent) {
                    return k;
                }
            }
        }
        &self.default
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.choose(hello.server_name()).clone())
    }
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::CertificateDer;

    use super::*;

    /// A stand-in key: the resolver never looks inside, so the leaf bytes tell them apart.
    fn key(tag: u8) -> Arc<CertifiedKey> {
        let signer = crate::tls::test_signing_key();
        Arc::new(CertifiedKey::new(vec![CertificateDer::from(vec![tag])], signer))
    }

    fn tag(k: &Arc<CertifiedKey>) -> u8 {
        k.cert[0].as_ref()[0]
    }

    #[test]
    fn exact_then_one_label_wildcard_then_default() {
        let r = SniResolver::new(vec![
            (key(1), vec!["default.test".into()]),
            (key(2), vec!["api.example.com".into(), "*.example.com".into()]),
            (key(3), vec!["*.EXAMPLE.com".into(), "www.example.com".into()]),
        ])
        .unwrap();
        assert_eq!(tag(r.choose(Some("api.example.com"))), 2);
        assert_eq!(tag(r.choose(Some("WWW.Example.com."))), 3, "exact beats the earlier wildcard");
        assert_eq!(tag(r.choose(Some("x.example.com"))), 2, "the first certificate's wildcard wins");
        assert_eq!(tag(r.choose(Some("a.b.example.com"))), 1, "wildcards cover one label only");
        assert_eq!(tag(r.choose(Some("example.com"))), 1);
        assert_eq!(tag(r.choose(Some(".example.com"))), 1);
        assert_eq!(tag(r.choose(None)), 1);
        assert!(SniResolver::new(Vec::new()).is_none());
    }
}
