#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failure stops the test loudly"
)]
//! The TPM's errors reach the agent typed, with the class it acts on —
//! against a real swtpm, through the production `TpmPlatform`: a hung TPM
//! gives no answer (the executor's quote timeout makes that a transient
//! error), a TPM that went away is transient (the worker reconnects), a
//! stopped worker is fatal.

use std::time::Duration;

use mctc_agent::platform::{Platform, PlatformError, PlatformOp, TpmClass, TpmPlatform};
use mctc_attest::device::{Tpm, TpmConfig};
use mctc_tests::Swtpm;

#[tokio::test]
async fn a_hung_a_vanished_and_a_stopped_tpm_take_three_different_paths() {
    let mut swtpm = Swtpm::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tpm = Tpm::open(TpmConfig {
        tcti: swtpm.tcti(),
        allow_software_tpm: true,
        ..TpmConfig::new(dir.path())
    })
    .await
    .unwrap();
    tpm.identity().await.unwrap();
    let platform = TpmPlatform { tpm: tpm.clone() };
    let pcr0 = mctc_shim::tpm::PcrSelection::sha256(1);
    let quote = platform.quote([1; 32], pcr0).await.unwrap();
    assert_eq!(quote.pcr_values.len(), 1);

    // Hung (SIGSTOP): no answer at all, not an error. The executor bounds
    // the wait and calls that a transient failure.
    swtpm.pause().unwrap();
    let hung = tokio::time::timeout(Duration::from_secs(2), platform.quote([2; 32], pcr0)).await;
    assert!(hung.is_err(), "a paused TPM answered: {hung:?}");
    swtpm.resume().unwrap();
    // The hung request completes once it answers; the TPM works again.
    platform.quote([3; 32], pcr0).await.unwrap();

    // Gone (the process died): an error below the TPM, transient — the
    // worker reconnects on the next request.
    swtpm.kill();
    let e = platform.quote([4; 32], pcr0).await.unwrap_err();
    assert_eq!(e.op(), PlatformOp::Quote);
    assert_eq!(e.class(), TpmClass::Retry, "{e}");
    assert!(matches!(e, PlatformError::Tpm { .. }), "{e:?}");
    swtpm.start_again().unwrap();
    // Polled until it answers (the pace is not synchronisation: each
    // attempt is the event).
    let mut back = false;
    for _ in 0..100 {
        if platform.quote([5; 32], pcr0).await.is_ok() {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "the TPM did not come back");

    // The worker stopped: nothing will answer in this process. Fatal.
    tpm.shutdown().await;
    let e = platform.quote([6; 32], pcr0).await.unwrap_err();
    assert_eq!(e.class(), TpmClass::Fatal, "{e}");
    let e = platform
        .observe(mctc_shim::tpm::PcrSelection::sha256(1))
        .await
        .unwrap_err();
    assert_eq!(e.class(), TpmClass::Fatal, "{e}");
}
