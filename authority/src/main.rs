//! `mctc-authority`: see `authority/README.md`.
#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match mctc_authority::cli::parse() {
        Ok(cli) => cli,
        Err((0, text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err((code, text)) => {
            eprintln!("mctc-authority: {text}");
            return ExitCode::from(code);
        }
    };
    match mctc_authority::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mctc-authority: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
