//! What every row of the matrix is handed besides the fleet.

use mctc_shim::RingSigner;

use super::broken::{Broken, Context};
use super::scenarios::platform::ClockDevice;

/// What every row may use: the authority's key (to forge genuine-looking
/// messages), the clock device when a row needs it, and the run's one
/// seeded random generator.
#[derive(Debug)]
pub struct Ctx {
    pub signer: RingSigner,
    pub clock: Option<ClockDevice>,
    pub rng: fastrand::Rng,
}

impl Ctx {
    pub fn clock(&self) -> Result<&ClockDevice, Broken> {
        self.clock.as_ref().context("the clock device")
    }
}
