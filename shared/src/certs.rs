//! Certificate material: parses a PEM chain and its private key, checks that they belong together
//! and are valid at a given time, and reads the names the leaf serves (for SNI and the REST views).
//!
//! Pure functions over text; the clock is a parameter. Error messages never quote key material.

use rustls::crypto::ring::sign::any_supported_type;
use rustls_pki_types::pem::{PemObject, SectionKind};
use rustls_pki_types::PrivateKeyDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::clock::rfc3339_s;
use crate::model::Certificate;
use crate::validate::{Result, ValidationError};

/// What a certificate's leaf says about itself. Times are Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// DNS names of the subject alternative names (lower case, `*.` wildcards kept), else the
    /// subject's common name; may be empty (the certificate can still be a listener's default).
    pub server_names: Vec<String>,
    pub not_before: i64,
    pub not_after: i64,
    /// Certificates in `cert_pem`, the leaf first.
    pub chain_len: usize,
}

/// Everything a stored certificate must pass at time `now` (Unix seconds): a parseable chain, one
/// parseable private key that matches the leaf, and every certificate of the chain valid at `now`.
pub fn check(cert: &Certificate, now: i64) -> Result<CertificateInfo> {
    let info = check_material(cert)?;
    let ders = chain_ders(&cert.cert_pem)?;
    for (i, der) in ders.iter().enumerate() {
        let x509 = parse_x509(der, i)?;
        let validity = x509.validity();
        let (from, until) = (validity.not_before.timestamp(), validity.not_after.timestamp());
        let which = if i == 0 { "the certificate".to_string() } else { format!("certificate {} of the chain", i + 1) };
        if now < from {
            return Err(invalid_cert(format!("{which} is not valid before {}", rfc3339_s(from))));
        }
        if now > until {
            return Err(invalid_cert(format!("{which} expired at {}", rfc3339_s(until))));
        }
    }
    Ok(info)
}

/// The clock-free part of [`check`]: parsing and key matching. A node runs this on each snapshot,
/// so a certificate that expires while stored does not make nodes refuse every later revision.
pub fn check_material(cert: &Certificate) -> Result<CertificateInfo> {
    let info = inspect(&cert.cert_pem)?;
    let ders = chain_ders(&cert.cert_pem)?;
    let leaf = parse_x509(&ders[0], 0)?;
    let key = private_key(&cert.key_pem)?;
    let signing = any_supported_type(&key).map_err(|_| {
        invalid_key("the private key cannot be loaded: not an RSA, ECDSA (P-256, P-384) or Ed25519 key, or corrupt")
    })?;
    let spki = signing.public_key().ok_or_else(|| invalid_key("cannot derive the public key of this private key"))?;
    let (_, derived) = SubjectPublicKeyInfo::from_der(spki.as_ref())
        .map_err(|_| invalid_key("cannot derive the public key of this private key"))?;
    let expected = leaf.public_key();
    if derived.algorithm.algorithm != expected.algorithm.algorithm
        || derived.subject_public_key.data != expected.subject_public_key.data
    {
        return Err(invalid_key("the private key does not match the certificate (the first one of cert_pem)"));
    }
    Ok(info)
}

/// Reads the leaf of a PEM chain (parsing every certificate of it); no key or clock checks.
pub fn inspect(cert_pem: &str) -> Result<CertificateInfo> {
    let ders = chain_ders(cert_pem)?;
    for (i, der) in ders.iter().enumerate().skip(1) {
        parse_x509(der, i)?;
    }
    let leaf = parse_x509(&ders[0], 0)?;
    let validity = leaf.validity();
    Ok(CertificateInfo {
        server_names: server_names(&leaf),
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
        chain_len: ders.len(),
    })
}

fn invalid_cert(message: impl Into<String>) -> ValidationError {
    ValidationError::invalid("cert_pem", message)
}

fn invalid_key(message: impl Into<String>) -> ValidationError {
    ValidationError::invalid("key_pem", message)
}

/// The DER of each CERTIFICATE section, at least one. Anything else is refused: reads return
/// `cert_pem`, so a private key pasted into it must never be stored.
fn chain_ders(cert_pem: &str) -> Result<Vec<Vec<u8>>> {
    if cert_pem.contains("PRIVATE KEY") {
        return Err(invalid_cert("holds a private key; it belongs in key_pem"));
    }
    let mut ders = Vec::new();
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(cert_pem.as_bytes()) {
        match section {
            Ok((SectionKind::Certificate, der)) => ders.push(der),
            Ok((kind, _)) => {
                return Err(invalid_cert(format!("holds a {kind:?} section; only certificates belong here")))
            }
            Err(e) => return Err(invalid_cert(format!("is not valid PEM: {e}"))),
        }
    }
    if ders.is_empty() {
        return Err(invalid_cert("no PEM certificate found (-----BEGIN CERTIFICATE-----)"));
    }
    Ok(ders)
}

fn parse_x509(der: &[u8], index: usize) -> Result<X509Certificate<'_>> {
    let which =
        if index == 0 { "the certificate".to_string() } else { format!("certificate {} of the chain", index + 1) };
    match x509_parser::parse_x509_certificate(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(invalid_cert(format!("{which} has trailing data after its DER encoding"))),
        Err(e) => Err(invalid_cert(format!("{which} is not a valid X.509 certificate: {e}"))),
    }
}

/// Exactly one unencrypted private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
fn private_key(key_pem: &str) -> Result<PrivateKeyDer<'static>> {
    if key_pem.contains("ENCRYPTED") {
        return Err(invalid_key("encrypted private keys are not supported; store the key unencrypted"));
    }
    let mut keys = Vec::new();
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(key_pem.as_bytes()) {
        // The decoder's own message could quote bytes of the key: say only where the problem is.
        let (kind, der) = section.map_err(|_| invalid_key("is not valid PEM"))?;
        match kind {
            SectionKind::PrivateKey => keys.push(PrivateKeyDer::Pkcs8(der.into())),
            SectionKind::RsaPrivateKey => keys.push(PrivateKeyDer::Pkcs1(der.into())),
            SectionKind::EcPrivateKey => keys.push(PrivateKeyDer::Sec1(der.into())),
            _ => {}
        }
    }
    match keys.len() {
        1 => Ok(keys.remove(0)),
        0 => Err(invalid_key("no PEM private key found (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)")),
        n => Err(invalid_key(format!("holds {n} private keys; give exactly one"))),
    }
}

fn server_names(leaf: &X509Certificate<'_>) -> Vec<String> {
    let mut names: Vec<String> = match leaf.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(dns) => Some(dns.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        names =
            leaf.subject().iter_common_name().filter_map(|cn| cn.as_str().ok()).map(str::to_ascii_lowercase).collect();
    }
    names.dedup();
    names
}

/// Makes aws-lc-rs the process-wide rustls provider if none is set yet. rustls picks one by itself
/// only when a single provider is compiled in; this workspace has two (ring for certificate
/// checks and tests, aws-lc-rs for the data plane's TLS), and tonic's TLS uses the process
/// default. Idempotent; call before building a tonic TLS config.
pub fn ensure_default_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

#[cfg(test)]
pub(crate) mod testing {
    //! Certificates made on the spot with rcgen, for this crate's tests.
    use std::time::Duration;

    use rcgen::{date_time_ymd, CertificateParams, DnType, KeyPair};

    use crate::model::Certificate;

    /// A self-signed certificate for `names`, valid from `from` to `until` (Unix seconds).
    pub(crate) fn certificate(names: &[&str], from: i64, until: i64) -> Certificate {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, "sluice test");
        let epoch = date_time_ymd(1970, 1, 1);
        params.not_before = epoch + Duration::from_secs(from.max(0).unsigned_abs());
        params.not_after = epoch + Duration::from_secs(until.max(0).unsigned_abs());
        let cert = params.self_signed(&key).unwrap();
        Certificate { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }

    /// Valid for a year around now.
    pub(crate) fn valid(names: &[&str]) -> Certificate {
        let now = crate::clock::unix_now_ms() / 1000;
        certificate(names, now - 86_400, now + 365 * 86_400)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{certificate, valid};
    use super::*;

    const DAY: i64 = 86_400;

    fn now() -> i64 {
        crate::clock::unix_now_ms() / 1000
    }

    fn field_and_message(r: Result<CertificateInfo>) -> (String, String) {
        let e = r.unwrap_err();
        (e.field.unwrap_or_default(), e.message)
    }

    #[test]
    fn a_valid_certificate_shows_its_names_and_dates() {
        let c = certificate(&["shop.example", "*.shop.example"], now() - DAY, now() + 30 * DAY);
        let info = check(&c, now()).unwrap();
        assert_eq!(info.server_names, vec!["shop.example", "*.shop.example"]);
        assert!(info.not_after > now() && info.not_before < now());
        assert_eq!(info.chain_len, 1);
    }

    #[test]
    fn without_san_the_common_name_is_the_name() {
        let c = valid(&[]);
        assert_eq!(check(&c, now()).unwrap().server_names, vec!["sluice test"]);
    }

    #[test]
    fn a_chain_is_read_leaf_first() {
        let leaf = valid(&["leaf.example"]);
        let other = valid(&["ca.example"]);
        let chained = Certificate { cert_pem: format!("{}{}", leaf.cert_pem, other.cert_pem), ..leaf };
        let info = check(&chained, now()).unwrap();
        assert_eq!((info.server_names, info.chain_len), (vec!["leaf.example".to_string()], 2));
    }

    #[test]
    fn expired_and_not_yet_valid_are_refused() {
        let expired = certificate(&["a.example"], now() - 10 * DAY, now() - DAY);
        let (field, message) = field_and_message(check(&expired, now()));
        assert_eq!(field, "cert_pem");
        assert!(message.contains("expired"), "{message}");
        assert!(check_material(&expired).is_ok(), "the clock-free check accepts it");
        let future = certificate(&["a.example"], now() + DAY, now() + 10 * DAY);
        let (field, message) = field_and_message(check(&future, now()));
        assert_eq!(field, "cert_pem");
        assert!(message.contains("not valid before"), "{message}");
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let a = valid(&["a.example"]);
        let b = valid(&["b.example"]);
        let mixed = Certificate { cert_pem: a.cert_pem, key_pem: b.key_pem };
        let (field, message) = field_and_message(check(&mixed, now()));
        assert_eq!(field, "key_pem");
        assert!(message.contains("does not match"), "{message}");
    }

    #[test]
    fn garbage_is_refused_naming_the_field() {
        let good = valid(&["a.example"]);
        let cases = [
            (Certificate { cert_pem: "hello".into(), ..good.clone() }, "cert_pem"),
            (
                Certificate {
                    cert_pem: "-----BEGIN CERTIFICATE-----\nMIIE\n-----END CERTIFICATE-----\n".into(),
                    ..good.clone()
                },
                "cert_pem",
            ),
            (Certificate { cert_pem: format!("{}{}", good.cert_pem, good.key_pem), ..good.clone() }, "cert_pem"),
            (Certificate { key_pem: "nope".into(), ..good.clone() }, "key_pem"),
            (
                Certificate {
                    key_pem: "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n".into(),
                    ..good.clone()
                },
                "key_pem",
            ),
            (Certificate { key_pem: format!("{}{}", good.key_pem, good.key_pem), ..good.clone() }, "key_pem"),
            (Certificate { key_pem: good.cert_pem.clone(), ..good.clone() }, "key_pem"),
            (
                Certificate {
                    key_pem: "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIE\n-----END ENCRYPTED PRIVATE KEY-----\n"
                        .into(),
                    ..good.clone()
                },
                "key_pem",
            ),
        ];
        for (cert, expected) in cases {
            let (field, message) = field_and_message(check(&cert, now()));
            assert_eq!(field, expected, "{message}");
            assert!(!message.contains("MII"), "messages never quote PEM bodies: {message}");
        }
    }

    #[test]
    fn debug_redacts_the_key_and_nodes_accept_expired_material() {
        let expired = certificate(&["a.example"], now() - 10 * DAY, now() - DAY);
        let text = format!("{expired:?}");
        assert!(!text.contains("PRIVATE KEY") && text.contains("redacted"), "{text}");
        assert!(expired.validate().is_err(), "a write refuses it");
        let mut config = crate::Config::default();
        config.certificates.insert("old".into(), expired);
        config.validate().expect("a node keeps a certificate that expired while stored");
    }

    #[test]
    fn ed25519_keys_match_too() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let params = rcgen::CertificateParams::new(vec!["ed.example".to_string()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let c = Certificate { cert_pem: cert.pem(), key_pem: key.serialize_pem() };
        assert_eq!(check(&c, now()).unwrap().server_names, vec!["ed.example"]);
    }
}
