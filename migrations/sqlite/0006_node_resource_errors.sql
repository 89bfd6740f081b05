-- The resources a node could not apply at its acknowledged revision (a listener whose port is
-- taken on it, say): a JSON array of {"kind", "name", "message"}; empty when it applied cleanly.
ALTER TABLE nodes ADD COLUMN resource_errors TEXT NOT NULL DEFAULT '[]';
