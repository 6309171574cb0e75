//! The PostgreSQL schema the export writes: versioned migrations, and the SQL of its upserts
//! generated from one description of each table.
//!
//! The node creates and migrates the schema itself. `<schema>.schema_version` holds one row per
//! migration applied; migrations run in one transaction under an advisory lock (two exporters
//! starting together migrate once), and a database whose version is newer than this build
//! knows is refused, never written.

use tokio_postgres::types::Type;

/// The migrations, in order: version `i + 1` is `MIGRATIONS[i]`. `{schema}` stands for the
/// quoted schema name. Never edit one that shipped: add the next.
pub const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_tables.sql"),
    include_str!("migrations/0002_alerts.sql"),
];

/// The schema version this build writes.
pub const VERSION: i32 = MIGRATIONS.len() as i32;

/// Key of the advisory lock taken while migrating (any constant; "rhizome" in ASCII).
pub const MIGRATION_LOCK: i64 = 0x0072_6869_7a6f_6d65;

/// A schema name as an SQL identifier: lowercase letters, digits and `_`, not starting with a
/// digit, at most 63 bytes (what PostgreSQL keeps of an identifier).
pub fn check_schema_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a schema name the export takes: use lowercase letters, digits and \
             `_`, not starting with a digit, at most 63 bytes"
        ))
    }
}

/// The schema name quoted for SQL.
pub fn quoted(schema: &str) -> String {
    format!("\"{schema}\"")
}

/// Migration `version` (1-based) for `schema`.
pub fn migration(schema: &str, version: i32) -> String {
    MIGRATIONS[(version - 1) as usize].replace("{schema}", &quoted(schema))
}

/// The statements that create what must exist before the version can be read.
pub fn bootstrap(schema: &str) -> String {
    let s = quoted(schema);
    format!(
        "CREATE SCHEMA IF NOT EXISTS {s};
         CREATE TABLE IF NOT EXISTS {s}.schema_version (
             version    integer     PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now(),
             applied_by text        NOT NULL
         );"
    )
}

/// One column of an exported table, in the order rows bind their values.
#[derive(Debug, Clone)]
pub struct Column {
    pub name: &'static str,
    pub ty: Type,
}

const fn col(name: &'static str, ty: Type) -> Column {
    Column { name, ty }
}

/// An exported table: its columns (those the exporter writes), its key, and the condition
/// under which an existing row is replaced.
#[derive(Debug, Clone, Copy)]
pub struct Table {
    pub name: &'static str,
    pub columns: &'static [Column],
    pub key: &'static [&'static str],
    /// Beyond "something changed": when a stored row may be replaced (`t` is the stored row,
    /// `excluded` the new one); `None` for always.
    pub guard: Option<&'static str>,
    /// Columns whose stored value stays when the new row has none (`NULL`).
    pub keep: &'static [&'static str],
}

pub const RUNS: Table = Table {
    name: "runs",
    columns: &[
        col("node", Type::TEXT),
        col("run_id", Type::TEXT),
        col("workflow", Type::TEXT),
        col("workflow_version", Type::INT8),
        col("status", Type::TEXT),
        col("started_at", Type::TIMESTAMPTZ),
        col("finished_at", Type::TIMESTAMPTZ),
        col("duration_ms", Type::INT8),
        col("output", Type::JSONB),
        col("error", Type::TEXT),
        col("steps", Type::JSONB),
    ],
    key: &["node", "run_id"],
    guard: None,
    keep: &[],
};

pub const ROLLUPS: Table = Table {
    name: "rollups",
    columns: &[
        col("zone", Type::TEXT),
        col("window_start", Type::TIMESTAMPTZ),
        col("window_minutes", Type::INT4),
        col("workflow", Type::TEXT),
        col("node", Type::TEXT),
        col("runs", Type::INT8),
        col("failures", Type::INT8),
        col("total_ms", Type::INT8),
        col("max_ms", Type::INT8),
        col("last_status", Type::TEXT),
        col("last_finished_at", Type::TIMESTAMPTZ),
        col("last_output", Type::JSONB),
        col("last_run_id", Type::TEXT),
    ],
    key: &["zone", "window_start", "window_minutes", "workflow", "node"],
    // A summary covering fewer runs is an older one (two exporters, one behind): it never
    // replaces a newer one.
    guard: Some(
        "(excluded.runs, excluded.last_finished_at, excluded.last_run_id) \
         >= (t.runs, t.last_finished_at, t.last_run_id)",
    ),
    keep: &[],
};

pub const NODES: Table = Table {
    name: "nodes",
    columns: &[
        col("id", Type::TEXT),
        col("name", Type::TEXT),
        col("zone", Type::TEXT),
        col("role", Type::TEXT),
        col("tags", Type::TEXT_ARRAY),
        col("capabilities", Type::JSONB),
        col("vitals", Type::JSONB),
        col("addresses", Type::TEXT_ARRAY),
        col("version", Type::TEXT),
        col("heartbeat", Type::INT8),
        col("last_seen", Type::TIMESTAMPTZ),
        col("state", Type::TEXT),
    ],
    key: &["id"],
    // Entries are rewritten one heartbeat after the other: an older one never comes back.
    // A role only the node itself knows is kept when another exporter writes the row.
    guard: Some("excluded.heartbeat >= t.heartbeat"),
    keep: &["role"],
};

pub const ALERTS: Table = Table {
    name: "alerts",
    columns: &[
        col("node", Type::TEXT),
        col("rule", Type::TEXT),
        col("fired_at", Type::TIMESTAMPTZ),
        col("state", Type::TEXT),
        col("condition", Type::TEXT),
        col("value", Type::TEXT),
        col("resolved_at", Type::TIMESTAMPTZ),
    ],
    key: &["node", "rule", "fired_at"],
    // A firing that resolved does not fire again (an exporter behind would say so).
    guard: Some("NOT (t.state = 'resolved' AND excluded.state <> 'resolved')"),
    keep: &[],
};

pub const CHECKPOINT: Table = Table {
    name: "export_checkpoint",
    columns: &[
        col("exporter", Type::TEXT),
        col("document", Type::TEXT),
        col("heads_digest", Type::TEXT),
        col("heads", Type::TEXT),
        col("rows", Type::INT8),
    ],
    key: &["exporter", "document"],
    guard: None,
    keep: &[],
};

impl Table {
    fn column_list(&self) -> String {
        self.columns
            .iter()
            .map(|c| c.name)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The column types, in binding order.
    pub fn types(&self) -> Vec<Type> {
        self.columns.iter().map(|c| c.ty.clone()).collect()
    }

    /// The parameter types of `rows` rows.
    pub fn types_of(&self, rows: usize) -> Vec<Type> {
        let mut out = Vec::with_capacity(rows * self.columns.len());
        for _ in 0..rows {
            out.extend(self.columns.iter().map(|c| c.ty.clone()));
        }
        out
    }

    /// `ON CONFLICT ... DO UPDATE ...`: every written column replaced when anything differs
    /// (an unchanged row is not rewritten: a replay from scratch writes nothing) and the
    /// guard holds.
    fn on_conflict(&self) -> String {
        let others: Vec<&str> = self
            .columns
            .iter()
            .map(|c| c.name)
            .filter(|c| !self.key.contains(c))
            .collect();
        let new: Vec<String> = others
            .iter()
            .map(|c| {
                if self.keep.contains(c) {
                    format!("COALESCE(excluded.{c}, t.{c})")
                } else {
                    format!("excluded.{c}")
                }
            })
            .collect();
        let set: Vec<String> = others
            .iter()
            .zip(&new)
            .map(|(c, v)| format!("{c} = {v}"))
            .chain(std::iter::once("exported_at = now()".to_owned()))
            .collect();
        let stored: Vec<String> = others.iter().map(|c| format!("t.{c}")).collect();
        let mut condition = format!(
            "({}) IS DISTINCT FROM ({})",
            stored.join(", "),
            new.join(", ")
        );
        if let Some(guard) = self.guard {
            condition = format!("{condition} AND {guard}");
        }
        format!(
            "ON CONFLICT ({}) DO UPDATE SET {} WHERE {condition}",
            self.key.join(", "),
            set.join(", ")
        )
    }

    /// A multi-row upsert of `rows` rows, parameters `$1...` row after row.
    pub fn upsert_values(&self, schema: &str, rows: usize) -> String {
        let n = self.columns.len();
        let mut values = String::with_capacity(rows * n * 6);
        for r in 0..rows {
            if r > 0 {
                values.push_str(", ");
            }
            values.push('(');
            for c in 0..n {
                if c > 0 {
                    values.push_str(", ");
                }
                values.push_str(&format!("${}", r * n + c + 1));
            }
            values.push(')');
        }
        format!(
            "INSERT INTO {}.{} AS t ({}) VALUES {values} {}",
            quoted(schema),
            self.name,
            self.column_list(),
            self.on_conflict()
        )
    }

    /// The session's staging table of the COPY method (emptied at every commit).
    pub fn staging(&self) -> String {
        format!("rhizome_staging_{}", self.name)
    }

    /// Creates the staging table for this session.
    pub fn create_staging(&self, schema: &str) -> String {
        format!(
            "CREATE TEMP TABLE IF NOT EXISTS {} ON COMMIT DELETE ROWS AS \
             SELECT {} FROM {}.{} WITH NO DATA",
            self.staging(),
            self.column_list(),
            quoted(schema),
            self.name
        )
    }

    /// Binary COPY into the staging table.
    pub fn copy_in(&self) -> String {
        format!(
            "COPY {} ({}) FROM STDIN (FORMAT binary)",
            self.staging(),
            self.column_list()
        )
    }

    /// The upsert of everything staged, which the statement then empties for the next batch.
    pub fn upsert_staged(&self, schema: &str) -> String {
        format!(
            "WITH staged AS (DELETE FROM {} RETURNING *) \
             INSERT INTO {}.{} AS t ({cols}) SELECT {cols} FROM staged {}",
            self.staging(),
            quoted(schema),
            self.name,
            self.on_conflict(),
            cols = self.column_list(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_identifiers() {
        assert!(check_schema_name("rhizome").is_ok());
        assert!(check_schema_name("fleet_2").is_ok());
        for bad in ["", "Rhizome", "2fleet", "a-b", "a\"b", &"x".repeat(64)] {
            assert!(check_schema_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn migrations_name_the_schema() {
        assert_eq!(VERSION, 2);
        let v1 = migration("fleet", 1);
        assert!(v1.contains("CREATE TABLE \"fleet\".runs"), "{v1}");
        assert!(!v1.contains("{schema}"));
        assert!(migration("fleet", 2).contains("\"fleet\".alerts"));
    }

    #[test]
    fn upserts_replace_changed_rows_only() {
        let sql = RUNS.upsert_values("rhizome", 2);
        assert!(
            sql.starts_with(
                "INSERT INTO \"rhizome\".runs AS t (node, run_id, workflow, workflow_version, \
                 status, started_at, finished_at, duration_ms, output, error, steps) VALUES \
                 ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11), \
                 ($12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22) \
                 ON CONFLICT (node, run_id) DO UPDATE SET workflow = excluded.workflow, "
            ),
            "{sql}"
        );
        assert!(
            sql.contains("exported_at = now() WHERE (t.workflow, "),
            "{sql}"
        );
        assert!(
            sql.ends_with("IS DISTINCT FROM (excluded.workflow, excluded.workflow_version, excluded.status, excluded.started_at, excluded.finished_at, excluded.duration_ms, excluded.output, excluded.error, excluded.steps)"),
            "{sql}"
        );
        // Never an addition: a newer summary replaces the older whole.
        let sql = ROLLUPS.upsert_values("rhizome", 1);
        assert!(sql.contains("runs = excluded.runs"), "{sql}");
        assert!(!sql.contains("runs + "), "{sql}");
        assert!(sql.ends_with(
            "AND (excluded.runs, excluded.last_finished_at, excluded.last_run_id) >= \
             (t.runs, t.last_finished_at, t.last_run_id)"
        ));
    }

    #[test]
    fn the_copy_method_stages_then_upserts() {
        assert_eq!(
            RUNS.create_staging("s"),
            "CREATE TEMP TABLE IF NOT EXISTS rhizome_staging_runs ON COMMIT DELETE ROWS AS \
             SELECT node, run_id, workflow, workflow_version, status, started_at, finished_at, \
             duration_ms, output, error, steps FROM \"s\".runs WITH NO DATA"
        );
        assert!(RUNS.copy_in().ends_with("FROM STDIN (FORMAT binary)"));
        let sql = ALERTS.upsert_staged("s");
        assert!(
            sql.starts_with(
                "WITH staged AS (DELETE FROM rhizome_staging_alerts RETURNING *) INSERT INTO \
                 \"s\".alerts AS t (node, rule, fired_at"
            ),
            "{sql}"
        );
        assert!(sql.contains("ON CONFLICT (node, rule, fired_at) DO UPDATE"));
        // The role only the node itself knows stays when another exporter writes the row.
        assert!(
            NODES
                .upsert_values("s", 1)
                .contains("role = COALESCE(excluded.role, t.role)")
        );
    }
}
