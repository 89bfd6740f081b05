//! The L7 proxy: HTTP/1.1 on hyper, with strict request-head checks in front of it.

pub mod body;
pub mod errors;
pub mod guard;
pub mod head;
pub mod proxy;
pub mod redirect;
pub mod server;
pub mod sticky;
pub mod upstream;
