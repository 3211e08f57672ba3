//! mctc-agent as a library: the daemon's parts, so that the binary, the
//! end-to-end tests and the fuzz targets call the same code.
//!
//! - [`config`]: the TOML configuration, validated once.
//! - [`daemon`]: `run`, the wiring of the tasks and threads below.
//! - [`enforcement`]: the one task that owns the shim's gate, and the
//!   attestation session.
//! - [`drift`], [`measured`]: re-reading PCRs, boot counters and measured
//!   files every drift interval.
//! - [`socket`]: the local gate socket (line-delimited JSON) and its thin
//!   client.
//! - [`lineage`]: the durable log, its writer thread (group commit,
//!   checkpoints), forwarding to the collector, bundle export.
//! - [`enroll`]: enrollment and identity.
//! - [`checkup`]: `check-config` and `doctor`.
//! - [`state`]: what persists between runs (never an open gate).
//! - [`platform`], [`outbox`], [`clock`]: the seams to the TPM, the broker
//!   and time (traits, so tests can drive time).
#![forbid(unsafe_code)]

pub mod checkup;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod drift;
pub mod enforcement;
pub mod enroll;
pub mod error;
pub mod lineage;
pub mod measured;
pub mod outbox;
pub mod platform;
pub mod socket;
pub mod state;

pub use error::AgentError;
