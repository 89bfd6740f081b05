//! The L7 proxy, HTTP/1.1 and HTTP/2, in layers that import one way:
//!
//! ```text
//!  downstream/  client connections: h1.rs (our HTTP/1.1 server loop), h2.rs (HTTP/2 streams)
//!      │
//!      ▼
//!  proxy/       the one request pipeline, in phases (route, choose the upstream, prepare,
//!      │        tries and retries, finish); body.rs, errors.rs, grpc.rs, sticky.rs,
//!      │        redirect.rs, tunnel.rs beside it
//!      ▼
//!  upstream/    endpoint connections: mod.rs (client and pools), h1.rs (the HTTP/1.1 exchange),
//!      │        head.rs (its response head), h2.rs (multiplexed HTTP/2)
//!      ▼
//!  codec/       framing both sides share: request heads, chunked bodies, headers, response
//!               heads, the client's request body, HTTP/2 bodies
//! ```

pub mod body;
pub mod codec;
pub mod downstream;
pub mod errors;
mod grpc;
pub mod proxy;
pub mod redirect;
pub mod sticky;
pub mod tunnel;
pub mod upstream;
