//! Configuration files, the first outside bytes every binary reads: the
//! collector's `Config::parse`, the agent's `config::parse`, the
//! authority's `Config::parse` and its PCR policy `Policy::parse`, and the
//! authority public key files they name (`mctc_service::keys::
//! parse_public_key`).
//!
//! Input: a selector byte (which parser), then the file's bytes (TOML files
//! are read as UTF-8, so other bytes never reach those parsers).
//!
//! Invariants: no panic; every refusal is one line (operators see it on
//! stderr as the reason the service did not start); a key that parses is
//! written back as PEM that parses to the same key.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use mctc_fuzz::input::Input;
use mctc_service::keys::{parse_public_key, public_key_pem};

fn one_line(error: impl std::fmt::Display) {
    let text = error.to_string();
    assert!(!text.contains('\n'), "a multi-line config error: {text:?}");
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let selector = input.u8() % 5;
    let bytes = input.rest();
    if selector == 4 {
        if let Ok(key) = parse_public_key(bytes) {
            assert_eq!(parse_public_key(public_key_pem(&key).as_bytes()), Ok(key));
        }
        return;
    }
    let Ok(text) = std::str::from_utf8(bytes) else {
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
