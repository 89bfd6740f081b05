//! Persistent store: see PLAN (owner A).
