//! Generated protobuf types and gRPC stubs of `proto/sluice/config/v1`.

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("sluice.config.v1");
}

/// Never shows the private key, so a certificate in a log line or panic message leaks nothing.
impl std::fmt::Debug for v1::Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("name", &self.name)
            .field("cert_pem", &format_args!("<{} bytes>", self.cert_pem.len()))
            .field("key_pem", &format_args!("<redacted>"))
            .finish()
    }
}

/// Like the generated Debug, without the sticky-cookie key (certificates redact their own keys).
impl std::fmt::Debug for v1::Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("revision", &self.revision)
            .field("nonce", &self.nonce)
            .field("control_plane_id", &self.control_plane_id)
            .field("listeners", &self.listeners)
            .field("routes", &self.routes)
            .field("clusters", &self.clusters)
            .field("certificates", &self.certificates)
            .field("sticky_key", &format_args!("<{} bytes, redacted>", self.sticky_key.len()))
            .finish()
    }
}

/// Largest config stream message either side handles. tonic's default decode limit is 4 MiB, which a
/// group of ~25,000 routes exceeds (10,000 routes encode to about 1.7 MiB), so both ends set this.
pub const MAX_MESSAGE_SIZE: usize = 256 * 1024 * 1024;

/// Most endpoints one `HealthReport` carries: nodes stop there, the control plane refuses more.
pub const MAX_HEALTH_REPORT_ENDPOINTS: usize = 10_000;

#[cfg(test)]
mod tests {
    use super::v1;

    #[test]
    fn debug_output_redacts_secrets() {
        let c = v1::Certificate { name: "c".into(), cert_pem: "CERT".into(), key_pem: "SECRET-KEY".into() };
        let s = v1::Snapshot { certificates: vec![c], sticky_key: b"STICKY".to_vec(), ..Default::default() };
        let text = format!("{s:?}");
        assert!(!text.contains("SECRET-KEY") && !text.contains("STICKY") && !text.contains("83, 84"), "{text}");
        assert!(text.contains("redacted"));
    }
}
