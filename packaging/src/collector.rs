//! The collector's command line, compiled from its own main.rs (its `Cli`
//! is `pub(crate)` for this): the man pages and completions describe exactly
//! what the binary parses. The rest of that file is unused here.
#![allow(dead_code, unused_imports, reason = "only `Cli` is used")]

#[path = "../../collector/src/main.rs"]
mod main;

pub(crate) use main::Cli;
