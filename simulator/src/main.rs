//! `simulator`: the same as `rhizome sim`.

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "simulator", version)]
struct Opts {
    #[command(flatten)]
    sim: simulator::cli::SimArgs,
}

fn main() -> std::process::ExitCode {
    let opts = Opts::parse();
    match simulator::cli::main(opts.sim) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
