//! `mctc-packaging`: the Debian packages of mctc (run by `cargo xtask
//! dist`, and by this crate's tests on the debug binaries).
//!
//! - `docs --out DIR` — man pages (section 8, one per command and
//!   subcommand) and bash/zsh/fish completions from the binaries' clap
//!   definitions.
//! - `deb --bin-dir DIR --out DIR [--arch ARCH] [--package NAME]…
//!   [--lintian]` — the .debs, built by debhelper from packaging/debian.
//!
//! Exit codes: 0 success; 1 a tool (dpkg-buildpackage, lintian) failed; 2
//! usage.
#![forbid(unsafe_code)]

mod deb;
mod docs;
mod error;

use error::Error;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Debian packages of mctc.
#[derive(Debug, Parser)]
#[command(name = "mctc-packaging", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Write the man pages and shell completions.
    Docs {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Build the .deb packages from already built binaries.
    Deb {
        /// The directory holding mctc-agent, mctc-authority, mctc-collector.
        #[arg(long, value_name = "DIR")]
        bin_dir: PathBuf,
        /// Where the .debs go (a build-ARCH/ work directory is made there).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Debian architecture (arm64: a cross build); the machine's by default.
        #[arg(long, value_name = "ARCH")]
        arch: Option<String>,
        /// Only these packages (repeat); all by default.
        #[arg(long = "package", value_name = "NAME")]
        packages: Vec<String>,
        /// Run lintian on the result; fail on any error-level tag.
        #[arg(long)]
        lintian: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Docs { out } => docs::generate(&out).map(|pages| {
            println!("{} man pages in {}", pages.len(), out.join("man").display());
        }),
        Task::Deb {
            bin_dir,
            out,
            arch,
            packages,
            lintian,
        } => build(
            &deb::Options {
                bin_dir,
                arch,
                out,
                packages,
            },
            lintian,
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mctc-packaging: {e}");
            ExitCode::FAILURE
        }
    }
}

fn build(options: &deb::Options, lintian: bool) -> Result<(), Error> {
    let debs = deb::build(options)?;
    for deb in &debs {
        println!("{}", deb.display());
    }
    if lintian {
        print!("{}", deb::lintian(&debs)?);
    }
    Ok(())
}
