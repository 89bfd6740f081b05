-- Revision history: who wrote each revision and what it changed, and every resource's spec as of
-- each revision that changed it (spec NULL: deleted then), so any recorded revision's whole config
-- can be rebuilt (GET /v1/revisions/{n}, rollback).
CREATE TABLE revisions (
    revision BIGINT PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    who TEXT NOT NULL,
    summary TEXT NOT NULL
);

CREATE TABLE resource_history (
    revision BIGINT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    spec TEXT,
    PRIMARY KEY (kind, name, revision)
);

-- What is stored now is the history's start: revisions before it cannot be rebuilt.
INSERT INTO resource_history (revision, kind, name, spec) SELECT revision, kind, name, spec FROM resources;
INSERT INTO settings (name, value) SELECT 'history_since', CAST(revision AS TEXT) FROM revision;
