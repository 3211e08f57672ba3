//! The shared test harness: real components, started privately, torn down on drop.
//!
//! Every crate's integration tests and the workspace end-to-end tests use this
//! library instead of mocks:
//!
//! - [`Swtpm`]: a private software TPM on free loopback ports, with its own
//!   temporary state, that can be reset, restarted, killed and have its PCRs
//!   extended from outside (drift).
//! - [`Broker`]: a private Mosquitto with a throw-away PKI, TLS 1.3 with client
//!   certificates, in the operator's layout: Debian's stock mosquitto.conf
//!   with the shipped drop-in (`configs/mosquitto/conf.d/mctc.conf`) and
//!   dynamic-security roles.
//! - [`Proc`]: the project's own binaries started with a config, logs captured.
//! - `authority`, `collector` (feature `fixtures`): the fixtures of those
//!   crates' integration tests (the real binaries, devices on swtpm, signed
//!   registry records and lineage, bundles).
//! - [`scrape`]: raw HTTP to the services' `/metrics` and the exposition
//!   parsed.
//! - [`mqtt`]: the one MQTT test client, blocking ([`mqtt::MqttClient`]) or
//!   async ([`mqtt::Client`]), ready only once its subscriptions are granted.
//!
//! A missing program is an error that says how to install it; nothing is
//! silently skipped.
#![forbid(unsafe_code)]
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test harness: a broken test environment should stop the test loudly"
)]

#[cfg(feature = "fixtures")]
pub mod authority;
mod broker;
#[cfg(feature = "fixtures")]
pub mod collector;
mod error;
pub mod fleet;
pub mod forge;
pub mod mqtt;
mod pki;
mod ports;
mod process;
pub mod scrape;
mod swtpm;
mod tpm_wire;

pub use broker::{
    Broker, ClientIdentity, DEBIAN_STOCK_CONF, DropinPaths, FLEET_DROPIN, FLEET_DYNSEC, MainPaths,
    OBSERVER, SERVICE_GROUP_FILTERS, SERVICES, client_tls_config, debian_main_config,
    debian_stock_config, dropin_config,
};
pub use error::HarnessError;
pub use pki::{CertFiles, Pki};
pub use ports::{free_port, free_port_pair};
pub use process::{Proc, bin_path, wait_until};
pub use swtpm::{Swtpm, SwtpmOptions};

/// Checks that `program` is on `PATH`; the error says which packages provide it.
pub fn require_program(program: &str, packages: &str) -> Result<std::path::PathBuf, HarnessError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(program);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(HarnessError::Missing {
        program: program.to_owned(),
        packages: packages.to_owned(),
    })
}
