//! Generated protobuf types and gRPC stubs of `proto/sluice/config/v1`.

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("sluice.config.v1");
}

/// Largest config stream message either side handles. tonic's default decode limit is 4 MiB, which a
/// group of ~25,000 routes exceeds (10,000 routes encode to about 1.7 MiB), so both ends set this.
pub const MAX_MESSAGE_SIZE: usize = 256 * 1024 * 1024;

/// Most endpoints one `HealthReport` carries: nodes stop there, the control plane refuses more.
pub const MAX_HEALTH_REPORT_ENDPOINTS: usize = 10_000;
