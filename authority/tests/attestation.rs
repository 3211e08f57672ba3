//! Attestation against the real binary with devices on swtpm: artifacts that
//! verify on the device and follow the policy, every refusal, drift and
//! automatic containment, contained and revoked devices, baselines.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failure stops the test loudly"
)]

mod common;

use common::*;
use mctc_shim::artifact::{Claims, Currency, VerifyContext, verify_artifact};
use mctc_shim::gate::{verify_control, verify_heartbeat};
use mctc_shim::messages::{
    ControlAction, DeviceStatus, EnrollStatus, NoncePurpose, RefusalCode, RegistryRecord,
};
use mctc_shim::topics::{DeviceTopic, HEARTBEAT};
use mctc_shim::tpm::BootCounters;
use mctc_shim::{RingCrypto, Signed};

/// A running fleet with one enrolled locker.
async fn enrolled(name: &str, class: &str) -> (Fleet, Device) {
    let mut fleet = Fleet::new();
    fleet.start();
    let mut device = Device::new(&fleet, name).await;
    fleet.add(name, class, &["--ek-sha256", &device.ek_sha256_hex()]);
    assert_eq!(device.enroll().await, EnrollStatus::Ok);
    (fleet, device)
}

async fn boot(device: &Device) -> BootCounters {
    device.tpm.boot_counters().await.unwrap()
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

async fn control(fleet: &Fleet, device: &mut Device) -> (u64, ControlAction, String, bool) {
    let t = topic(DeviceTopic::Control, &device.id);
    let (bytes, retained) = device
        .mqtt
        .next_with(&t, ANSWER)
        .await
        .expect("a control message");
    let c = verify_control(&bytes, &fleet.keys(), &RingCrypto, &device.id).unwrap();
    let m = c.message();
    (m.seq, m.action, m.reason.0.to_owned(), retained)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_verify_on_the_device_and_follow_the_policy() {
    let (fleet, mut device) = enrolled("locker-1", "locker").await;
    // The fresh swtpm's PCRs 0 and 7 are the policy's reference (zeros).
    let (nonce, answer) = device.attest().await;
    let bytes = answer.artifact();

    let keys = fleet.keys();
    let ctx = VerifyContext {
        device: &device.id,
        issuer: AUTHORITY_ID,
        keys: &keys,
        nonce: &nonce,
        boot: boot(&device).await,
        received_ms: 5_000,
        wall_ms: Some(wall_ms()),
    };
    let verified = verify_artifact(&bytes, &ctx, &RingCrypto).unwrap();
    // The class's ttl; `exp` (rounded up) cuts it by at most the delivery
    // delay on a device with a trusted wall clock.
    let remaining = verified.deadline_ms() - 5_000;
    assert!((44_000..=45_000).contains(&remaining), "{remaining}");
    let untrusted_clock = VerifyContext {
        wall_ms: None,
        ..ctx
    };
    let verified = verify_artifact(&bytes, &untrusted_clock, &RingCrypto).unwrap();
    assert_eq!(verified.deadline_ms() - 5_000, 45_000);
    assert_eq!(verified.hb_ms(), 3_000);
    assert_eq!(verified.pcr_selection().mask, 0b1000_0001);
    assert_eq!(verified.epoch(), 0);
    let unlock = verified.scope_for("unlock").unwrap();
    assert_eq!(unlock.max_amount(), None);
    assert!(!unlock.fresh_attestation());
    let capture = verified.scope_for("capture").unwrap();
    assert_eq!(capture.max_amount(), Some(2500));
    assert_eq!(capture.currency(), Currency::new("EUR"));
    assert!(capture.fresh_attestation());
    assert!(verified.scope_for("refund").is_none());
    let claims = Claims::open(&bytes, &keys, &RingCrypto).unwrap();
    assert!((45..=46).contains(&(claims.exp - claims.iat)));
    let quoted = device
        .tpm
        .read_pcrs(mctc_attest::PcrSelection::sha256(&[0, 7]).unwrap())
        .await
        .unwrap();
    assert_eq!(&claims.pcr_digest.0, &quoted.composite_digest());

    // Renewal: quote the artifact's next_nonce, no nonce request.
    let next = *verified.next_nonce();
    let renewal = device.evidence(next, &[0, 7]).await;
    let renewed = device.submit(renewal).await.artifact();
    let renewed = Claims::open(&renewed, &keys, &RingCrypto).unwrap();
    assert_eq!(renewed.nonce.0, next);
    assert_ne!(renewed.cti, claims.cti);
    assert!(renewed.hb_seq >= claims.hb_seq);

    // A fresh-operation nonce answers the same way.
    let fresh = device
        .nonce_within(NoncePurpose::FreshOp, ANSWER)
        .await
        .unwrap();
    let evidence = device.evidence(fresh, &[0, 7]).await;
    device.submit(evidence).await.artifact();

    // Two attestations in flight (a renewal and a fresh operation): the
    // later quote is decided first; the earlier one is reordering, not a
    // TPM rollback.
    let renew = device.nonce().await;
    let fresh = device
        .nonce_within(NoncePurpose::FreshOp, ANSWER)
        .await
        .unwrap();
    let earlier = device.evidence(renew, &[0, 7]).await;
    // The later quote must carry a later TPM clock: wait for the TPM's
    // clock to move on (an event on the TPM), not for a fixed time.
    let quoted = device.tpm.read_clock().await.unwrap().clock;
    let deadline = tokio::time::Instant::now() + ANSWER;
    while device.tpm.read_clock().await.unwrap().clock <= quoted {
        assert!(tokio::time::Instant::now() < deadline, "TPM clock stuck");
        tokio::task::yield_now().await;
    }
    let later = device.evidence(fresh, &[0, 7]).await;
    device.submit(later).await.artifact();
    device.submit(earlier).await.artifact();

    let shown = fleet.cli(&["devices", "show", "locker-1", "--json"]).json();
    assert_eq!(shown["artifacts_issued"], 5);
    assert_eq!(shown["last_verdict"], "affirmed");
    assert_eq!(shown["last_pcrs"]["values"]["7"], ZERO);
    assert_eq!(
        shown["boot"]["reset_count"],
        u64::from(boot(&device).await.reset)
    );
    let log = fleet.log(0);
    assert!(log.contains("artifact issued"));
    // Nonces never reach the log.
    for n in [nonce, next, renew, fresh] {
        assert!(!log.contains(&hex::encode(n)), "a nonce was logged");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_stale_and_forged_evidence_is_refused() {
    let mut fleet = Fleet::new();
    // Short nonce lifetime to see expiry.
    let config = fleet.write_config("short.toml", "[limits]\nnonce_ttl_ms = 1000");
    fleet.start_with(&config);
    let mut device = Device::new(&fleet, "locker-1").await;
    fleet.add(
        "locker-1",
        "locker",
        &["--ek-sha256", &device.ek_sha256_hex()],
    );
    assert_eq!(device.enroll().await, EnrollStatus::Ok);

    let nonce = device.nonce().await;
    let evidence = device.evidence(nonce, &[0, 7]).await;
    device.submit(evidence.clone()).await.artifact();
    // The same evidence again: its nonce is used.
    let refusal = device.submit(evidence).await.refusal();
    assert_eq!(refusal.reason, RefusalCode::StaleNonce);
    assert_eq!(refusal.nonce.0, nonce);
    assert!(!refusal.contained);
    // A nonce the authority never issued.
    let invented = device.evidence(rand_bytes(), &[0, 7]).await;
    assert_eq!(
        device.submit(invented).await.refusal().reason,
        RefusalCode::StaleNonce
    );
    // An expired nonce.
    let nonce = device.nonce().await;
    // The fault itself: the nonce's lifetime (1 s) runs out on the
    // authority's real clock. Not a wait for an event.
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let late = device.evidence(nonce, &[0, 7]).await;
    assert_eq!(
        device.submit(late).await.refusal().reason,
        RefusalCode::StaleNonce
    );

    // Quotes that do not prove what they claim.
    let nonce = device.nonce().await;
    let wrong_pcrs = device.evidence(nonce, &[0]).await;
    assert_eq!(
        device.submit(wrong_pcrs).await.refusal().reason,
        RefusalCode::BadEvidence,
        "not the class's PCR selection"
    );
    let nonce = device.nonce().await;
    let selection = mctc_attest::PcrSelection::sha256(&[0, 7]).unwrap();
    let mut quote = device.tpm.quote(nonce.to_vec(), selection).await.unwrap();
    quote.pcrs = mctc_attest::PcrValues::new(selection, vec![vec![0; 32], vec![1; 32]]).unwrap();
    let lying = encode_evidence(&device.id, nonce, &quote);
    assert_eq!(
        device.submit(lying).await.refusal().reason,
        RefusalCode::BadEvidence,
        "reported values differ from the quoted digest"
    );
    let nonce = device.nonce().await;
    let other_nonce = device.nonce().await;
    let quote = device
        .tpm
        .quote(other_nonce.to_vec(), selection)
        .await
        .unwrap();
    let swapped = encode_evidence(&device.id, nonce, &quote);
    assert_eq!(
        device.submit(swapped).await.refusal().reason,
        RefusalCode::BadEvidence,
        "the quote answers another nonce"
    );
    let shown = fleet.cli(&["devices", "show", "locker-1", "--json"]).json();
    assert_eq!(
        shown["status"], "active",
        "bad evidence alone never contains"
    );
    assert_eq!(shown["last_refusal"], "bad-evidence");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evidence_under_an_unenrolled_ak_is_refused() {
    let (_fleet, mut device) = enrolled("locker-1", "locker").await;
    device.attest().await.1.artifact();
    // The TPM makes a new AK that never went through enrollment.
    device.identity = device.tpm.reprovision().await.unwrap();
    let (_, answer) = device.attest().await;
    let refusal = answer.refusal();
    assert_eq!(refusal.reason, RefusalCode::NotEnrolled);
    assert!(!refusal.contained);
    // Re-enrolling the new AK (same EK) makes its quotes count again.
    assert_eq!(device.enroll().await, EnrollStatus::Ok);
    device.attest().await.1.artifact();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_contains_and_a_contained_device_gets_nothing_until_restored() {
    let (fleet, mut device) = enrolled("locker-1", "locker").await;
    let artifact = device.attest().await.1.artifact();
    let next_nonce = Claims::open(&artifact, &fleet.keys(), &RingCrypto)
        .unwrap()
        .next_nonce
        .0;

    // Someone boots another policy: PCR 7 changes.
    device.swtpm.extend_pcr(7, b"unsigned boot loader").unwrap();
    let (_, answer) = device.attest().await;
    let refusal = answer.refusal();
    assert_eq!(refusal.reason, RefusalCode::PolicyMismatch);
    assert!(refusal.contained);
    let (seq, action, reason, retained) = control(&fleet, &mut device).await;
    assert_eq!((seq, action), (1, ControlAction::Contain));
    assert_eq!(reason, "pcr drift: PCR 7");
    assert!(!retained, "live delivery");
    let shown = fleet.cli(&["devices", "show", "locker-1", "--json"]).json();
    assert_eq!(shown["status"], "contained");
    assert_eq!(shown["reason"], "pcr drift: PCR 7");

    // A collector sees the new standing.
    let mut collector = fleet
        .client("mctc-collector", &["mctc/v1/registry/+"])
        .await;
    let registry = collector
        .next_on(&topic(DeviceTopic::Registry, &device.id), ANSWER)
        .await
        .unwrap();
    let record = RegistryRecord::open(&registry, &fleet.keys(), &RingCrypto).unwrap();
    assert_eq!(record.status, DeviceStatus::Contained);

    // Contained: no nonce, and the artifact's next_nonce earns a refusal.
    assert_eq!(
        device.nonce_within(NoncePurpose::Renew, SILENCE).await,
        None
    );
    let evidence = device.evidence(next_nonce, &[0, 7]).await;
    let refusal = device.submit(evidence).await.refusal();
    assert_eq!(refusal.reason, RefusalCode::Contained);
    assert!(refusal.contained);
    assert!(fleet.log(0).contains("device is contained"));

    // The operator restores it; it is still drifted, so it is contained again.
    let out = fleet.cli(&["devices", "restore", "locker-1", "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json()["status"], "active");
    let (seq, action, _, _) = control(&fleet, &mut device).await;
    assert_eq!((seq, action), (2, ControlAction::Restore));
    let refusal = device.attest().await.1.refusal();
    assert!(refusal.contained);
    assert_eq!(control(&fleet, &mut device).await.1, ControlAction::Contain);

    // A contained, drifted device's values are not learned by a bare
    // --yes; with --force the new value is accepted besides the class's
    // and, restored, the device passes.
    let refused = fleet.cli(&["policy", "learn", "locker-1", "--yes"]);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stderr.contains("it is contained"), "{refused:?}");
    assert!(refused.stderr.contains("drifted"), "{refused:?}");
    assert!(refused.stderr.contains("--force"), "{refused:?}");
    assert_eq!(refused.stderr.lines().count(), 1, "{refused:?}");
    let learn = fleet.cli(&["policy", "learn", "locker-1", "--yes", "--force", "--json"]);
    assert_eq!(learn.code, 0, "{learn:?}");
    assert_eq!(learn.json()["stored"], true);
    assert_eq!(learn.json()["mode"], "add");
    assert_eq!(learn.json()["would_contain"], 0);
    assert_eq!(fleet.cli(&["devices", "restore", "locker-1"]).code, 0);
    assert_eq!(
        control(&fleet, &mut device).await.0,
        4,
        "the CLI's change reaches the device through the running authority"
    );
    device.attest().await.1.artifact();

    // A device connecting later gets the latest control, retained.
    let mut late = fleet
        .client("locker-1", &["mctc/v1/dev/locker-1/control"])
        .await;
    let (bytes, retained) = late
        .next_with(&topic(DeviceTopic::Control, &device.id), ANSWER)
        .await
        .unwrap();
    assert!(retained);
    let c = verify_control(&bytes, &fleet.keys(), &RingCrypto, &device.id).unwrap();
    assert_eq!(c.message().action, ControlAction::Restore);
    assert_eq!(c.message().seq, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_device_gets_nothing_and_the_fleet_hears_of_it() {
    let (fleet, mut device) = enrolled("locker-1", "locker").await;
    let artifact = device.attest().await.1.artifact();
    let claims = Claims::open(&artifact, &fleet.keys(), &RingCrypto).unwrap();
    let next_nonce = claims.next_nonce.0;
    assert_eq!(claims.epoch, 0);

    // The device is cut off at the broker (below); the heartbeat is heard
    // by a monitor.
    let mut monitor = fleet.client("mctc-monitor", &[HEARTBEAT]).await;
    let out = fleet.cli(&[
        "devices", "revoke", "locker-1", "--reason", "stolen", "--json",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.json(),
        serde_json::json!({"device": "locker-1", "status": "revoked", "changed": true})
    );
    let (_, action, reason, _) = control(&fleet, &mut device).await;
    assert_eq!((action, reason.as_str()), (ControlAction::Revoke, "stolen"));

    // The fleet heartbeat lists it, with the new epoch.
    let deadline = std::time::Instant::now() + ANSWER;
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no heartbeat listing the revocation"
        );
        let bytes = monitor.next_on(HEARTBEAT, ANSWER).await.unwrap();
        let hb = verify_heartbeat(&bytes, &fleet.keys(), &RingCrypto).unwrap();
        let hb = hb.message();
        if hb.epoch == 1 {
            assert_eq!(hb.since_epoch, 0);
            assert_eq!(hb.revoked.as_slice(), [device.id.clone()]);
            assert_eq!(hb.hb_ms, 6000, "the longest class window");
            break;
        }
    }

    // Nothing more for it: the broker no longer lets it ask.
    assert_eq!(
        device.nonce_within(NoncePurpose::Renew, SILENCE).await,
        None
    );
    // And were the broker's rights to lag behind (another broker, a restored
    // plugin file), the authority itself refuses it everything.
    fleet.broker.grant_device("locker-1").unwrap();
    let filters = [
        "mctc/v1/dev/locker-1/#".to_owned(),
        "mctc/v1/enroll/locker-1/#".to_owned(),
    ];
    device.mqtt = device_client(&fleet, "locker-1", &filters).await;
    assert_eq!(
        device.nonce_within(NoncePurpose::Renew, SILENCE).await,
        None
    );
    let evidence = device.evidence(next_nonce, &[0, 7]).await;
    let refusal = device.submit(evidence).await.refusal();
    assert_eq!(refusal.reason, RefusalCode::Revoked);
    assert_eq!(device.enroll().await, EnrollStatus::Revoked);

    // Permanent.
    let again = fleet.cli(&["devices", "revoke", "locker-1", "--reason", "x", "--json"]);
    assert_eq!(again.code, 0);
    assert_eq!(again.json()["changed"], false);
    let restore = fleet.cli(&["devices", "restore", "locker-1"]);
    assert_eq!(restore.code, 1, "{restore:?}");
    assert!(restore.stderr.contains("revoked"), "{restore:?}");
    assert_eq!(restore.stderr.lines().count(), 1);
    let contain = fleet.cli(&["devices", "contain", "locker-1", "--reason", "x"]);
    assert_eq!(contain.code, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_class_without_baseline_never_yields_an_artifact_until_learned() {
    let (fleet, mut device) = enrolled("kiosk-1", "kiosk").await;
    let refusal = device.attest().await.1.refusal();
    assert_eq!(refusal.reason, RefusalCode::PolicyMismatch);
    assert!(!refusal.contained, "no baseline is not drift");
    let shown = fleet.cli(&["devices", "show", "kiosk-1", "--json"]).json();
    assert_eq!(shown["last_refusal"], "no-baseline");
    assert_eq!(shown["status"], "active");
    assert!(
        fleet
            .log(0)
            .contains("no baseline for PCR 0,7 of class kiosk")
    );

    // Looking is not confirming.
    let look = fleet.cli(&["policy", "learn", "kiosk-1"]);
    assert_eq!(look.code, 0, "{look:?}");
    assert!(look.stdout.contains("no baseline"), "{}", look.stdout);
    assert!(look.stdout.contains("--yes"), "{}", look.stdout);
    device.attest().await.1.refusal();
    let shown = fleet.cli(&["policy", "show", "--json"]).json();
    let kiosk = shown["classes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "kiosk")
        .unwrap()
        .clone();
    assert_eq!(kiosk["missing"], serde_json::json!([0, 7]));

    let learn = fleet.cli(&["policy", "learn", "kiosk-1", "--yes", "--json"]);
    assert_eq!(learn.code, 0, "{learn:?}");
    assert_eq!(learn.json()["values"]["0"], ZERO);
    device.attest().await.1.artifact();
    let shown = fleet.cli(&["policy", "show", "--json"]).json();
    let kiosk = shown["classes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "kiosk")
        .unwrap()
        .clone();
    assert_eq!(kiosk["missing"], serde_json::json!([]));
    assert_eq!(kiosk["reference"]["7"][0]["source"], "learned");
    assert_eq!(kiosk["reference"]["7"][0]["from"], "kiosk-1");

    // Drift from the learned baseline contains, like drift from the file's.
    device.swtpm.extend_pcr(0, b"new firmware").unwrap();
    assert!(device.attest().await.1.refusal().contained);
}

/// A quote after the simulator came back: the device's TPM worker reports
/// the lost connection once, then reconnects.
async fn quote_after_outage(device: &Device, nonce: [u8; 32]) -> Vec<u8> {
    let selection = mctc_attest::PcrSelection::sha256(&[0, 7]).unwrap();
    for _ in 0..5 {
        if let Ok(quote) = device.tpm.quote(nonce.to_vec(), selection).await {
            return encode_evidence(&device.id, nonce, &quote);
        }
        // Not synchronisation: the pause between attempts to reach a
        // simulator that is restarting (bounded, five attempts).
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the TPM did not come back");
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_tpm_is_a_boot_anomaly_and_contained() {
    let (fleet, mut device) = enrolled("locker-1", "locker").await;
    device.attest().await.1.artifact();
    let first_boot = boot(&device).await;

    // Someone keeps a copy of the TPM's state...
    device.swtpm.kill();
    let snapshot = tempfile::tempdir().unwrap();
    copy_dir(&device.swtpm.state_dir(), snapshot.path());
    device.swtpm.start_again().unwrap();
    // ...the platform reboots a few times and keeps attesting...
    device.swtpm.reset().unwrap();
    device.swtpm.reset().unwrap();
    let nonce = device.nonce().await;
    let evidence = quote_after_outage(&device, nonce).await;
    device.submit(evidence).await.artifact();
    assert!(boot(&device).await.reset >= first_boot.reset + 2);

    // ...then the old state is put back: resetCount goes back.
    device.swtpm.kill();
    copy_dir(snapshot.path(), &device.swtpm.state_dir());
    device.swtpm.start_again().unwrap();
    let nonce = device.nonce().await;
    let evidence = quote_after_outage(&device, nonce).await;
    let refusal = device.submit(evidence).await.refusal();
    assert_eq!(refusal.reason, RefusalCode::BootAnomaly);
    assert!(refusal.contained);
    let shown = fleet.cli(&["devices", "show", "locker-1", "--json"]).json();
    assert_eq!(shown["status"], "contained");
    assert_eq!(shown["reason"], "tpm rollback");
    assert_eq!(shown["last_refusal"], "boot-anomaly");
    assert!(fleet.log(0).contains("resetCount went back"));
}

/// A fresh client with the device's certificate (after its broker rights
/// were granted again by the harness).
async fn device_client(fleet: &common::Fleet, id: &str, filters: &[String]) -> common::Client {
    let filters: Vec<&str> = filters.iter().map(String::as_str).collect();
    common::Client::connect(&fleet.broker, id, &filters).await
}

async fn join(fleet: &Fleet, name: &str) -> Device {
    let mut device = Device::new(fleet, name).await;
    fleet.add(name, "locker", &["--ek-sha256", &device.ek_sha256_hex()]);
    assert_eq!(device.enroll().await, EnrollStatus::Ok);
    device
}

fn locker_stage(fleet: &Fleet) -> serde_json::Value {
    let shown = fleet.cli(&["policy", "show", "--json"]).json();
    shown["classes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "locker")
        .unwrap()["stage"]
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staged_rollout_accepts_new_values_in_its_share_and_stops_itself_on_refusals() {
    let mut fleet = Fleet::new();
    fleet.start();
    // The canary runs the new firmware: drift from the file's PCR 0.
    let mut canary = join(&fleet, "locker-canary").await;
    canary.swtpm.extend_pcr(0, b"firmware v2").unwrap();
    assert!(canary.attest().await.1.refusal().contained);

    // Its values are staged only with --force (it is contained).
    let stage = [
        "policy",
        "stage",
        "locker",
        "--from",
        "locker-canary",
        "--share",
        "100",
        "--stop-after",
        "1",
        "--yes",
    ];
    let refused = fleet.cli(&stage);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stderr.contains("it is contained"), "{refused:?}");
    let mut forced = stage.to_vec();
    forced.extend(["--force", "--json"]);
    let started = fleet.cli(&forced);
    assert_eq!(started.code, 0, "{started:?}");
    let started = started.json();
    assert_eq!(started["stage"]["state"], "active");
    assert_eq!(started["would_contain"], 0);
    let id = started["stage"]["id"].as_u64().unwrap();
    // One at a time.
    let again = fleet.cli(&forced);
    assert_eq!(again.code, 1, "{again:?}");
    assert!(
        again.stderr.contains("promote or roll it back"),
        "{again:?}"
    );

    // A device of the share updated to the new firmware is accepted.
    let mut updated = join(&fleet, "locker-2").await;
    updated.swtpm.extend_pcr(0, b"firmware v2").unwrap();
    updated.attest().await.1.artifact();
    assert_eq!(locker_stage(&fleet)["failures"], 0);

    // One with a bad build is contained, under the stage's name, and that
    // refusal (stop after 1) stops the stage.
    let mut bad = join(&fleet, "locker-3").await;
    bad.swtpm.extend_pcr(0, b"firmware v2, bad build").unwrap();
    assert!(bad.attest().await.1.refusal().contained);
    let shown = fleet.cli(&["devices", "show", "locker-3", "--json"]).json();
    assert_eq!(shown["reason"], format!("pcr drift (stage {id}): PCR 0"));
    let stage = locker_stage(&fleet);
    assert_eq!(stage["state"], "stopped", "{stage}");
    assert_eq!(stage["failures"], 1);
    assert!(fleet.log(0).contains("staged rollout stopped"));

    // Stopped: the share is judged by the class's own values again, so
    // the updated device is refused and contained at its next renewal.
    assert!(updated.attest().await.1.refusal().contained);
    let shown = fleet.cli(&["devices", "show", "locker-2", "--json"]).json();
    assert_eq!(shown["reason"], "pcr drift: PCR 0");
}
