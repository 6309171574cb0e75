//! `rhizome alerts`: the alerts of this node or, at an aggregator or the cloud, of every node
//! below it; the rules in force; fleet rules applied and withdrawn on a control node.

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

use crate::api::alerts::{RulesApplied, RulesRequest};
use crate::cli::client::Api;
use crate::cli::output;
use crate::node::Node;
use crate::ops::alerts::{AlertView, AlertsView, RuleConfig, RuleView};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AlertsArgs {
    #[command(subcommand)]
    pub command: Option<AlertsCommand>,
    /// Every node's alerts held here (at a zone aggregator: its zone's; at the cloud: the
    /// fleet's), not only this node's.
    #[arg(long)]
    pub fleet: bool,
    /// Resolved alerts since then (`2h`, `7d`, a date or a timestamp); firing ones are always
    /// listed. Default: a day.
    #[arg(long)]
    pub since: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum AlertsCommand {
    /// The rules in force on the running node (its `[[alerts.rules]]` and the fleet's), each
    /// with its state: ok, pending (the condition holds, not yet for its duration) or firing.
    Rules {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Apply fleet-wide rules from a TOML file of `[[rules]]` (the fields of
    /// `[[alerts.rules]]`): signed by this node, which must hold the `control` role, they
    /// reach every node of the mesh, offline ones when they return. A rule of the same name
    /// is replaced; a node's own `[[alerts.rules]]` entry of that name takes precedence there.
    Apply {
        /// The rules file.
        file: std::path::PathBuf,
    },
    /// Withdraw fleet-wide rules by name (on a control node); alerts they fired resolve.
    Withdraw {
        /// Rule names.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// A rules file for `alerts apply`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    rules: Vec<RuleConfig>,
    /// The shape of `rhizome.toml`, so a node's section can be applied as it is.
    #[serde(default)]
    alerts: Option<AlertsOfConfig>,
}

#[derive(Debug, serde::Deserialize)]
struct AlertsOfConfig {
    #[serde(default)]
    rules: Vec<RuleConfig>,
}

fn running(node: &Node, what: &str) -> Result<Api> {
    crate::cli::client::running_node(&node.dir).with_context(|| {
        format!(
            "no node is running on {}: {what}; start it with `rhizome start --data-dir {}`",
            node.dir.root.display(),
            node.dir.root.display()
        )
    })
}

pub fn alerts(node: &Node, args: AlertsArgs) -> Result<()> {
    match args.command {
        None => list(node, args.fleet, args.since.as_deref(), args.json),
        Some(AlertsCommand::Rules { json }) => rules(node, json),
        Some(AlertsCommand::Apply { file }) => apply(node, &file),
        Some(AlertsCommand::Withdraw { names }) => {
            let api = running(node, "fleet rules are signed by the running node")?;
            let request = RulesRequest {
                rules: Vec::new(),
                withdraw: names,
            };
            let done: RulesApplied =
                api.post("/alerts/rules", &serde_json::to_string(&request)?)?;
            println!(
                "withdrawn: {} (every node drops them as the registry reaches it)",
                done.withdrawn.join(", ")
            );
            Ok(())
        }
    }
}

fn list(node: &Node, fleet: bool, since: Option<&str>, json: bool) -> Result<()> {
    let since_ms = since.map(crate::cli::commands::parse_since).transpose()?;
    let view: AlertsView = match crate::cli::client::running_node(&node.dir) {
        Some(api) => {
            let mut path = format!("/alerts?fleet={fleet}");
            if let Some(ms) = since_ms {
                path.push_str(&format!("&since={ms}"));
            }
            api.get(&path)?
        }
        // Stopped: what the store holds, without the rules' live states.
        None => {
            let mut store = node.open_store()?;
            let me = node.node_id();
            let since = since_ms.unwrap_or_else(|| crate::node::now_ms() - 24 * 3_600_000);
            AlertsView {
                alerts: crate::ops::alerts::driver::held_alerts(&mut store, &me, fleet, since)?,
                node: me,
                fleet,
                rules: Vec::new(),
                refused_rules: Vec::new(),
            }
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(());
    }
    print_alerts(&view.alerts, fleet);
    Ok(())
}

fn print_alerts(alerts: &[AlertView], fleet: bool) {
    if alerts.is_empty() {
        println!(
            "no alerts{}",
            if fleet { " held here" } else { " on this node" }
        );
        return;
    }
    let rows: Vec<Vec<String>> = alerts
        .iter()
        .map(|a| {
            let mut row = Vec::new();
            if fleet {
                row.push(
                    a.node_name
                        .clone()
                        .unwrap_or_else(|| output::short_id(&a.node).to_owned()),
                );
            }
            row.extend([
                a.record.rule.clone(),
                a.record.state.to_uppercase(),
                a.record.condition.clone(),
                a.record.value.clone(),
                crdt_store::format_timestamp(a.record.fired_ms),
                if a.record.resolved_ms > 0 {
                    crdt_store::format_timestamp(a.record.resolved_ms)
                } else {
                    "-".into()
                },
            ]);
            row
        })
        .collect();
    let mut header = Vec::new();
    if fleet {
        header.push("NODE");
    }
    header.extend(["RULE", "STATE", "CONDITION", "VALUE", "FIRED", "RESOLVED"]);
    print!("{}", output::table(&header, &rows));
}

fn rules(node: &Node, json: bool) -> Result<()> {
    let api = running(node, "rule states live in the running node")?;
    let view: AlertsView = api.get("/alerts")?;
    if json {
        #[derive(serde::Serialize)]
        struct Rules<'a> {
            rules: &'a [RuleView],
            refused_rules: &'a [crate::ops::alerts::driver::RefusedRule],
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&Rules {
                rules: &view.rules,
                refused_rules: &view.refused_rules,
            })?
        );
        return Ok(());
    }
    if view.rules.is_empty() {
        println!(
            "no alert rules: add [[alerts.rules]] to rhizome.toml, or apply fleet rules with \
             `rhizome alerts apply FILE` on a control node"
        );
    } else {
        let rows: Vec<Vec<String>> = view
            .rules
            .iter()
            .map(|r| {
                vec![
                    r.name.clone(),
                    r.when.clone(),
                    format!("{:?}", r.status.state).to_lowercase(),
                    r.status.last_seen.clone().unwrap_or_else(|| "-".into()),
                    match &r.origin {
                        crate::ops::alerts::rules::Origin::Config => "rhizome.toml".into(),
                        crate::ops::alerts::rules::Origin::Fleet { by } => {
                            format!("fleet ({})", output::short_id(by))
                        }
                    },
                    r.actions.join(","),
                ]
            })
            .collect();
        print!(
            "{}",
            output::table(
                &["RULE", "CONDITION", "STATE", "SEEN", "FROM", "ACTIONS"],
                &rows
            )
        );
    }
    for refused in &view.refused_rules {
        println!("ignored fleet rule {}: {}", refused.name, refused.reason);
    }
    Ok(())
}

fn apply(node: &Node, file: &std::path::Path) -> Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let parsed: RulesFile = toml::from_str(&text).with_context(|| {
        format!(
            "{} is not a rules file: expected [[rules]] tables with name, when, and optionally \
             for, actions, command, webhook, severity",
            file.display()
        )
    })?;
    let mut rules = parsed.rules;
    rules.extend(parsed.alerts.map(|a| a.rules).unwrap_or_default());
    if rules.is_empty() {
        bail!("{} holds no [[rules]]", file.display());
    }
    crate::ops::alerts::rules::check_all(&rules, &crate::ops::alerts::rules::Origin::Config)
        .with_context(|| format!("{}", file.display()))?;
    let api = running(
        node,
        "fleet rules are signed and written by the running node",
    )?;
    let request = RulesRequest {
        rules,
        withdraw: Vec::new(),
    };
    let done: RulesApplied = api.post("/alerts/rules", &serde_json::to_string(&request)?)?;
    println!(
        "applied fleet alert rules: {} (every node takes them as the registry reaches it)",
        done.applied.join(", ")
    );
    Ok(())
}
