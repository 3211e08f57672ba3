//! The harness's swtpm answers real TSS calls.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failure stops the test loudly"
)]

use std::str::FromStr;

use mctc_tests::Swtpm;
use tss_esapi::Context;
use tss_esapi::tcti_ldr::TctiNameConf;

#[test]
fn get_random_through_tss_esapi_against_swtpm() {
    let tpm = Swtpm::start().expect("start swtpm");
    let tcti = TctiNameConf::from_str(&tpm.tcti()).expect("parse TCTI");
    let mut context = Context::new(tcti).expect("open TSS context on swtpm");
    let a = context.get_random(32).expect("TPM2_GetRandom");
    let b = context.get_random(32).expect("TPM2_GetRandom");
    assert_eq!(a.len(), 32);
    assert_ne!(a.value(), b.value(), "two random draws must differ");
}
