//! ControlPlane::start wiring (owner B).
