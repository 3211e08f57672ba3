//! Configuration files, the first outside bytes every binary reads: the
//! collector's `Config::parse`, the agent's `config::parse`, the
//! authority's `Config::parse` and its PCR policy `Policy::parse`.
//!
//! Input: a selector byte (which parser), then the file's text (files are
//! read as UTF-8, so other bytes never reach a parser).
//!
//! Invariant: no panic; every refusal is one line (operators see it on
//! stderr as the reason the service did not start).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use mctc_fuzz::input::Input;

fn one_line(error: impl std::fmt::Display) {
    let text = error.to_string();
    assert!(!text.contains('\n'), "a multi-line config error: {text:?}");
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let selector = input.u8() % 4;
    let Ok(text) = std::str::from_utf8(input.rest()) else {
        return;
    };
    let path = Path::new("/etc/mctc/fuzz.toml");
    match selector {
        0 => {
            if let Err(e) = mctc_collector::config::Config::parse(text, path) {
                one_line(e);
            }
        }
        1 => {
            if let Err(e) = mctc_agent::config::parse(text) {
                one_line(e);
            }
        }
        2 => {
            if let Err(e) = mctc_authority::config::Config::parse(path, text) {
                one_line(e);
            }
        }
        _ => {
            if let Err(e) = mctc_authority::policy::Policy::parse(path, text) {
                one_line(e);
            }
        }
    }
});
