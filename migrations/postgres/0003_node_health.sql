-- Endpoint health as each connected data-plane node reports it (issue 6): one row per (node,
-- cluster), endpoints a JSON array of {"address", "healthy", "ejected"}. A node's rows are replaced
-- by its reports and removed when its stream ends; GET /v1/clusters/{name} reads them.
CREATE TABLE node_health (
    node_id TEXT NOT NULL,
    cluster TEXT NOT NULL,
    endpoints TEXT NOT NULL,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (node_id, cluster)
);
CREATE INDEX node_health_by_cluster ON node_health (cluster);
