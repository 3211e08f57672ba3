//! The device's artifact check, `mctc_shim::verify_artifact`, as the agent
//! calls it on every message of `dev/{dev}/artifact`.
//!
//! Input: a mode byte, then
//! - mode 0: the received bytes, verified as they are;
//! - mode 1: a claims payload, signed by the trusted authority key first, so
//!   mutations reach the claim checks behind the signature;
//! - mode 2: a kind byte and a payload, signed as another kind (or by an
//!   untrusted key): never an artifact.
//!
//! Invariants: no panic; whatever verifies is for this device, boot and
//! nonce, has a deadline after receipt and within the ttl limit, and opens
//! a fresh gate at its receipt, with events that lineage can record.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mctc_fuzz::cose::{seal, seal_with};
use mctc_fuzz::fixtures::{self, BOOT, NONCE, RECEIVED_MS, WALL_MS};
use mctc_fuzz::input::Input;
use mctc_fuzz::journal::Journal;
use mctc_shim::gate::{DEFAULT_MAX_FRESH_AGE_MS, GateState, Persisted};
use mctc_shim::limits::MAX_TTL_MS;
use mctc_shim::{
    Gate, GateConfig, MessageKind, OpRequest, RingCrypto, VerifiedArtifact, verify_artifact,
};

const OTHER_KINDS: [MessageKind; 5] = [
    MessageKind::Refusal,
    MessageKind::Heartbeat,
    MessageKind::Control,
    MessageKind::RegistryRecord,
    MessageKind::EnrollResult,
];

fn check_verified(artifact: VerifiedArtifact) {
    let device = fixtures::device();
    assert_eq!(artifact.sub(), &device);
    assert_eq!(artifact.nonce(), &NONCE);
    assert_eq!(artifact.boot(), BOOT);
    assert_eq!(artifact.received_ms(), RECEIVED_MS);
    assert!(
        artifact.deadline_ms() > RECEIVED_MS,
        "deadline not after receipt"
    );
    assert!(
        artifact.deadline_ms() <= RECEIVED_MS + u64::from(MAX_TTL_MS),
        "deadline beyond the longest ttl"
    );

    let mut gate = Gate::new(
        GateConfig {
            device: device.clone(),
            max_fresh_age_ms: DEFAULT_MAX_FRESH_AGE_MS,
        },
        Persisted::default(),
    );
    let scope = artifact.scope().to_vec();
    let events = gate
        .install(artifact, gate.generation(), RECEIVED_MS)
        .expect("a verified artifact opens a fresh gate at its receipt");
    assert!(matches!(gate.state(), GateState::Open(_)));
    let mut journal = Journal::new(device);
    journal.record(&events, RECEIVED_MS);

    // Ask for every operation in scope, at its limit: decisions on fuzzed
    // scopes must be answerable and recordable.
    for entry in &scope {
        let request = OpRequest {
            op: entry.op(),
            amount: entry.max_amount(),
            currency: entry.currency(),
        };
        let decision = gate.decide(&request, RECEIVED_MS);
        journal.record(&decision.events, RECEIVED_MS);
        if decision.is_permit() {
            assert!(
                !entry.fresh_attestation(),
                "permitted without fresh attestation"
            );
        }
        journal.record_body(decision.body(&request, Some("fuzz")), RECEIVED_MS);
    }
}

fn verify(bytes: &[u8]) -> bool {
    let device = fixtures::device();
    let keys = fixtures::keys();
    let mut accepted = false;
    for wall in [None, Some(WALL_MS)] {
        let ctx = fixtures::context(&device, &keys, wall);
        if let Ok(artifact) = verify_artifact(bytes, &ctx, &RingCrypto) {
            check_verified(artifact);
            accepted = true;
        }
    }
    accepted
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    match input.u8() % 3 {
        0 => {
            verify(input.rest());
        }
        1 => {
            verify(&seal(MessageKind::Artifact, input.rest()));
        }
        _ => {
            let which = usize::from(input.u8());
            let payload = input.rest();
            let bytes = match OTHER_KINDS.get(which % (OTHER_KINDS.len() + 1)) {
                Some(kind) => seal(*kind, payload),
                None => seal_with(MessageKind::Artifact, payload, &fixtures::rogue_signer()),
            };
            assert!(
                !verify(&bytes),
                "accepted a message of another kind or key as an artifact"
            );
        }
    }
});
