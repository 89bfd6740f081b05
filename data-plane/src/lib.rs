//! Sluice data plane: listeners, proxy, route table, config stream client.
