//! Generated protobuf types and gRPC stubs of `proto/sluice/config/v1`.

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("sluice.config.v1");
}
