-- The single global revision row: every committed write bumps it, inside the write's transaction.
CREATE TABLE revision (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    revision INTEGER NOT NULL
);
INSERT INTO revision (id, revision) VALUES (1, 0);

-- One row per named resource; spec is the resource's JSON (the REST body), revision the one that last changed it.
CREATE TABLE resources (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    revision INTEGER NOT NULL,
    PRIMARY KEY (kind, name)
);

-- What the control plane knows of each data-plane node.
CREATE TABLE nodes (
    id TEXT PRIMARY KEY,
    node_group TEXT NOT NULL,
    acked_revision INTEGER NOT NULL,
    nack_revision INTEGER,
    nack_message TEXT,
    last_seen_ms INTEGER NOT NULL,
    connected INTEGER NOT NULL
);
