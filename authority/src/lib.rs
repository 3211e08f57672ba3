//! mctc-authority: the fleet-side Verifier and artifact issuer.
//!
//! It enrolls devices by credential activation, hands out nonces, verifies
//! TPM evidence with `mctc-attest`, issues signed artifacts or refusals,
//! publishes the fleet heartbeat and signed control messages, and keeps its
//! state in SQLite behind the [`store::Store`] trait. The same binary is the
//! fleet manager's CLI. `authority/README.md` documents the CLI, the
//! configuration, the policy file, the database and the protocol decisions.
//!
//! - [`model`]: the shared data (device record, decision, learned digest)
//!   and name grammar; it imports no other module of the crate.
//! - [`verdict`]: the sans-IO decision on one piece of evidence.
//! - [`store`]: the state, one atomic transaction per decision.
//! - [`engine`]: the worker answering devices; [`housekeeping`]: heartbeat,
//!   outbox, sweep; [`daemon`]: link, dispatch, threads, systemd.
//! - [`issuer`]: everything the authority signs; [`metrics`]: what
//!   `/metrics` shows.
//! - [`config`], [`policy`]: the two files; [`cli`]: the command line,
//!   with the `policy` commands in [`policy_cli`]; [`backup`]: backup and
//!   restore of the store; [`explain`]: the fleet manager's hint for a
//!   device (`devices show`).
#![forbid(unsafe_code)]

pub mod backup;
pub mod checkup;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod error;
pub mod explain;
pub mod housekeeping;
pub mod issuer;
pub mod metrics;
pub mod model;
pub mod now;
pub mod outbox;
pub mod policy;
pub mod policy_cli;
pub mod ratelimit;
pub mod store;
pub mod verdict;

pub use error::Error;
