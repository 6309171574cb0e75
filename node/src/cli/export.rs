//! `rhizome export status`: where the running node's export into PostgreSQL stands, read from
//! its API (`GET /export`): configured or not, connected or not and why, what is pending and
//! how far behind, what was written.

use anyhow::{Result, bail};
use clap::Subcommand;
use crdt_store::format_timestamp;

use crate::export::ExportStatus;
use crate::node::{Node, now_ms};

#[derive(Debug, Subcommand)]
pub enum ExportCommand {
    /// Whether the export runs, its connection and last error, documents pending and the lag,
    /// rows written since the node started. Needs the node running: the export is part of it.
    Status {
        /// Print JSON (the answer of `GET /export`).
        #[arg(long)]
        json: bool,
    },
}

pub fn export(node: &Node, cmd: ExportCommand) -> Result<()> {
    let ExportCommand::Status { json } = cmd;
    let Some(api) = crate::cli::client::running_node(&node.dir) else {
        let configured = if node.config.export.postgres.trim().is_empty() {
            "export.postgres is not set in its configuration"
        } else {
            "its configuration sets export.postgres, so it exports while it runs"
        };
        bail!(
            "no node is running on {}: the export runs inside the node ({configured}); start \
             it with `rhizome start --data-dir {}`",
            node.dir.root.display(),
            node.dir.root.display()
        );
    };
    let status: ExportStatus = api.get("/export")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    print!("{}", describe(&status, now_ms()));
    Ok(())
}

/// The status as lines for people.
pub fn describe(s: &ExportStatus, now: i64) -> String {
    if !s.configured {
        return "the export is off: set export.postgres (`rhizome config set export.postgres \
                postgres://user@host/db`, or RHIZOME_EXPORT_POSTGRES) and restart the node\n"
            .into();
    }
    let ago = |ms: i64| {
        format!(
            "{} ({} ago)",
            format_timestamp(ms),
            crate::cli::output::millis(now - ms)
        )
    };
    let mut out = format!(
        "export to PostgreSQL {} as user {}, schema {} (this build writes version {})\n",
        s.target.as_deref().unwrap_or("?"),
        s.user.as_deref().unwrap_or("?"),
        s.schema.as_deref().unwrap_or("?"),
        s.schema_version
    );
    out += &format!("  state       {}\n", s.state);
    out += &format!("  connected   {}\n", if s.connected { "yes" } else { "no" });
    out += &format!(
        "  pending     {} documents, lag {:.1}s{}\n",
        s.documents_pending,
        s.lag_seconds,
        s.oldest_pending
            .as_ref()
            .map(|d| format!(" (oldest: {d})"))
            .unwrap_or_default()
    );
    out += &format!(
        "  exported    {} rows in {} transactions since start; {} documents at their checkpoint\n",
        s.rows_exported, s.transactions, s.documents_exported
    );
    if let Some(ms) = s.last_success_ms {
        out += &format!("  last commit {}\n", ago(ms));
    }
    if let Some(error) = &s.last_error {
        out += &format!(
            "  last error  {error}{}\n",
            s.last_error_ms
                .map(|ms| format!(", {}", ago(ms)))
                .unwrap_or_default()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_export_says_why() {
        let status = ExportStatus {
            configured: true,
            state: "failing".into(),
            target: Some("127.0.0.1:5432/fleet".into()),
            user: Some("exporter".into()),
            schema: Some("rhizome".into()),
            schema_version: 2,
            documents_pending: 3,
            lag_seconds: 12.5,
            oldest_pending: Some("mesh".into()),
            last_error: Some("the schema `rhizome` in the database is at version 9".into()),
            last_error_ms: Some(1_000),
            ..ExportStatus::default()
        };
        let text = describe(&status, 61_000);
        assert!(
            text.contains("127.0.0.1:5432/fleet as user exporter"),
            "{text}"
        );
        assert!(
            text.contains("3 documents, lag 12.5s (oldest: mesh)"),
            "{text}"
        );
        assert!(text.contains("version 9"), "{text}");
        assert!(describe(&ExportStatus::default(), 0).contains("the export is off"));
    }
}
