//! REST API (owner A).
