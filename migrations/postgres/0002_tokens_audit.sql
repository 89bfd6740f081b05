-- API tokens (issue 5). Only the SHA-256 of each secret is kept; scopes and routes are JSON arrays.
-- Tokens are not part of the config: writing one does not bump the revision.
CREATE TABLE tokens (
    name TEXT PRIMARY KEY,
    secret_sha256 TEXT NOT NULL UNIQUE,
    scopes TEXT NOT NULL,
    routes TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);

-- Every mutating API call, allowed or refused. Never holds request bodies.
CREATE TABLE audit (
    id BIGSERIAL PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    who TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    revision_before BIGINT NOT NULL,
    revision_after BIGINT NOT NULL,
    status BIGINT NOT NULL
);
