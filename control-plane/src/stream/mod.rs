//! Config stream server (owner B).
