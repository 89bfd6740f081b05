//! Client connections: HTTP/1.1 (`h1.rs`, our own server loop) and HTTP/2 (`h2.rs`), both
//! handing each request to the one pipeline (`proxy::handle`).

pub mod h1;
pub mod h2;
