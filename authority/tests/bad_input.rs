//! Bad input on every request topic (garbage, truncated, oversized, another
//! device's payload, retained, floods) is logged and dropped; the authority
//! keeps serving everyone else.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failure stops the test loudly"
)]

mod common;

use common::*;
use mctc_shim::messages::{EnrollStatus, NoncePurpose};
use mctc_shim::topics::DeviceTopic;
use mctc_shim::{DeviceId, Message};

/// Every kind of bad payload for one topic, given a valid one and (where the
/// message names a device) the same message naming another device.
fn bad_payloads(
    valid: &[u8],
    other_device: Option<Vec<u8>>,
    limit: usize,
) -> Vec<(Vec<u8>, &'static str)> {
    let mut bad = vec![
        (Vec::new(), "undecodable"),
        (rand_bytes::<200>().to_vec(), "undecodable"),
        (valid[..valid.len() / 2].to_vec(), "undecodable"),
        ([valid, &[0x00]].concat(), "undecodable"),
        (vec![0xa1; limit + 1], "oversized"),
        (vec![0x5a; 120 * 1024], "oversized"),
    ];
    if let Some(other) = other_device {
        bad.push((other, "differs from the topic"));
    }
    bad
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_on_every_topic_is_dropped_and_others_are_served() {
    let mut fleet = Fleet::new();
    let index = fleet.start();
    assert_eq!(index, 0);
    let mut mallory = Device::new(&fleet, "mallory").await;
    fleet.add(
        "mallory",
        "locker",
        &["--ek-sha256", &mallory.ek_sha256_hex()],
    );
    assert_eq!(mallory.enroll().await, EnrollStatus::Ok);
    let victim = DeviceId::new("victim").unwrap();

    // Valid messages of each kind, and the same naming another device.
    let identity = mallory.identity.clone();
    let enroll = mallory.enroll_request([7; 16], &identity);
    let as_victim = Device::new(&fleet, "victim").await;
    let enroll_other = as_victim.enroll_request([7; 16], &identity);
    let nonce_req = mallory.nonce_request(NoncePurpose::Renew);
    let nonce_other = as_victim.nonce_request(NoncePurpose::Renew);
    let nonce = mallory.nonce().await;
    let evidence = mallory.evidence(nonce, &[0, 7]).await;
    let quote = mallory
        .tpm
        .quote(
            nonce.to_vec(),
            mctc_attest::PcrSelection::sha256(&[0, 7]).unwrap(),
        )
        .await
        .unwrap();
    let evidence_other = encode_evidence(&victim, nonce, &quote);
    let mut proof_buf = [0u8; 64];
    let proof = mctc_shim::messages::EnrollProof {
        v: mctc_shim::wire::Version::CURRENT,
        request_id: mctc_shim::wire::Bytes([7; 16]),
        proof: mctc_shim::wire::Bytes([1; 32]),
    }
    .encode(&mut proof_buf)
    .unwrap()
    .to_vec();

    let cases = [
        (DeviceTopic::EnrollRequest, enroll, Some(enroll_other), 6400),
        (DeviceTopic::EnrollProof, proof, None, 1024),
        (
            DeviceTopic::NonceRequest,
            nonce_req.clone(),
            Some(nonce_other),
            1024,
        ),
        (
            DeviceTopic::Evidence,
            evidence.clone(),
            Some(evidence_other),
            2560,
        ),
    ];
    let mut expected = Vec::new();
    for (which, valid, other, limit) in &cases {
        for (payload, reason) in bad_payloads(valid, other.clone(), *limit) {
            mallory.send(*which, payload).await;
            expected.push((*which, reason));
        }
    }
    let dropped = |fleet: &Fleet, index: usize| fleet.log(index).matches("input dropped").count();
    eventually("every bad message is logged as dropped", || {
        dropped(&fleet, index) >= expected.len()
    });

    // Retained requests: a broker hands them to every new subscription,
    // long after the device sent them, so they are replays by construction.
    // (Live subscribers get them without the retain flag, as new requests.)
    fleet.stop(index);
    for (which, valid, _, _) in &cases {
        mallory
            .mqtt
            .publish(&topic(*which, &mallory.id), valid.clone(), true)
            .await;
        expected.push((*which, "retained message"));
    }
    let index = fleet.start();
    eventually("every retained request is logged as dropped", || {
        fleet.log(index).matches("retained message").count() >= cases.len()
    });
    for (which, _, _, _) in &cases {
        // An empty retained message clears the broker's copy.
        mallory
            .mqtt
            .publish(&topic(*which, &mallory.id), Vec::new(), true)
            .await;
    }

    let log = format!("{}{}", fleet.log(0), fleet.log(index));
    for (which, reason) in &expected {
        let name = mctc_authority::engine::topic_name(*which);
        assert!(
            log.lines().any(|l| l.contains("input dropped")
                && l.contains("device=mallory")
                && l.contains(&format!("topic=\"{name}\""))
                && l.contains(reason)),
            "no drop of {name} with {reason:?}:\n{log}"
        );
    }
    // None of it earned an answer, and no session was cut.
    for answer in [
        DeviceTopic::EnrollChallenge,
        DeviceTopic::EnrollResult,
        DeviceTopic::Nonce,
        DeviceTopic::Artifact,
    ] {
        assert_eq!(mallory.next(answer, SILENCE).await, None, "{answer:?}");
    }
    assert!(fleet.alive(index));
    assert!(!log.contains("broker connection lost"), "{log}");
    assert!(!log.contains("panicked"), "{log}");

    // Everyone else is still served, and so is mallory's valid evidence.
    let mut honest = Device::new(&fleet, "locker-9").await;
    fleet.add(
        "locker-9",
        "locker",
        &["--ek-sha256", &honest.ek_sha256_hex()],
    );
    assert_eq!(honest.enroll().await, EnrollStatus::Ok);
    honest.attest().await.1.artifact();
    mallory.attest().await.1.artifact();

    // A flood of nonce requests: the bucket (burst 10, 1/s) answers a few.
    for _ in 0..40 {
        mallory
            .send(DeviceTopic::NonceRequest, nonce_req.clone())
            .await;
    }
    let mut answered = 0;
    while mallory.next(DeviceTopic::Nonce, SILENCE).await.is_some() {
        answered += 1;
    }
    assert!(
        (1..=12).contains(&answered),
        "{answered} nonces for 40 requests"
    );
    assert!(fleet.log(index).contains("rate limited"));
    // The honest device is not affected by mallory's bucket.
    honest.attest().await.1.artifact();
    drop(as_victim);
}
