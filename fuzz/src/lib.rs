//! Shared fixtures of the mctc fuzz targets: one fixed authority key, one
//! fixed attestation key, a device that both know, and builders for genuine
//! messages of every kind. The targets in `fuzz_targets/` call the real
//! decoders; this crate only prepares what those decoders are given (keys,
//! contexts, signatures over fuzzed payloads) and the seed corpus.
//!
//! Nothing here is a second implementation of a decoder. The one encoder of
//! its own, [`cose::seal`], wraps fuzzed payload bytes into a COSE_Sign1
//! envelope so that the fuzzer can reach the checks that run after the
//! signature; a test pins it to the shim's own `Signed::sign`.
#![forbid(unsafe_code)]

pub mod ak;
pub mod chain;
pub mod cose;
pub mod fixtures;
pub mod input;
pub mod journal;
pub mod seeds;
