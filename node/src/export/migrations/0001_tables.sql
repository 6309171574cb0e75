-- Version 1: runs, rollups, nodes and the exporters' checkpoints.
-- `{schema}` is the configured schema, quoted. Times are timestamptz (UTC), durations in ms.

-- One row per run record, keyed by the node that ran it and the run id.
CREATE TABLE {schema}.runs (
    node             text        NOT NULL,
    run_id           text        NOT NULL,
    workflow         text        NOT NULL,
    workflow_version bigint      NOT NULL,
    status           text        NOT NULL,
    started_at       timestamptz NOT NULL,
    finished_at      timestamptz NOT NULL,
    duration_ms      bigint      NOT NULL,
    -- The run's output; text that is not JSON is kept as a JSON string.
    output           jsonb,
    error            text,
    steps            jsonb       NOT NULL,
    exported_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (node, run_id)
);

-- A zone aggregator's summary of one workflow's runs on one node in one window. A newer
-- summary replaces the older one whole.
CREATE TABLE {schema}.rollups (
    zone             text        NOT NULL,
    window_start     timestamptz NOT NULL,
    window_minutes   integer     NOT NULL,
    workflow         text        NOT NULL,
    node             text        NOT NULL,
    runs             bigint      NOT NULL,
    failures         bigint      NOT NULL,
    total_ms         bigint      NOT NULL,
    max_ms           bigint      NOT NULL,
    mean_ms          double precision GENERATED ALWAYS AS
                         (CASE WHEN runs > 0 THEN total_ms::double precision / runs END) STORED,
    last_status      text        NOT NULL,
    last_finished_at timestamptz NOT NULL,
    last_output      jsonb,
    last_run_id      text        NOT NULL,
    exported_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (zone, window_start, window_minutes, workflow, node)
);

-- The fleet inventory, from the mesh registry.
CREATE TABLE {schema}.nodes (
    id           text        PRIMARY KEY,
    name         text        NOT NULL,
    zone         text        NOT NULL,
    role         text,
    tags         text[]      NOT NULL,
    capabilities jsonb       NOT NULL,
    vitals       jsonb,
    addresses    text[]      NOT NULL,
    version      text        NOT NULL,
    heartbeat    bigint      NOT NULL,
    last_seen    timestamptz NOT NULL,
    state        text        NOT NULL,
    exported_at  timestamptz NOT NULL DEFAULT now()
);

-- Where each exporter (a node id) stands: the heads of every document it exported, written in
-- the same transaction as the document's rows.
CREATE TABLE {schema}.export_checkpoint (
    exporter     text        NOT NULL,
    document     text        NOT NULL,
    heads_digest text        NOT NULL,
    heads        text        NOT NULL,
    rows         bigint      NOT NULL,
    exported_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (exporter, document)
);
