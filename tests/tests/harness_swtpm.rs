//! The swtpm harness acts on the simulator from outside: PCR extend, reset,
//! restart, kill and start again.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failure stops the test loudly"
)]

use mctc_tests::{Swtpm, SwtpmOptions};

const DRIFT_PCR: u32 = 16;

#[test]
fn extend_changes_the_pcr_and_reset_clears_it() {
    let tpm = Swtpm::start().expect("start swtpm");
    let before = tpm.read_pcr(DRIFT_PCR).unwrap();
    tpm.extend_pcr(DRIFT_PCR, b"drift").unwrap();
    let after = tpm.read_pcr(DRIFT_PCR).unwrap();
    assert_ne!(before, after);

    // new = SHA-256(old || SHA-256(data))
    let data_digest = ring::digest::digest(&ring::digest::SHA256, b"drift");
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(&before);
    ctx.update(data_digest.as_ref());
    assert_eq!(after.as_slice(), ctx.finish().as_ref());

    tpm.reset().unwrap();
    assert_eq!(
        tpm.read_pcr(DRIFT_PCR).unwrap(),
        before,
        "reset clears PCR 16"
    );
    tpm.extend_pcr(DRIFT_PCR, b"drift").unwrap();
    tpm.restart().unwrap();
    assert_eq!(
        tpm.read_pcr(DRIFT_PCR).unwrap(),
        before,
        "restart clears PCR 16"
    );
}

#[test]
fn kill_and_start_again_keeps_the_ports_and_state() {
    let mut tpm = Swtpm::start().expect("start swtpm");
    let port = tpm.data_port();
    tpm.kill();
    assert!(!tpm.is_running());
    assert!(tpm.read_pcr(0).is_err(), "a killed TPM does not answer");
    tpm.start_again().unwrap();
    assert_eq!(tpm.data_port(), port);
    tpm.read_pcr(0).unwrap();
}

#[test]
fn manufactured_tpm_has_ek_certificates_from_a_private_ca() {
    let tpm = Swtpm::start_with(SwtpmOptions {
        ek_certificates: true,
    })
    .expect("start manufactured swtpm");
    for ca in tpm.ek_ca_certificates() {
        let pem = std::fs::read_to_string(&ca).unwrap();
        assert!(pem.contains("BEGIN CERTIFICATE"), "{}", ca.display());
    }
    tpm.read_pcr(0).unwrap();
}
