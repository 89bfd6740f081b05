//! Sluice data plane: listeners, the L4 and L7 proxy, the route table (compiled off the hot path,
//! swapped in with one `ArcSwap::store`) and the config stream client.

pub mod table;
