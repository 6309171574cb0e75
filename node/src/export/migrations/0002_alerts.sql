-- Version 2: alerts, and the indexes the example queries of docs/export.md use.

-- One row per firing of an alert rule on a node, updated in place when it resolves.
CREATE TABLE {schema}.alerts (
    node        text        NOT NULL,
    rule        text        NOT NULL,
    fired_at    timestamptz NOT NULL,
    state       text        NOT NULL,
    condition   text        NOT NULL,
    value       text        NOT NULL,
    resolved_at timestamptz,
    exported_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (node, rule, fired_at)
);

CREATE INDEX runs_finished_at ON {schema}.runs (finished_at);
CREATE INDEX runs_workflow_finished_at ON {schema}.runs (workflow, finished_at);
CREATE INDEX rollups_window_start ON {schema}.rollups (window_start);
