//! Sluice's shared contract: the domain model (what operators register), its validation, the config
//! revision types and the conversion between the model and the protobuf types of the config stream.
//!
//! Both the control plane and the data plane depend on this crate and on nothing of each other.
//! It does no I/O.

pub mod certs;
pub mod changes;
pub mod cidr;
pub mod clock;
pub mod config;
pub mod convert;
pub mod endpoint_address;
pub mod model;
pub mod proto;
pub mod rate_limit;
pub mod shadow;
pub mod transforms;
pub mod validate;
pub mod wording;

pub use config::{Config, Kind};
pub use model::*;
pub use validate::{ErrorKind, ValidationError};

/// A global config revision: a monotonically increasing integer, one per committed write.
pub type Revision = u64;
