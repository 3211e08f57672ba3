//! The decision on one piece of evidence, sans IO: given the device's
//! record, whether its nonce was valid, the class policy and the learned
//! baseline, decide to affirm (issue an artifact) or refuse, and whether to
//! contain the device. The store runs [`evaluate`] inside the transaction
//! that consumed the nonce, so the status it sees is the status the
//! decision is recorded against.
//!
//! Order of checks (each refusal names the first that failed):
//!
//! 1. revoked → `Revoked`; contained → `Contained`;
//! 2. no enrolled AK → `NotEnrolled`;
//! 3. nonce unknown, expired, used or another device's → `StaleNonce`;
//! 4. class missing from the policy → `PolicyMismatch` (fail closed);
//! 5. the quote (mctc-attest): not signed by the enrolled AK →
//!    `NotEnrolled`; malformed, wrong nonce, wrong PCR selection, values not
//!    matching the quoted digest → `BadEvidence`; TPM counters behind the
//!    last verified quote, or its clock behind by more than the rollback
//!    tolerance → `BootAnomaly`, and contain;
//! 6. the baseline: a referenced PCR differs → `PolicyMismatch`, and
//!    contain (drift); a PCR without reference → `NoBaseline`
//!    (`PolicyMismatch` on the wire, not contained). The baseline is the
//!    policy file's digests, the class's learned ones, and, for a device in
//!    the share of an active staged rollout, the staged values
//!    ([`ClassBaseline::for_device`]); drift under a stage says so in the
//!    containment reason.

use mctc_attest::verifier::{AkPublic, QuoteError, QuoteExpectation, verify_quote};
use mctc_attest::{ClockInfo, PcrSelection, PcrValues};
use mctc_shim::limits::PCR_PREFIX_LEN;
use mctc_shim::messages::{DeviceStatus, DigestPrefix, Evidence, PcrFinding, PcrProblem};
use mctc_shim::wire::Bytes;

use crate::model::{ClassBaseline, DeviceRecord};
use crate::policy::ClassPolicy;

pub use crate::model::{Decision, NonceCheck, Refusal, VerifiedFacts, indices};

/// Evaluates `evidence` (already decoded, its device equal to the topic's)
/// for `device`. `class` is the device's class from the policy, if present;
/// `baseline` what its class accepts beyond the file.
///
/// `rollback_tolerance_ms`: how far the TPM clock may be behind the last
/// verified quote of the same boot. A device may hold two nonces at once (a
/// renewal and a fresh-operation attestation) and two instances may decide
/// in parallel, so quotes can be decided in another order than made; the
/// nonce already proves each is fresh, so a step back of at most one nonce
/// lifetime is reordering. A larger one is a restored TPM state.
pub fn evaluate(
    device: &DeviceRecord,
    nonce: NonceCheck,
    class: Option<&ClassPolicy>,
    baseline: &ClassBaseline,
    evidence: &Evidence<'_>,
    rollback_tolerance_ms: u64,
) -> Decision {
    match device.status {
        DeviceStatus::Revoked => return Decision::refuse(Refusal::Revoked, "device is revoked"),
        DeviceStatus::Contained => {
            return Decision::refuse(Refusal::Contained, "device is contained");
        }
        DeviceStatus::Active => {}
    }
    let Some(enrolled) = &device.enrolled else {
        return Decision::refuse(Refusal::NotEnrolled, "device has not enrolled");
    };
    if nonce == NonceCheck::Invalid {
        return Decision::refuse(
            Refusal::StaleNonce,
            "nonce unknown, expired or already used",
        );
    }
    let Some(class) = class else {
        return Decision::refuse(
            Refusal::PolicyMismatch,
            format!("class {} is not in the policy", device.class),
        );
    };
    let ak = match AkPublic::parse(&enrolled.ak_public) {
        Ok(ak) => ak,
        Err(e) => {
            return Decision::refuse(Refusal::Internal, format!("stored AK does not parse: {e}"));
        }
    };
    let Ok(expected) = PcrSelection::sha256(&class.pcrs) else {
        return Decision::refuse(Refusal::Internal, "class PCR selection is invalid");
    };
    let reported: Vec<u8> = indices(evidence.pcr_mask).collect();
    let pcrs = PcrSelection::sha256(&reported)
        .and_then(|sel| {
            PcrValues::new(
                sel,
                evidence.pcr_values.iter().map(|v| v.0.to_vec()).collect(),
            )
        })
        .map_err(|e| e.to_string());
    let pcrs = match pcrs {
        Ok(pcrs) => pcrs,
        Err(e) => return Decision::refuse(Refusal::BadEvidence, format!("PCR values: {e}")),
    };
    let quote = mctc_attest::Evidence {
        attest: evidence.attest.0.to_vec(),
        signature: evidence.signature.0.to_vec(),
        pcrs,
        // Ignored by the verifier, which reads the signed copy in `attest`.
        clock: ClockInfo {
            clock: 0,
            reset_count: 0,
            restart_count: 0,
            safe: false,
        },
    };
    let tolerated = device.last_clock.map(|last| ClockInfo {
        clock: last.clock.saturating_sub(rollback_tolerance_ms),
        ..last
    });
    let expectation = QuoteExpectation {
        qualifying_data: &evidence.nonce.0,
        selection: &expected,
        last_accepted: tolerated.as_ref(),
    };
    let verified = match verify_quote(&ak, &quote, &expectation) {
        Ok(verified) => verified,
        Err(e) => {
            let refusal = quote_refusal(&e);
            let contain = (refusal == Refusal::BootAnomaly).then(|| "tpm rollback".to_owned());
            let pcrs = if matches!(e, QuoteError::SelectionMismatch { .. }) {
                selection_findings(class, evidence)
            } else {
                Vec::new()
            };
            let detail = if pcrs.is_empty() {
                e.to_string()
            } else {
                format!(
                    "{e}: the device quotes PCR {}, class {} asks for PCR {}",
                    pcr_list(&reported),
                    class.name,
                    pcr_list(&class.pcrs)
                )
            };
            return Decision::Refuse {
                refusal,
                detail,
                facts: None,
                contain,
                pcrs,
            };
        }
    };
    let mut values = Vec::with_capacity(verified.pcrs().values().len());
    for value in verified.pcrs().values() {
        match <[u8; 32]>::try_from(value.as_slice()) {
            Ok(v) => values.push(v),
            Err(_) => return Decision::refuse(Refusal::BadEvidence, "PCR value is not 32 bytes"),
        }
    }
    let quoted = *verified.clock();
    let high_water = match device.last_clock {
        Some(last) if last.boot() == quoted.boot() && last.clock > quoted.clock => last,
        _ => quoted,
    };
    let facts = VerifiedFacts {
        clock: quoted,
        high_water,
        mask: class.mask(),
        values,
        digest: *verified.pcr_digest(),
    };
    let id = device.id.as_str();
    let learned = baseline.for_device(id);
    let pairs = facts.pairs();
    let judgement = class.judge(&pairs, &learned);
    if !judgement.drift.is_empty() {
        let list = pcr_list(&judgement.drift);
        let pcrs = judgement
            .drift
            .iter()
            .map(|&pcr| {
                let got = pairs.iter().find(|(p, _)| *p == pcr).map(|(_, v)| v);
                PcrFinding {
                    pcr,
                    problem: if got.is_some() {
                        PcrProblem::Differs
                    } else {
                        PcrProblem::NotQuoted
                    },
                    expected: class.allowed(pcr, &learned).next().map(prefix),
                    got: got.map(prefix),
                }
            })
            .collect();
        let (detail, reason) = match baseline.staged(id) {
            None => (
                format!("PCR drift from the class baseline: PCR {list}"),
                format!("pcr drift: PCR {list}"),
            ),
            Some(stage) => (
                format!(
                    "PCR drift from the class baseline and staged rollout {}: PCR {list}",
                    stage.id
                ),
                format!("pcr drift (stage {}): PCR {list}", stage.id),
            ),
        };
        return Decision::Refuse {
            refusal: Refusal::PolicyMismatch,
            detail,
            facts: Some(facts),
            contain: Some(truncate(reason)),
            pcrs,
        };
    }
    if !judgement.missing.is_empty() {
        let pcrs = judgement
            .missing
            .iter()
            .map(|&pcr| PcrFinding {
                pcr,
                problem: PcrProblem::NoReference,
                expected: None,
                got: pairs
                    .iter()
                    .find(|(p, _)| *p == pcr)
                    .map(|(_, v)| prefix(v)),
            })
            .collect();
        return Decision::Refuse {
            pcrs,
            refusal: Refusal::NoBaseline,
            detail: format!(
                "no baseline for PCR {} of class {}",
                pcr_list(&judgement.missing),
                class.name
            ),
            facts: Some(facts),
            contain: None,
        };
    }
    Decision::Affirm { facts }
}

fn quote_refusal(e: &QuoteError) -> Refusal {
    match e {
        QuoteError::BadSignature | QuoteError::SignatureScheme => Refusal::NotEnrolled,
        QuoteError::ResetCountWentBack { .. }
        | QuoteError::RestartCountWentBack { .. }
        | QuoteError::ClockWentBack { .. } => Refusal::BootAnomaly,
        QuoteError::QualifyingDataTooLong(_)
        | QuoteError::Sha1Bank
        | QuoteError::Malformed(_)
        | QuoteError::BadMagic(_)
        | QuoteError::NotAQuote(_)
        | QuoteError::MalformedSignature(_)
        | QuoteError::QualifyingDataMismatch
        | QuoteError::SelectionMismatch { .. }
        | QuoteError::PcrDigestMismatch => Refusal::BadEvidence,
    }
}

/// The PCRs where the evidence's selection and the class's differ.
fn selection_findings(class: &ClassPolicy, evidence: &Evidence<'_>) -> Vec<PcrFinding> {
    let class_mask = class.mask();
    let mut findings = Vec::new();
    let quoted = indices(evidence.pcr_mask).zip(evidence.pcr_values.iter());
    for (pcr, value) in quoted {
        if class_mask & (1 << pcr) == 0 {
            findings.push(PcrFinding {
                pcr,
                problem: PcrProblem::NotInPolicy,
                expected: None,
                got: Some(prefix(&value.0)),
            });
        }
    }
    for &pcr in &class.pcrs {
        if evidence.pcr_mask & (1 << pcr) == 0 {
            findings.push(PcrFinding {
                pcr,
                problem: PcrProblem::NotQuoted,
                expected: None,
                got: None,
            });
        }
    }
    findings.sort_by_key(|f| f.pcr);
    findings
}

/// The leading bytes of a digest that a refusal shows.
fn prefix(digest: &[u8; 32]) -> DigestPrefix {
    // A digest is 32 bytes, longer than the prefix: the fallback never runs.
    Bytes(*digest.first_chunk().unwrap_or(&[0; PCR_PREFIX_LEN]))
}

fn pcr_list(pcrs: &[u8]) -> String {
    pcrs.iter().map(u8::to_string).collect::<Vec<_>>().join(",")
}

/// Control reasons are at most 64 bytes (shim limit); ASCII here, so a
/// byte cut is a character cut.
fn truncate(mut reason: String) -> String {
    reason.truncate(mctc_shim::limits::MAX_REASON_LEN);
    reason
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Enrolled;
    use mctc_shim::DeviceId;
    use mctc_shim::messages::{NoncePurpose, RefusalCode};
    use mctc_shim::wire::{Bstr, Bytes, List, Version};

    fn device(status: DeviceStatus, enrolled: bool) -> DeviceRecord {
        DeviceRecord {
            status,
            enrolled: enrolled.then(|| Enrolled {
                ek_public: vec![],
                ek_sha256: [0; 32],
                ak_public: vec![1, 2, 3],
                ak_name: vec![],
                at_ms: 0,
            }),
            ..DeviceRecord::fresh("d1", "c")
        }
    }

    fn evidence() -> Evidence<'static> {
        Evidence {
            v: Version::default(),
            device: DeviceId::new("d1").unwrap(),
            nonce: Bytes([1; 32]),
            attest: Bstr(&[0; 8]),
            signature: Bstr(&[0; 8]),
            pcr_alg: 0x000b,
            pcr_mask: 1,
            pcr_values: List::from_slice(&[Bytes([0; 32])]).unwrap(),
        }
    }

    fn class() -> ClassPolicy {
        ClassPolicy {
            name: "c".into(),
            pcrs: vec![0],
            artifact_ttl_ms: 1000,
            heartbeat_ms: 3000,
            allow_first_use: false,
            reference: Default::default(),
            scope: vec![],
        }
    }

    fn refusal_of(d: Decision) -> Refusal {
        match d {
            Decision::Refuse { refusal, .. } => refusal,
            Decision::Affirm { .. } => panic!("affirmed"),
        }
    }

    #[test]
    fn standing_is_checked_before_anything_else() {
        let valid = NonceCheck::Valid(NoncePurpose::Renew);
        let e = evidence();
        let none = ClassBaseline::default();
        for (status, expected) in [
            (DeviceStatus::Revoked, Refusal::Revoked),
            (DeviceStatus::Contained, Refusal::Contained),
        ] {
            let d = evaluate(
                &device(status, true),
                NonceCheck::Invalid,
                None,
                &none,
                &e,
                0,
            );
            assert_eq!(refusal_of(d), expected);
        }
        let d = evaluate(
            &device(DeviceStatus::Active, false),
            valid,
            None,
            &none,
            &e,
            0,
        );
        assert_eq!(refusal_of(d), Refusal::NotEnrolled);
        let d = evaluate(
            &device(DeviceStatus::Active, true),
            NonceCheck::Invalid,
            Some(&class()),
            &none,
            &e,
            0,
        );
        assert_eq!(refusal_of(d), Refusal::StaleNonce);
        let d = evaluate(
            &device(DeviceStatus::Active, true),
            valid,
            None,
            &none,
            &e,
            0,
        );
        assert_eq!(refusal_of(d), Refusal::PolicyMismatch);
        // A stored AK that no longer parses is the authority's fault.
        let d = evaluate(
            &device(DeviceStatus::Active, true),
            valid,
            Some(&class()),
            &none,
            &e,
            0,
        );
        assert_eq!(refusal_of(d), Refusal::Internal);
    }

    #[test]
    fn names_round_trip_and_no_baseline_is_policy_mismatch_on_the_wire() {
        for r in Refusal::ALL {
            assert_eq!(Refusal::from_name(r.name()), Some(r));
        }
        assert_eq!(Refusal::NoBaseline.code(), RefusalCode::PolicyMismatch);
        assert_eq!(Refusal::from_name("nope"), None);
        assert_eq!(truncate("x".repeat(80)).len(), 64);
        assert_eq!(indices(0b1000_0101).collect::<Vec<_>>(), vec![0, 2, 7]);
    }

    #[test]
    fn a_selection_mismatch_names_each_pcr_either_side_lacks() {
        // The device quotes PCRs 0 and 14; the class asks for 0 and 7.
        let mut e = evidence();
        e.pcr_mask = 1 | 1 << 14;
        e.pcr_values = List::from_slice(&[Bytes([0; 32]), Bytes([0xee; 32])]).unwrap();
        let mut c = class();
        c.pcrs = vec![0, 7];
        let findings = selection_findings(&c, &e);
        assert_eq!(
            findings,
            vec![
                PcrFinding {
                    pcr: 7,
                    problem: PcrProblem::NotQuoted,
                    expected: None,
                    got: None
                },
                PcrFinding {
                    pcr: 14,
                    problem: PcrProblem::NotInPolicy,
                    expected: None,
                    got: Some(Bytes([0xee; 8]))
                },
            ]
        );
    }

    #[test]
    fn quote_errors_map_to_refusals() {
        assert_eq!(
            quote_refusal(&QuoteError::BadSignature),
            Refusal::NotEnrolled
        );
        assert_eq!(
            quote_refusal(&QuoteError::ClockWentBack { last: 2, now: 1 }),
            Refusal::BootAnomaly
        );
        assert_eq!(
            quote_refusal(&QuoteError::PcrDigestMismatch),
            Refusal::BadEvidence
        );
    }
}
