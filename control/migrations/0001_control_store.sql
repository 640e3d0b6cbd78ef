-- The control plane's store. One set of migrations for SQLite and PostgreSQL:
-- only types and statements both understand (TEXT, BIGINT; times are
-- milliseconds since the epoch; lists are JSON text; no autoincrement, ids
-- come from the store's own revision counter).

-- The store's revision: bumped first in every write transaction, so writers
-- are serialized (PostgreSQL's row lock, SQLite's write lock) and every
-- change has one number, in one order.
CREATE TABLE store_meta (
    name TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO store_meta (name, value) VALUES ('revision', 0);

CREATE TABLE agents (
    id TEXT PRIMARY KEY,
    team TEXT NOT NULL,
    project TEXT NOT NULL,
    environment TEXT NOT NULL,
    role TEXT NOT NULL,
    -- Hex SHA-256 of the API key (never the key); NULL: JWT only.
    key_sha256 TEXT,
    -- The key before the last rotation, accepted until previous_key_until.
    previous_key_sha256 TEXT,
    previous_key_until BIGINT,
    disabled BIGINT NOT NULL,
    sources TEXT NOT NULL,
    spiffe_ids TEXT NOT NULL,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    updated_by TEXT NOT NULL
);
CREATE INDEX agents_team ON agents (team);

CREATE TABLE policy_versions (
    id BIGINT PRIMARY KEY,
    -- The bundle's version as audit lines name it: 12 hex digits of SHA-256.
    digest TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    comment TEXT NOT NULL,
    body TEXT NOT NULL,
    signed_by TEXT,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL
);

-- Which version is in force; `version` is what activate and rollback compare.
CREATE TABLE policy_state (
    name TEXT PRIMARY KEY,
    active_id BIGINT,
    version BIGINT NOT NULL
);
INSERT INTO policy_state (name, active_id, version) VALUES ('active', NULL, 0);

CREATE TABLE policy_activations (
    revision BIGINT PRIMARY KEY,
    policy_id BIGINT NOT NULL,
    action TEXT NOT NULL,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL
);

CREATE TABLE admin_tokens (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    teams TEXT NOT NULL,
    token_sha256 TEXT NOT NULL UNIQUE,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL
);

-- Every change, by whom, in store order (an import writes one row per
-- agent, all at its revision). `team` lets a team-scoped reader see its own
-- team's changes only.
CREATE TABLE change_history (
    revision BIGINT NOT NULL,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    role TEXT NOT NULL,
    action TEXT NOT NULL,
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    team TEXT,
    detail TEXT NOT NULL,
    PRIMARY KEY (revision, kind, target)
);
CREATE INDEX change_history_kind ON change_history (kind, revision);
