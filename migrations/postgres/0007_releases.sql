-- Staged releases: a write that reaches a canary share of the fleet first. One row per release;
-- at most one is applying or baking at a time. canary: JSON {"group": "…"} or {"nodes": […]};
-- baseline: JSON {node_id: [requests, errors]} of the canary nodes when the bake started.
CREATE TABLE releases (
    revision BIGINT PRIMARY KEY,
    stable_revision BIGINT NOT NULL,
    canary TEXT NOT NULL,
    bake_ms BIGINT NOT NULL,
    max_error_rate DOUBLE PRECISION NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    started_ms BIGINT NOT NULL,
    applying_since_ms BIGINT NOT NULL,
    baking_since_ms BIGINT,
    baseline TEXT NOT NULL DEFAULT '{}',
    reverted_revision BIGINT,
    updated_ms BIGINT NOT NULL
);

-- Each connected node's response counts since it started (its TrafficReport).
CREATE TABLE node_traffic (
    node_id TEXT PRIMARY KEY,
    revision BIGINT NOT NULL,
    requests BIGINT NOT NULL,
    errors BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);
