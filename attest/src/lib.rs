//! mctc-attest: the hardware root of mctc.
//!
//! Device side: TPM identity (EK, AK) and evidence (quotes) through
//! tss-esapi. Verifier side: pure-Rust checks of that evidence with ring.
//! This crate does no network IO.
#![forbid(unsafe_code)]
