//! TPM platform state as it travels in mctc messages: boot counters and PCR
//! selections.

use crate::error::{Invalid, Problem};
use crate::limits::MAX_PCRS;
use crate::wire::wire_map;

/// `TPM_ALG_SHA256`: the only PCR bank mctc attests (values are 32 bytes).
pub const TPM_ALG_SHA256: u16 = 0x000B;

/// The mask of all PCRs a PC-client TPM has (0–23).
pub const ALL_PCRS_MASK: u32 = (1 << MAX_PCRS) - 1;

wire_map! {
    /// The TPM's boot counters from `TPMS_CLOCK_INFO`: they identify one
    /// TPM boot, so an artifact bound to them dies with a TPM reset or
    /// restart.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
    pub struct BootCounters {
        /// `resetCount`: TPM resets (power cycles, `TPM2_Startup(CLEAR)`).
        0 => reset: u32,
        /// `restartCount`: TPM restarts (resume from hibernation).
        1 => restart: u32,
    }
}

/// A PCR selection in the SHA-256 bank: bit `i` of `mask` selects PCR `i`.
/// Values listed for a selection come in ascending PCR order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PcrSelection {
    /// The bank's algorithm id (always [`TPM_ALG_SHA256`] when valid).
    pub alg: u16,
    /// The selected PCRs as a bit mask (bits 0–23).
    pub mask: u32,
}

impl PcrSelection {
    /// A SHA-256 selection of the PCRs in `mask`.
    pub const fn sha256(mask: u32) -> Self {
        Self {
            alg: TPM_ALG_SHA256,
            mask,
        }
    }

    /// The selected PCR indices, ascending.
    pub fn indices(&self) -> impl Iterator<Item = u8> + '_ {
        (0..MAX_PCRS as u8).filter(|i| self.mask & (1 << i) != 0)
    }

    /// How many PCRs are selected.
    pub const fn count(&self) -> usize {
        self.mask.count_ones() as usize
    }

    /// Checks the bank is SHA-256 and the mask selects 1 to 24 PCRs within
    /// 0–23.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.alg != TPM_ALG_SHA256 {
            return Err(Invalid {
                field: "pcr_alg",
                problem: Problem::OutOfRange,
            });
        }
        if self.mask == 0 || self.mask & !ALL_PCRS_MASK != 0 {
            return Err(Invalid {
                field: "pcr_mask",
                problem: Problem::OutOfRange,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_rules() {
        assert!(PcrSelection::sha256(0b1000_0001).validate().is_ok());
        assert_eq!(
            PcrSelection::sha256(0b1000_0001)
                .indices()
                .collect::<Vec<_>>(),
            [0, 7]
        );
        assert!(PcrSelection::sha256(0).validate().is_err());
        assert!(PcrSelection::sha256(1 << 24).validate().is_err());
        assert!(
            PcrSelection {
                alg: 0x0004,
                mask: 1
            }
            .validate()
            .is_err()
        );
        assert_eq!(PcrSelection::sha256(ALL_PCRS_MASK).count(), 24);
    }
}
