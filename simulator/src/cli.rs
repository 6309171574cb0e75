//! The command line, shared by `simulator` and `rhizome sim`.

use std::path::PathBuf;

use clap::Args;

use crate::{Options, Plant, Scenario};

/// Run a whole mesh in one process on virtual time, inject faults, check invariants.
#[derive(Debug, Clone, Args)]
pub struct SimArgs {
    /// A bundled scenario (partition-heal, flapping-links, churn, swizzle, aggregator-crash,
    /// long-offline, fleet-1000) or the path of a scenario TOML file.
    #[arg(long, default_value = "partition-heal")]
    pub scenario: String,
    /// Edge nodes (default: the scenario's); at least 1.
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub nodes: Option<usize>,
    /// The seed that decides every latency, fault and write.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Run this many consecutive seeds, starting at --seed; stop at the first failure (unless
    /// --keep-going).
    #[arg(long, default_value_t = 1)]
    pub seeds: u64,
    /// With --seeds: run every seed whatever fails, then fail naming each failing seed.
    #[arg(long)]
    pub keep_going: bool,
    /// One line per seed (`pass seed N` or `FAIL seed N` with its first violation and replay
    /// command) instead of each report: for sweeps of thousands of seeds.
    #[arg(long)]
    pub brief: bool,
    /// Also write the report as HTML with a plot of divergence over time.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Plant a bug: drop-catalogue (no protocol survives it: the invariants must catch it),
    /// drop-first-sync (a lost message the protocol must heal), or silent-reopen (a store
    /// reopened after a storage fault does not tell replication: the invariants must catch it).
    #[arg(long, hide = true)]
    pub plant_bug: Option<String>,
    /// List the bundled scenarios and exit.
    #[arg(long)]
    pub list: bool,
    /// Print simulated time, events and wall time to stderr every 10 simulated seconds.
    #[arg(long)]
    pub progress: bool,
}

/// Why the command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The scenario could not be loaded.
    #[error(transparent)]
    Scenario(#[from] crate::ScenarioError),
    /// An unknown planted bug.
    #[error("unknown --plant-bug {0:?} (known: drop-catalogue, drop-first-sync, silent-reopen)")]
    Plant(String),
    /// The HTML report could not be written.
    #[error("cannot write the report to {path}: {source}")]
    Write {
        /// Where.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A run broke an invariant (its report says which).
    #[error("invariants violated (seed {seed}); replay with: {command}")]
    Failed {
        /// The failing seed.
        seed: u64,
        /// The replay command.
        command: String,
    },
    /// Runs of a --keep-going sweep broke invariants.
    #[error(
        "invariants violated in {} of {runs} runs; replay with:\n{}",
        commands.len(),
        commands.join("\n")
    )]
    FailedSeeds {
        /// Seeds run.
        runs: u64,
        /// The replay command of each failing seed.
        commands: Vec<String>,
    },
}

/// Runs the command: prints each report, the wall time apart, and fails on a violation.
pub fn main(args: SimArgs) -> Result<(), CliError> {
    if args.list {
        for (name, text) in crate::scenario::BUNDLED {
            let sc = Scenario::parse(text, name)?;
            println!("{name:<16} {} nodes, {}", sc.nodes, sc.duration);
        }
        return Ok(());
    }
    let scenario = Scenario::load(&args.scenario)?;
    let plant = match &args.plant_bug {
        Some(name) => Some(Plant::parse(name).ok_or_else(|| CliError::Plant(name.clone()))?),
        None => None,
    };
    let mut failing = Vec::new();
    let mut runs = 0;
    for seed in args.seed..args.seed.saturating_add(args.seeds.max(1)) {
        let options = Options {
            scenario: scenario.clone(),
            scenario_arg: args.scenario.clone(),
            nodes: args.nodes,
            seed,
            plant,
        };
        let (report, wall) = timed(options, args.progress);
        runs += 1;
        if args.brief {
            if report.passed() {
                println!("pass seed {seed}");
            } else {
                let first = report
                    .violations
                    .first()
                    .map_or_else(String::new, |v| format!("{}: {}", v.invariant, v.detail));
                println!("FAIL seed {seed}: {first}");
                println!("FAIL seed {seed}: replay with: {}", report.replay_command());
            }
        } else {
            print!("{}", report.render_text());
        }
        let simulated = report.simulated.as_secs_f64();
        let speedup = simulated / wall.max(1e-9);
        if !args.brief {
            println!(
                "wall time {wall:.2} s · {} real time (not part of the report)\n",
                if speedup >= 10.0 {
                    format!("{speedup:.0}×")
                } else {
                    format!("{speedup:.2}×")
                }
            );
        }
        if let Some(path) = &args.report {
            std::fs::write(path, report.render_html()).map_err(|source| CliError::Write {
                path: path.clone(),
                source,
            })?;
        }
        if !report.passed() {
            if !args.keep_going {
                return Err(CliError::Failed {
                    seed,
                    command: report.replay_command(),
                });
            }
            failing.push(report.replay_command());
        }
    }
    if !failing.is_empty() {
        return Err(CliError::FailedSeeds {
            runs,
            commands: failing,
        });
    }
    Ok(())
}

/// Runs and measures wall time, which stays out of the report.
#[allow(clippy::disallowed_methods)]
fn timed(options: Options, progress: bool) -> (crate::Report, f64) {
    let started = std::time::Instant::now();
    let every = if progress {
        std::time::Duration::from_secs(10)
    } else {
        std::time::Duration::MAX
    };
    let report = crate::run_with_progress(options, every, &mut |simulated, events| {
        eprintln!(
            "simulated {} · {events} events · wall {:.1} s",
            crate::report::human(simulated),
            started.elapsed().as_secs_f64()
        );
    });
    (report, started.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::SimArgs;

    #[derive(Debug, Parser)]
    struct Command {
        #[command(flatten)]
        sim: SimArgs,
    }

    #[test]
    fn a_mesh_of_no_nodes_is_refused_by_name() {
        let err = Command::try_parse_from(["sim", "--nodes", "0"]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("--nodes") && text.contains("1.."), "{text}");
        let ok = Command::try_parse_from(["sim", "--nodes", "3"]).unwrap();
        assert_eq!(ok.sim.nodes, Some(3));
    }
}
