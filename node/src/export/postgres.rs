//! The database side of the export: connecting, migrating the schema, and writing one
//! transaction of rows together with the checkpoints of the documents they came from.
//!
//! Rows go in batched statements of two kinds ([`Method`]): a multi-row `INSERT ... VALUES
//! ... ON CONFLICT DO UPDATE`, or a binary `COPY` into a session-private staging table then
//! one `INSERT ... SELECT ... ON CONFLICT DO UPDATE` (`bench/export.sh` measures both).

use std::collections::HashMap;
use std::time::Duration;

use futures_util::pin_mut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Statement};

use super::rows::{AlertRow, NodeRow, RollupRow, Rows, RunRow};
use super::schema::{self, ALERTS, CHECKPOINT, NODES, ROLLUPS, RUNS, Table};

/// Longest wait for a connection to be set up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the database to answer one transaction or setup step, unless
/// `export.timeout` says otherwise; past it the connection is dropped (the server rolls the
/// transaction back) and made again. It is what ends a connection that a network cut left
/// silent: no error ever comes on it.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(120);
/// PostgreSQL takes at most this many parameters in one statement.
const MAX_PARAMS: usize = 65_535;

/// How rows are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Method {
    /// Multi-row `INSERT ... VALUES ... ON CONFLICT DO UPDATE`, prepared once per batch size.
    #[default]
    Values,
    /// Binary `COPY` into a staging table, then `INSERT ... SELECT ... ON CONFLICT`.
    Copy,
}

/// What went wrong, each a sentence an operator can act on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ExportError {
    /// The server could not be reached, or the connection broke.
    #[error("cannot reach PostgreSQL at {target}: {detail}")]
    Connect { target: String, detail: String },
    /// The server refused the credentials.
    #[error(
        "PostgreSQL at {target} refused the credentials of user `{user}`: check the user and \
         password of export.postgres ({detail})"
    )]
    Auth {
        target: String,
        user: String,
        detail: String,
    },
    /// The user lacks a privilege the export needs.
    #[error(
        "the database user `{user}` lacks a permission the export needs: {detail}. Grant it \
         CREATE on the database (or create schema `{schema}` for it) and the right to write the \
         schema's tables"
    )]
    Permission {
        user: String,
        schema: String,
        detail: String,
    },
    /// The schema in the database is newer than this build.
    #[error(
        "the schema `{schema}` in the database is at version {found}, newer than this build of \
         rhizome knows (version {known}): nothing is exported until this node runs a rhizome \
         that knows version {found}"
    )]
    NewerSchema {
        schema: String,
        found: i32,
        known: i32,
    },
    /// The server refused a row (a value it does not take); the document stays pending.
    #[error("PostgreSQL refused a row: {detail}")]
    Refused { detail: String },
    /// Another error reported by the server.
    #[error("PostgreSQL failed: {detail}")]
    Database { detail: String },
    /// The database did not answer in time.
    #[error("PostgreSQL did not answer within {0:?}: the connection is made again")]
    Timeout(Duration),
    /// Reading the node's store failed.
    #[error("reading the store failed: {0}")]
    Store(String),
}

impl ExportError {
    /// The bounded label of `rhizome_export_errors_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            ExportError::Connect { .. } => "connect",
            ExportError::Auth { .. } => "auth",
            ExportError::Permission { .. } => "permission",
            ExportError::NewerSchema { .. } => "schema",
            ExportError::Refused { .. } => "refused",
            ExportError::Database { .. } => "database",
            ExportError::Timeout(_) => "timeout",
            ExportError::Store(_) => "store",
        }
    }

    /// Whether the connection must be made again after this error.
    pub fn drops_connection(&self) -> bool {
        !matches!(self, ExportError::Store(_))
    }
}

/// Where a database is, for messages: never its password.
#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port/dbname`.
    pub place: String,
    /// The user.
    pub user: String,
    /// The schema.
    pub schema: String,
}

impl Target {
    /// What a message says of `config`.
    pub fn of(config: &tokio_postgres::Config, schema: &str) -> Target {
        let host = config
            .get_hosts()
            .first()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            })
            .unwrap_or_else(|| "localhost".into());
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let user = config.get_user().unwrap_or("(none)").to_owned();
        let db = config.get_dbname().unwrap_or(&user).to_owned();
        Target {
            place: format!("{host}:{port}/{db}"),
            user,
            schema: schema.to_owned(),
        }
    }

    /// Classifies a driver error.
    pub fn error(&self, e: &tokio_postgres::Error) -> ExportError {
        let detail = describe(e);
        let Some(code) = e.code() else {
            return ExportError::Connect {
                target: self.place.clone(),
                detail,
            };
        };
        if *code == SqlState::INVALID_PASSWORD
            || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        {
            ExportError::Auth {
                target: self.place.clone(),
                user: self.user.clone(),
                detail,
            }
        } else if *code == SqlState::INSUFFICIENT_PRIVILEGE {
            ExportError::Permission {
                user: self.user.clone(),
                schema: self.schema.clone(),
                detail,
            }
        } else if code.code().starts_with("22") || code.code().starts_with("23") {
            ExportError::Refused { detail }
        } else if code.code().starts_with("08") || code.code().starts_with("57P") {
            // Connection exceptions; the server shutting down or restarting.
            ExportError::Connect {
                target: self.place.clone(),
                detail,
            }
        } else {
            ExportError::Database { detail }
        }
    }
}

/// A driver error in one line: the server's message when it sent one.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            text
        }
    }
}

/// The values a row binds, in its table's column order.
pub trait Bind {
    fn bind(&self) -> Vec<&(dyn ToSql + Sync)>;
}

impl Bind for RunRow {
    fn bind(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.node,
            &self.run_id,
            &self.workflow,
            &self.workflow_version,
            &self.status,
            &self.started_at,
            &self.finished_at,
            &self.duration_ms,
            &self.output,
            &self.error,
            &self.steps,
        ]
    }
}

impl Bind for RollupRow {
    fn bind(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.zone,
            &self.window_start,
            &self.window_minutes,
            &self.workflow,
            &self.node,
            &self.runs,
            &self.failures,
            &self.total_ms,
            &self.max_ms,
            &self.last_status,
            &self.last_finished_at,
            &self.last_output,
            &self.last_run_id,
        ]
    }
}

impl Bind for NodeRow {
    fn bind(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.id,
            &self.name,
            &self.zone,
            &self.role,
            &self.tags,
            &self.capabilities,
            &self.vitals,
            &self.addresses,
            &self.version,
            &self.heartbeat,
            &self.last_seen,
            &self.state,
        ]
    }
}

impl Bind for AlertRow {
    fn bind(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.node,
            &self.rule,
            &self.fired_at,
            &self.state,
            &self.condition,
            &self.value,
            &self.resolved_at,
        ]
    }
}

/// Where one document's export stands, as `export_checkpoint` keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub exporter: String,
    /// The document's name.
    pub document: String,
    /// Hex of the heads digest the rows were read at.
    pub heads_digest: String,
    /// The heads themselves, hex, comma-separated.
    pub heads: String,
    /// Rows the document yields at those heads.
    pub rows: i64,
}

impl Bind for Checkpoint {
    fn bind(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.exporter,
            &self.document,
            &self.heads_digest,
            &self.heads,
            &self.rows,
        ]
    }
}

/// An open connection with the schema migrated.
#[derive(Debug)]
pub struct Db {
    client: Client,
    connection: tokio::task::JoinHandle<()>,
    target: Target,
    method: Method,
    batch: usize,
    /// Longest wait for one transaction or setup step.
    timeout: Duration,
    /// Prepared full-batch upserts, by table.
    prepared: HashMap<&'static str, (usize, Statement)>,
    /// The schema version found (before migrating).
    pub found_version: i32,
}

impl Drop for Db {
    fn drop(&mut self) {
        // Closing the socket makes the server roll back whatever was open.
        self.connection.abort();
    }
}

/// What connecting found: the checkpoints of this exporter, by document name.
pub type Checkpoints = HashMap<String, Exported>;

/// What the database says was exported of one document: the digest of the heads its rows
/// were read at, and the heads themselves, from which the next read follows the changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Exported {
    pub digest: String,
    pub heads: Vec<automerge::ChangeHash>,
}

impl Exported {
    /// Heads as a checkpoint row holds them (hex, comma-separated); a row that does not
    /// parse gives none, and the document is then read whole.
    pub fn parse_heads(text: &str) -> Vec<automerge::ChangeHash> {
        let parsed: Option<Vec<automerge::ChangeHash>> = text
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|h| {
                let bytes = hex::decode(h).ok()?;
                Some(automerge::ChangeHash(bytes.try_into().ok()?))
            })
            .collect();
        parsed.unwrap_or_default()
    }

    /// The checkpoint's form of `heads`.
    pub fn format_heads(heads: &[automerge::ChangeHash]) -> String {
        heads
            .iter()
            .map(|h| hex::encode(h.0))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Db {
    /// Connects, migrates the schema, and reads this exporter's checkpoints.
    pub async fn connect(
        config: &tokio_postgres::Config,
        target: Target,
        exporter: &str,
        method: Method,
        batch: usize,
        timeout: Duration,
    ) -> Result<(Db, Checkpoints), ExportError> {
        let mut config = config.clone();
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.keepalives_idle(Duration::from_secs(30));
        if config.get_application_name().is_none() {
            config.application_name(format!("rhizome export {}", short(exporter)));
        }
        let (client, connection) = tokio::time::timeout(CONNECT_TIMEOUT, config.connect(NoTls))
            .await
            .map_err(|_| ExportError::Connect {
                target: target.place.clone(),
                detail: format!("no answer within {CONNECT_TIMEOUT:?}"),
            })?
            .map_err(|e| target.error(&e))?;
        let connection = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "the PostgreSQL connection ended");
            }
        });
        let mut db = Db {
            client,
            connection,
            target,
            method,
            batch: batch.max(1),
            timeout,
            prepared: HashMap::new(),
            found_version: 0,
        };
        // A transaction of this session cut off by the network would hold its row locks until
        // the server's TCP keepalive noticed (hours by default), and the next connection's
        // upserts of the same rows would wait for it: the server ends it after the timeout.
        let limit = format!(
            "SET idle_in_transaction_session_timeout = {}",
            timeout.as_millis().clamp(1_000, i32::MAX as u128)
        );
        timed(timeout, async {
            db.client
                .batch_execute(&limit)
                .await
                .map_err(|e| db.target.error(&e))
        })
        .await?;
        db.found_version = timed(timeout, db.migrate(exporter)).await?;
        if method == Method::Copy {
            for table in [RUNS, ROLLUPS, NODES, ALERTS] {
                let sql = table.create_staging(&db.target.schema);
                let client = &db.client;
                timed(timeout, async {
                    client
                        .batch_execute(&sql)
                        .await
                        .map_err(|e| db.target.error(&e))
                })
                .await?;
            }
        }
        let checkpoints = timed(timeout, db.checkpoints(exporter)).await?;
        Ok((db, checkpoints))
    }

    /// Brings the schema to [`schema::VERSION`]; returns the version found.
    async fn migrate(&mut self, exporter: &str) -> Result<i32, ExportError> {
        let target = self.target.clone();
        let err = |e: tokio_postgres::Error| target.error(&e);
        let s = schema::quoted(&target.schema);
        let tx = self.client.transaction().await.map_err(err)?;
        tx.execute(
            "SELECT pg_advisory_xact_lock($1)",
            &[&schema::MIGRATION_LOCK],
        )
        .await
        .map_err(err)?;
        // Nothing is created when it exists: a user without CREATE may export into a schema
        // made for it.
        let exists: bool = tx
            .query_one(
                "SELECT to_regclass($1) IS NOT NULL",
                &[&format!("{s}.schema_version")],
            )
            .await
            .map_err(err)?
            .get(0);
        if !exists {
            tx.batch_execute(&schema::bootstrap(&target.schema))
                .await
                .map_err(err)?;
        }
        let found: Option<i32> = tx
            .query_one(&format!("SELECT max(version) FROM {s}.schema_version"), &[])
            .await
            .map_err(err)?
            .get(0);
        let found = found.unwrap_or(0);
        if found > schema::VERSION {
            return Err(ExportError::NewerSchema {
                schema: target.schema.clone(),
                found,
                known: schema::VERSION,
            });
        }
        for version in found + 1..=schema::VERSION {
            tx.batch_execute(&schema::migration(&target.schema, version))
                .await
                .map_err(err)?;
            tx.execute(
                &format!("INSERT INTO {s}.schema_version (version, applied_by) VALUES ($1, $2)"),
                &[
                    &version,
                    &format!("rhizome {} on {exporter}", env!("CARGO_PKG_VERSION")),
                ],
            )
            .await
            .map_err(err)?;
        }
        tx.commit().await.map_err(err)?;
        if found < schema::VERSION {
            tracing::info!(
                schema = %target.schema,
                from = found,
                to = schema::VERSION,
                "migrated the export schema"
            );
        }
        Ok(found)
    }

    async fn checkpoints(&self, exporter: &str) -> Result<Checkpoints, ExportError> {
        let sql = format!(
            "SELECT document, heads_digest, heads FROM {}.export_checkpoint WHERE exporter = $1",
            schema::quoted(&self.target.schema)
        );
        let rows = self
            .client
            .query(&sql, &[&exporter])
            .await
            .map_err(|e| self.target.error(&e))?;
        Ok(rows
            .iter()
            .map(|r| {
                let heads: String = r.get(2);
                (
                    r.get(0),
                    Exported {
                        digest: r.get(1),
                        heads: Exported::parse_heads(&heads),
                    },
                )
            })
            .collect())
    }

    /// Writes `rows` and `checkpoints` in one transaction: all of it is in the database
    /// afterwards, or none of it.
    pub async fn write(
        &mut self,
        rows: &Rows,
        checkpoints: &[Checkpoint],
    ) -> Result<(), ExportError> {
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.write_now(rows, checkpoints)).await {
            Ok(done) => done,
            Err(_) => Err(ExportError::Timeout(timeout)),
        }
    }

    async fn write_now(
        &mut self,
        rows: &Rows,
        checkpoints: &[Checkpoint],
    ) -> Result<(), ExportError> {
        // Prepared before the transaction opens (they outlive it).
        for (table, n) in [
            (NODES, rows.nodes.len()),
            (ROLLUPS, rows.rollups.len()),
            (ALERTS, rows.alerts.len()),
            (RUNS, rows.runs.len()),
            (CHECKPOINT, checkpoints.len()),
        ] {
            if n >= self.chunk(&table) {
                self.prepare(&table).await?;
            }
        }
        // No rollback on failure: the caller drops the connection on every database error,
        // and the server rolls back what a closed connection left open.
        let err = |e: tokio_postgres::Error| self.target.error(&e);
        self.client.batch_execute("BEGIN").await.map_err(err)?;
        self.put(&NODES, &rows.nodes).await?;
        self.put(&ROLLUPS, &rows.rollups).await?;
        self.put(&ALERTS, &rows.alerts).await?;
        self.put(&RUNS, &rows.runs).await?;
        // Checkpoints are few per transaction: always as values.
        self.values(&CHECKPOINT, checkpoints).await?;
        self.client.batch_execute("COMMIT").await.map_err(err)
    }

    /// Rows of `table` per statement.
    fn chunk(&self, table: &Table) -> usize {
        self.batch.min(MAX_PARAMS / table.columns.len())
    }

    async fn prepare(&mut self, table: &Table) -> Result<(), ExportError> {
        let n = self.chunk(table);
        if self.prepared.get(table.name).is_some_and(|(m, _)| *m == n) {
            return Ok(());
        }
        let sql = table.upsert_values(&self.target.schema, n);
        let statement = self
            .client
            .prepare_typed(&sql, &table.types_of(n))
            .await
            .map_err(|e| self.target.error(&e))?;
        self.prepared.insert(table.name, (n, statement));
        Ok(())
    }

    async fn put<R: Bind + Sync>(&self, table: &Table, rows: &[R]) -> Result<(), ExportError> {
        match self.method {
            Method::Values => self.values(table, rows).await,
            Method::Copy => self.copy(table, rows).await,
        }
    }

    async fn values<R: Bind + Sync>(&self, table: &Table, rows: &[R]) -> Result<(), ExportError> {
        let tx = &self.client;
        let err = |e: tokio_postgres::Error| self.target.error(&e);
        for chunk in rows.chunks(self.chunk(table)) {
            let params: Vec<&(dyn ToSql + Sync)> = chunk.iter().flat_map(Bind::bind).collect();
            match self.prepared.get(table.name) {
                Some((n, statement)) if *n == chunk.len() => {
                    tx.execute(statement, &params).await.map_err(err)?;
                }
                _ => {
                    let sql = table.upsert_values(&self.target.schema, chunk.len());
                    let statement = tx
                        .prepare_typed(&sql, &table.types_of(chunk.len()))
                        .await
                        .map_err(err)?;
                    tx.execute(&statement, &params).await.map_err(err)?;
                }
            }
        }
        Ok(())
    }

    async fn copy<R: Bind + Sync>(&self, table: &Table, rows: &[R]) -> Result<(), ExportError> {
        let tx = &self.client;
        let err = |e: tokio_postgres::Error| self.target.error(&e);
        let upsert = table.upsert_staged(&self.target.schema);
        for chunk in rows.chunks(self.batch) {
            let sink = tx.copy_in(&table.copy_in()).await.map_err(err)?;
            let writer = BinaryCopyInWriter::new(sink, &table.types());
            pin_mut!(writer);
            for row in chunk {
                writer.as_mut().write(&row.bind()).await.map_err(err)?;
            }
            writer.finish().await.map_err(err)?;
            tx.execute(&upsert, &[]).await.map_err(err)?;
        }
        Ok(())
    }
}

/// A timeout around one step of setting up.
async fn timed<T>(
    timeout: Duration,
    step: impl std::future::Future<Output = Result<T, ExportError>>,
) -> Result<T, ExportError> {
    tokio::time::timeout(timeout, step)
        .await
        .unwrap_or(Err(ExportError::Timeout(timeout)))
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::rows::{Jsonb, Millis};

    #[test]
    fn checkpoint_heads_round_trip_and_bad_ones_read_as_none() {
        let heads = vec![
            automerge::ChangeHash([1; 32]),
            automerge::ChangeHash([0xab; 32]),
        ];
        let text = Exported::format_heads(&heads);
        assert_eq!(Exported::parse_heads(&text), heads);
        assert_eq!(Exported::parse_heads(""), Vec::new());
        // One bad head makes the whole list unusable: the document is then read whole.
        assert_eq!(Exported::parse_heads(&format!("{text},zz")), Vec::new());
        assert_eq!(Exported::parse_heads("abcd"), Vec::new());
    }

    #[test]
    fn rows_bind_one_value_per_column() {
        let run = RunRow {
            node: "n".into(),
            run_id: "r".into(),
            workflow: "w".into(),
            workflow_version: 1,
            status: "succeeded".into(),
            started_at: Millis(0),
            finished_at: Millis(1),
            duration_ms: 1,
            output: None,
            error: None,
            steps: Jsonb("[]".into()),
        };
        assert_eq!(run.bind().len(), RUNS.columns.len());
        let rollup = RollupRow {
            zone: String::new(),
            window_start: Millis(0),
            window_minutes: 60,
            workflow: "w".into(),
            node: "n".into(),
            runs: 1,
            failures: 0,
            total_ms: 1,
            max_ms: 1,
            last_status: "succeeded".into(),
            last_finished_at: Millis(1),
            last_output: None,
            last_run_id: "r".into(),
        };
        assert_eq!(rollup.bind().len(), ROLLUPS.columns.len());
        let node = NodeRow {
            id: "n".into(),
            name: "n".into(),
            zone: String::new(),
            role: None,
            tags: Vec::new(),
            capabilities: Jsonb("[]".into()),
            vitals: None,
            addresses: Vec::new(),
            version: "0".into(),
            heartbeat: 1,
            last_seen: Millis(0),
            state: "member".into(),
        };
        assert_eq!(node.bind().len(), NODES.columns.len());
        let alert = AlertRow {
            node: "n".into(),
            rule: "r".into(),
            fired_at: Millis(0),
            state: "firing".into(),
            condition: "c".into(),
            value: "v".into(),
            resolved_at: None,
        };
        assert_eq!(alert.bind().len(), ALERTS.columns.len());
        let checkpoint = Checkpoint {
            exporter: "e".into(),
            document: "mesh".into(),
            heads_digest: "00".into(),
            heads: String::new(),
            rows: 0,
        };
        assert_eq!(checkpoint.bind().len(), CHECKPOINT.columns.len());
    }

    #[test]
    fn targets_never_show_the_password() {
        let config: tokio_postgres::Config = "postgres://exporter:s3cret@db.example:6543/fleet"
            .parse()
            .unwrap();
        let target = Target::of(&config, "rhizome");
        assert_eq!(target.place, "db.example:6543/fleet");
        assert_eq!(target.user, "exporter");
        let shown = format!("{target:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}
