//! `rhizome`: the one binary every node of a Rhizome mesh runs.

use rhizome::{cli, commands};

use clap::Parser;

fn main() -> std::process::ExitCode {
    let opts = cli::Opts::parse();
    // A running node reports peers and retention at info level; one-shot commands stay quiet.
    let daemon = matches!(opts.command, cli::Command::Start(_));
    init_tracing(opts.verbose + u8::from(daemon), opts.quiet);
    match commands::run(opts) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_tracing(verbose: u8, quiet: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        (false, _) => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("RHIZOME_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}
