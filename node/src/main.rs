//! `rhizome`: the one binary every node of a Rhizome mesh runs.

use rhizome::cli::{self, commands};

use clap::Parser;

fn main() -> std::process::ExitCode {
    let opts = cli::Opts::parse();
    // A running node reports peers and retention at info level; one-shot commands stay quiet.
    let daemon = matches!(opts.command, cli::Command::Start(_));
    if !daemon {
        end_quietly_on_a_closed_pipe();
    }
    init_tracing(
        opts.verbose + u8::from(daemon),
        opts.quiet,
        opts.log_format == "json",
    );
    match commands::run(opts) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// A one-shot command whose output is piped into `head` ends when the reader does, as other
/// command-line tools do, instead of panicking on the failed print. Not for `start`: a node
/// must outlive peers and clients that hang up, which the ignored signal gives it.
#[allow(unsafe_code)]
fn end_quietly_on_a_closed_pipe() {
    // SAFETY: called first thing in `main`, before any other thread exists; it restores the
    // default disposition the runtime replaced, and touches no memory.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn init_tracing(verbose: u8, quiet: bool, json: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        (false, _) => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("RHIZOME_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| LossyStderr);
    if json {
        builder.json().with_current_span(true).init();
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}

/// Standard error that drops what it cannot write. A node's log is often a file on the same
/// disk as its data; when that disk fills, the logger's own fallback (`eprintln!`) would panic
/// whichever thread logged (the store's, say, reporting the very ENOSPC it must recover from).
struct LossyStderr;

impl std::io::Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}
