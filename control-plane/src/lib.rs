//! Sluice control plane: store, REST API, config stream server.
