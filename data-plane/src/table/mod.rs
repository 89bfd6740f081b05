//! Route table: compile + lookup (owner D).
