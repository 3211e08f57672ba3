//! Property tests: the decoders of untrusted bytes never panic, whatever
//! they are fed, and the verifier never accepts what it cannot check.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failure stops the test loudly"
)]

use mctc_attest::verifier::{
    AkPublic, Attest, EkCaBundle, EkPublic, QuoteExpectation, Signature, make_credential,
    verify_quote,
};
use mctc_attest::{ClockInfo, Evidence, PcrSelection, PcrValues};
use proptest::prelude::*;

/// A well-formed TPMS_ATTEST quote, to mutate.
fn sample_attest() -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&0xff54_4347u32.to_be_bytes());
    b.extend_from_slice(&0x8018u16.to_be_bytes());
    b.extend_from_slice(&[0, 34, 0, 0x0b]);
    b.extend_from_slice(&[0x11; 32]);
    b.extend_from_slice(&[0, 32]);
    b.extend_from_slice(&[0x22; 32]);
    b.extend_from_slice(&123_456u64.to_be_bytes());
    b.extend_from_slice(&3u32.to_be_bytes());
    b.extend_from_slice(&1u32.to_be_bytes());
    b.push(1);
    b.extend_from_slice(&0x2019_1023_0016_3636u64.to_be_bytes());
    b.extend_from_slice(&1u32.to_be_bytes());
    b.extend_from_slice(&0x000bu16.to_be_bytes());
    b.extend_from_slice(&[3, 0xff, 0, 1]);
    b.extend_from_slice(&[0, 32]);
    b.extend_from_slice(&[0x33; 32]);
    b
}

/// A well-formed ECC P-256 AK TPM2B_PUBLIC (x, y need not be on the curve).
fn sample_public() -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&[0x00, 0x23, 0x00, 0x0b]);
    t.extend_from_slice(&0x0005_0472u32.to_be_bytes());
    t.extend_from_slice(&[
        0, 0, 0x00, 0x10, 0x00, 0x18, 0x00, 0x0b, 0x00, 0x03, 0x00, 0x10,
    ]);
    t.extend_from_slice(&[0, 32]);
    t.extend_from_slice(&[0x44; 32]);
    t.extend_from_slice(&[0, 32]);
    t.extend_from_slice(&[0x55; 32]);
    let mut out = (t.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(&t);
    out
}

fn mutate(mut bytes: Vec<u8>, edits: &[(usize, u8)], cut: Option<usize>) -> Vec<u8> {
    for &(at, value) in edits {
        if !bytes.is_empty() {
            let i = at % bytes.len();
            bytes[i] = value;
        }
    }
    if let Some(cut) = cut {
        bytes.truncate(cut % (bytes.len() + 1));
    }
    bytes
}

fn clock() -> ClockInfo {
    ClockInfo {
        clock: 0,
        reset_count: 0,
        restart_count: 0,
        safe: true,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn tpms_attest_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = Attest::parse(&bytes);
    }

    #[test]
    fn mutated_quotes_never_panic_the_parser(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        cut in proptest::option::of(any::<usize>()),
    ) {
        let bytes = mutate(sample_attest(), &edits, cut);
        if let Ok(a) = Attest::parse(&bytes) {
            // Whatever decodes re-describes the bytes it came from.
            prop_assert!(a.extra_data.len() <= 64);
            prop_assert!(a.qualified_signer.len() <= 66);
        }
    }

    #[test]
    fn public_key_parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
        let _ = AkPublic::parse(&bytes);
        let _ = EkPublic::parse(&bytes);
    }

    #[test]
    fn mutated_public_keys_never_panic(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        cut in proptest::option::of(any::<usize>()),
    ) {
        let bytes = mutate(sample_public(), &edits, cut);
        let _ = AkPublic::parse(&bytes);
        if let Ok(ek) = EkPublic::parse(&bytes) {
            let _ = make_credential(&ek, &[0; 34], b"secret");
        }
    }

    #[test]
    fn signature_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = Signature::parse(&bytes);
    }

    #[test]
    fn random_evidence_is_never_accepted(
        attest_edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
        signature in proptest::collection::vec(any::<u8>(), 0..200),
        nonce in proptest::collection::vec(any::<u8>(), 0..70),
    ) {
        let ak = AkPublic::parse(&sample_public()).unwrap();
        let selection = PcrSelection::sha256(&[0, 1, 2, 3, 4, 5, 6, 7, 16]).unwrap();
        let evidence = Evidence {
            attest: mutate(sample_attest(), &attest_edits, None),
            signature,
            pcrs: PcrValues::new(selection, vec![vec![0; 32]; 9]).unwrap(),
            clock: clock(),
        };
        let verdict = verify_quote(&ak, &evidence, &QuoteExpectation {
            qualifying_data: &nonce,
            selection: &selection,
            last_accepted: Some(&clock()),
        });
        prop_assert!(verdict.is_err());
    }

    #[test]
    fn pem_and_certificate_inputs_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..800)) {
        let _ = EkCaBundle::from_pem(&bytes);
        let mut pem = b"-----BEGIN CERTIFICATE-----\n".to_vec();
        pem.extend_from_slice(&bytes);
        pem.extend_from_slice(b"\n-----END CERTIFICATE-----\n");
        let _ = EkCaBundle::from_pem(&pem);
    }
}
