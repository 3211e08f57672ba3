//! What a fleet manager does about a device that is not trading: one line
//! from its standing, enrollment and last refusal (`devices show`). Pure:
//! reads the record, decides nothing.

use mctc_shim::messages::{DeviceStatus, PcrProblem};

use crate::model::{DeviceRecord, Refusal, Verdict};

/// The hint for `d`, or `None` when its last evidence was affirmed.
pub fn hint(d: &DeviceRecord) -> Option<String> {
    let id = d.id.as_str();
    match d.status {
        DeviceStatus::Revoked => {
            return Some(
                "revoked for good: only re-provisioning (a new identity) brings it back".to_owned(),
            );
        }
        DeviceStatus::Contained => {
            let why = d.reason.as_deref().unwrap_or("no reason recorded");
            let first = d
                .refusal_detail
                .as_ref()
                .and_then(|r| r.pcrs.first())
                .filter(|p| p.problem == PcrProblem::Differs);
            return Some(match first {
                Some(p) => format!(
                    "contained ({why}): PCR {} differs from class {}'s baseline; inspect the device, then \
                     `mctc-authority policy learn {id}` if the change is legitimate and \
                     `mctc-authority devices restore {id} --reason …`",
                    p.pcr, d.class
                ),
                None => format!(
                    "contained ({why}): inspect the device, then `mctc-authority devices restore {id} --reason …`"
                ),
            });
        }
        DeviceStatus::Active => {}
    }
    if d.enrolled.is_none() {
        return Some(format!(
            "not enrolled: run `mctc-agent enroll` on {id} (the authority must be running)"
        ));
    }
    if d.verdict != Some(Verdict::Refused) {
        return None;
    }
    let pcrs = d.refusal_detail.as_ref().map_or(&[][..], |r| &r.pcrs[..]);
    let list = |problem: PcrProblem| {
        pcrs.iter()
            .filter(|p| p.problem == problem)
            .map(|p| p.pcr.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    Some(match d.refusal? {
        Refusal::NoBaseline => format!(
            "baseline for class {} lacks PCR {}: `mctc-authority policy learn {id}` (after checking the device)",
            d.class,
            list(PcrProblem::NoReference)
        ),
        Refusal::PolicyMismatch if pcrs.is_empty() => format!(
            "class {} is not in the policy file: add it, or register the device in another class",
            d.class
        ),
        Refusal::PolicyMismatch => format!(
            "PCR {} differs from class {}'s baseline: inspect the device; `mctc-authority policy learn {id}` if legitimate",
            list(PcrProblem::Differs),
            d.class
        ),
        Refusal::BadEvidence if !pcrs.is_empty() => format!(
            "the device quoted other PCRs than class {} asks for (missing: {}; extra: {}): every nonce names \
             the class's selection, so this is a renewal over an older artifact's selection after the class's \
             `pcrs` changed (the device asks again with a new nonce), or an agent older than that rule",
            d.class,
            or_none(list(PcrProblem::NotQuoted)),
            or_none(list(PcrProblem::NotInPolicy)),
        ),
        Refusal::BadEvidence => {
            "the quote does not verify: check the agent's version and TPM; see the authority's log".to_owned()
        }
        Refusal::StaleNonce => "transient: the device's nonce had expired; it asks again".to_owned(),
        Refusal::NotEnrolled => format!(
            "the quote is not by the enrolled key: run `mctc-agent enroll` on {id} again"
        ),
        Refusal::BootAnomaly => {
            "the TPM's counters or clock went back (restored TPM state?): investigate before restoring".to_owned()
        }
        Refusal::Internal => "the authority failed: see its log".to_owned(),
        Refusal::Revoked | Refusal::Contained => format!("see the status: `mctc-authority devices show {id}`"),
    })
}

fn or_none(list: String) -> String {
    if list.is_empty() {
        "none".to_owned()
    } else {
        list
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Enrolled, RefusalDetail};
    use mctc_shim::api::PcrStatus;

    fn device() -> DeviceRecord {
        DeviceRecord {
            enrolled: Some(Enrolled {
                ek_public: vec![],
                ek_sha256: [0; 32],
                ak_public: vec![],
                ak_name: vec![],
                at_ms: 0,
            }),
            ..DeviceRecord::fresh("locker-7", "locker")
        }
    }

    fn refused(refusal: Refusal, pcr: u8, problem: PcrProblem) -> DeviceRecord {
        DeviceRecord {
            verdict: Some(Verdict::Refused),
            refusal: Some(refusal),
            refusal_detail: Some(RefusalDetail {
                words: "x".into(),
                pcrs: vec![PcrStatus {
                    expected: None,
                    got: None,
                    pcr,
                    problem,
                }],
                since_ms: 1,
            }),
            ..device()
        }
    }

    #[test]
    fn each_standing_and_refusal_gets_its_hint() {
        assert_eq!(hint(&device()), None);
        let never = DeviceRecord {
            enrolled: None,
            ..device()
        };
        assert!(hint(&never).unwrap().contains("mctc-agent enroll"));
        let missing = refused(Refusal::NoBaseline, 14, PcrProblem::NoReference);
        assert_eq!(
            hint(&missing).unwrap(),
            "baseline for class locker lacks PCR 14: `mctc-authority policy learn locker-7` (after checking the device)"
        );
        let selection = refused(Refusal::BadEvidence, 14, PcrProblem::NotInPolicy);
        let text = hint(&selection).unwrap();
        assert!(
            text.contains("extra: 14") && text.contains("every nonce names"),
            "{text}"
        );
        let drifted = DeviceRecord {
            status: DeviceStatus::Contained,
            reason: Some("pcr drift: PCR 14".into()),
            ..refused(Refusal::PolicyMismatch, 14, PcrProblem::Differs)
        };
        let text = hint(&drifted).unwrap();
        assert!(
            text.contains("PCR 14 differs from class locker")
                && text.contains("devices restore locker-7"),
            "{text}"
        );
        let revoked = DeviceRecord {
            status: DeviceStatus::Revoked,
            ..device()
        };
        assert!(hint(&revoked).unwrap().contains("re-provisioning"));
    }
}
