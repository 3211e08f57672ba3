//! TPM evidence as the authority verifies it: mctc-attest's `TPMS_ATTEST`
//! parser (`verifier::Attest::parse`), `Signature::parse`,
//! `AkPublic::parse` / `EkPublic::parse` (enrollment), and
//! `verify_quote` / `verify_signed_quote` against a fixed AK.
//!
//! Input: a mode byte, then
//! - mode 0: bytes fed to every structure parser;
//! - mode 1: a shim `Evidence` message, converted and verified the way the
//!   authority does (PCR values from the message, qualifying data = its
//!   nonce, selection = the policy's PCRs 0–7);
//! - mode 2: a `TPMS_ATTEST` that the fixed AK signs first, so mutations
//!   reach the checks after the signature (qualifying data, selection, PCR
//!   digest, boot counters, clock), verified against the fixture PCRs and a
//!   last-accepted clock taken from the next 17 bytes of input.
//!
//! Invariants: no panic; a verified quote's digest is the composite of the
//! values it was given and its clock is what the attest says; a quote that
//! `verify_quote` accepts is also accepted by `verify_signed_quote`; a
//! parsed public key keeps its bytes.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mctc_attest::verifier::{
    AkPublic, Attest, EkPublic, QuoteExpectation, Signature, make_credential, verify_quote,
    verify_signed_quote,
};
use mctc_attest::{ClockInfo, Evidence, HashAlg, PcrSelection, PcrValues};
use mctc_fuzz::ak::{self, FixedAk};
use mctc_fuzz::fixtures::PCR_MASK;
use mctc_fuzz::input::Input;
use mctc_shim::Message;
use mctc_shim::messages::Evidence as EvidenceMessage;

fn ak() -> &'static FixedAk {
    static AK: OnceLock<FixedAk> = OnceLock::new();
    AK.get_or_init(FixedAk::load)
}

fn ak_public() -> &'static AkPublic {
    static AK: OnceLock<AkPublic> = OnceLock::new();
    AK.get_or_init(|| ak().verifier())
}

fn policy() -> PcrSelection {
    PcrSelection::from_mask(HashAlg::Sha256, PCR_MASK).expect("PCRs 0-7")
}

fn parsers(bytes: &[u8]) {
    if let Ok(attest) = Attest::parse(bytes) {
        assert!(attest.extra_data.len() <= 64);
    }
    let _ = Signature::parse(bytes);
    if let Ok(key) = AkPublic::parse(bytes) {
        assert_eq!(key.as_bytes(), bytes);
    }
    if let Ok(ek) = EkPublic::parse(bytes) {
        assert_eq!(ek.as_bytes(), bytes);
        let _ = make_credential(&ek, ak().name(), &[0x5c; 32]);
    }
}

fn check(evidence: &Evidence, qualifying_data: &[u8], last: Option<&ClockInfo>) {
    let selection = policy();
    let expected = QuoteExpectation {
        qualifying_data,
        selection: &selection,
        last_accepted: last,
    };
    let Ok(verified) = verify_quote(ak_public(), evidence, &expected) else {
        return;
    };
    assert_eq!(verified.pcr_digest(), &evidence.pcrs.composite_digest());
    let attest = Attest::parse(&evidence.attest).expect("a verified quote parses");
    assert_eq!(verified.clock(), &attest.clock);
    if let Some(last) = last {
        assert!(verified.clock().reset_count >= last.reset_count);
    }
    let signed = verify_signed_quote(
        ak_public(),
        &evidence.attest,
        &evidence.signature,
        qualifying_data,
    )
    .expect("what verify_quote accepts, verify_signed_quote accepts");
    assert_eq!(signed.pcr_digest(), verified.pcr_digest());
}

fn from_message(bytes: &[u8]) {
    let Ok(message) = EvidenceMessage::decode(bytes) else {
        return;
    };
    let reported: Vec<u8> = (0u8..24)
        .filter(|i| message.pcr_mask & (1 << i) != 0)
        .collect();
    let Ok(pcrs) = PcrSelection::sha256(&reported).and_then(|selection| {
        PcrValues::new(
            selection,
            message.pcr_values.iter().map(|v| v.0.to_vec()).collect(),
        )
    }) else {
        return;
    };
    let evidence = Evidence {
        attest: message.attest.0.to_vec(),
        signature: message.signature.0.to_vec(),
        pcrs,
        clock: ak::CLOCK,
    };
    check(&evidence, &message.nonce.0, None);
}

fn signed_here(input: &mut Input<'_>) {
    let last = ClockInfo {
        clock: input.u64(),
        reset_count: u32::from(input.u16()),
        restart_count: u32::from(input.u16()),
        safe: input.u8() & 1 == 0,
    };
    let with_last = input.u8() & 1 == 0;
    let attest = input.rest();
    let pcrs = PcrValues::new(
        policy(),
        ak::pcr_values().iter().map(|v| v.to_vec()).collect(),
    )
    .expect("fixture PCR values match the policy");
    let evidence = Evidence {
        attest: attest.to_vec(),
        signature: ak().sign(attest),
        pcrs,
        clock: ak::CLOCK,
    };
    check(&evidence, &[0x4e; 32], with_last.then_some(&last));
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    match input.u8() % 3 {
        0 => parsers(input.rest()),
        1 => from_message(input.rest()),
        _ => signed_here(&mut input),
    }
});
