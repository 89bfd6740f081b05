//! Sluice control plane: the store (sqlx over SQLite or Postgres), the REST API (axum) and the
//! config stream server (tonic) that every data-plane node subscribes to.

pub mod api;
pub mod nodes;
pub mod release;
pub mod server;
pub mod store;
pub mod stream;

pub use server::{ControlPlane, ControlPlaneError, ControlPlaneOptions};
pub use store::AuditRetention;
