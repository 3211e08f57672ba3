//! The collector's test fixtures live in the shared harness
//! (`mctc_tests::collector`, feature `fixtures`); what needs the
//! collector's own types stays here.
#![allow(dead_code, reason = "each test file uses a different subset")]

pub use mctc_tests::collector::*;

use mctc_collector::receipt::ReceiptSigner;

/// The test collectors' receipt signer.
pub fn receipt_signer() -> ReceiptSigner {
    ReceiptSigner::from_seed(&RECEIPT_SEED).unwrap()
}
