//! mctc-agent: the edge daemon (attester and enforcement point).
#![forbid(unsafe_code)]

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use mctc_agent::cli::{Cli, execute};

fn main() -> ExitCode {
    let cli = Cli::parse();
    mctc_service::logging::init();
    match execute(cli) {
        Ok(outcome) => {
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(outcome.stdout.as_bytes());
            let _ = stdout.flush();
            ExitCode::from(outcome.code)
        }
        Err(e) => {
            eprintln!("mctc-agent: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
