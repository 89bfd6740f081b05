-- Fleet-wide settings the control plane generates once and every replica shares (issue 6):
-- `sticky_key`, hex of the 32-byte key that signs sticky cookies, sent to nodes in each snapshot.
CREATE TABLE settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
