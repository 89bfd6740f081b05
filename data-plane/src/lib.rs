//! Sluice data plane: listeners, the L4 and L7 proxy, the route table (compiled off the hot path,
//! swapped in with one `ArcSwap::store`) and the config stream client.
//!
//! [`Node`] is the whole runtime; `sluice proxy` and `sluice dev` start one. Life of a request:
//! `listeners` accepts, `http::downstream` reads the request (HTTP/1.1 heads checked and parsed
//! once by `http::codec`, or HTTP/2 streams), `http::proxy` loads the installed table once,
//! routes, picks an endpoint and forwards through the pooled clients of `http::upstream`. Life of a config: `stream_client` receives a snapshot,
//! `install` validates, compiles, binds new listeners, swaps, persists (`cache`) and acknowledges.

mod access_log;
mod admin;
mod cache;
mod dns;
mod fast_hash;
mod flag_waker;
mod health;
mod http;
mod install;
mod l4_stats;
mod lazy_timer;
mod listeners;
mod metrics;
mod node;
mod phase_watch;
mod proxy_protocol;
mod spread;
mod state;
mod stream_client;
pub mod table;
mod tcp;
#[cfg(test)]
mod test_input;
mod tls;
mod traffic_report;
mod udp;
mod upgrade;
mod workers;

pub use cache::{CacheError, SnapshotCache};
pub use dns::DnsOptions;
pub use node::{ControlPlaneTls, Node, NodeError, NodeOptions};
