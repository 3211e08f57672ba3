//! The worker that answers devices: enrollment requests and proofs, nonce
//! requests and evidence. One thread owns one store connection and handles
//! one message at a time; decisions that must be atomic are single store
//! transactions, so several workers (in one or several processes) can share
//! a database.
//!
//! Every input is bounded before it is decoded (size per topic), must name
//! the topic's device, and is otherwise logged with `device`, `topic` and
//! `reason` and dropped.

use std::sync::Arc;

use mctc_attest::verifier::{
    AkPublic, CredentialError, EkPolicy, EkPublic, make_credential, public_key_fingerprint,
};
use mctc_shim::limits::{MAX_ENROLL_REQUEST_LEN, MAX_EVIDENCE_LEN, MAX_SMALL_MESSAGE_LEN};
use mctc_shim::messages::{
    DeviceStatus, EnrollChallenge, EnrollProof, EnrollRequest, EnrollStatus, Evidence, Nonce,
    NonceRequest, enroll_proof,
};
use mctc_shim::topics::DeviceTopic;
use mctc_shim::tpm::BootCounters;
use mctc_shim::wire::{Bstr, Bytes, Version};
use mctc_shim::{DeviceId, Message, RingCrypto};
use ring::rand::{SecureRandom, SystemRandom};

use crate::config::Limits;
use crate::issuer::{ArtifactFacts, Issuer, status_name};
use crate::now::Now;
use crate::outbox::{Outgoing, Publisher, pump};
use crate::policy::Policy;
use crate::store::{EnrollCommit, Issue, NonceGrant, PendingEnrollment, Store};
use crate::verdict::{Decision, evaluate};

/// The request topics the authority subscribes to.
pub const INPUT_TOPICS: [DeviceTopic; 4] = [
    DeviceTopic::EnrollRequest,
    DeviceTopic::EnrollProof,
    DeviceTopic::NonceRequest,
    DeviceTopic::Evidence,
];

/// A stable name for a topic kind (logs, rate limiter).
pub const fn topic_name(topic: DeviceTopic) -> &'static str {
    match topic {
        DeviceTopic::EnrollRequest => "enroll/request",
        DeviceTopic::EnrollChallenge => "enroll/challenge",
        DeviceTopic::EnrollProof => "enroll/proof",
        DeviceTopic::EnrollResult => "enroll/result",
        DeviceTopic::NonceRequest => "nonce/req",
        DeviceTopic::Nonce => "nonce",
        DeviceTopic::Evidence => "evidence",
        DeviceTopic::Artifact => "artifact",
        DeviceTopic::Control => "control",
        DeviceTopic::Lineage => "lineage",
        DeviceTopic::LineageAck => "lineage/ack",
        DeviceTopic::Status => "status",
        DeviceTopic::Registry => "registry",
    }
}

/// The largest payload accepted on an input topic, checked before decoding.
pub const fn max_input_len(topic: DeviceTopic) -> usize {
    match topic {
        DeviceTopic::EnrollRequest => MAX_ENROLL_REQUEST_LEN,
        DeviceTopic::Evidence => MAX_EVIDENCE_LEN,
        _ => MAX_SMALL_MESSAGE_LEN,
    }
}

/// What the engine needs besides its store.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Device classes.
    pub policy: Arc<Policy>,
    /// The signer.
    pub issuer: Arc<Issuer>,
    /// EK acceptance (CA bundle, allow-list).
    pub ek_policy: EkPolicy,
    /// Input bounds.
    pub limits: Limits,
    /// How long a credential challenge stays answerable.
    pub challenge_ttl_ms: u64,
}

/// Why an input was dropped.
#[derive(Debug)]
struct Dropped(String);

impl<T: std::fmt::Display> From<T> for Dropped {
    fn from(reason: T) -> Self {
        Dropped(reason.to_string())
    }
}

/// The worker.
#[derive(Debug)]
pub struct Engine<S: Store> {
    store: S,
    settings: EngineSettings,
    clock: Now,
    rng: SystemRandom,
    /// The last message queued outbox rows.
    queued: bool,
}

fn random<const N: usize>(rng: &SystemRandom) -> Result<[u8; N], Dropped> {
    let mut out = [0u8; N];
    rng.fill(&mut out)
        .map_err(|_| Dropped("system random number generator failed".into()))?;
    Ok(out)
}

impl<S: Store> Engine<S> {
    /// A worker on `store`; `clock` is a reading of this boot.
    pub fn new(store: S, settings: EngineSettings, clock: Now) -> Engine<S> {
        Engine {
            store,
            settings,
            clock,
            rng: SystemRandom::new(),
            queued: false,
        }
    }

    /// Handles one message from `device` on `topic`, publishing the answer.
    pub fn handle(
        &mut self,
        topic: DeviceTopic,
        device: &DeviceId,
        payload: &[u8],
        publisher: &dyn Publisher,
    ) {
        let now = self.clock.refresh();
        let result = if payload.len() > max_input_len(topic) {
            Err(Dropped(format!(
                "oversized: {} bytes, at most {}",
                payload.len(),
                max_input_len(topic)
            )))
        } else {
            match topic {
                DeviceTopic::EnrollRequest => self.enroll_request(device, payload, &now),
                DeviceTopic::EnrollProof => self.enroll_proof(device, payload, &now),
                DeviceTopic::NonceRequest => self.nonce_request(device, payload, &now),
                DeviceTopic::Evidence => self.evidence(device, payload, &now),
                _ => Err(Dropped("not an input topic".into())),
            }
        };
        match result {
            Ok(out) => {
                for message in out {
                    publisher.publish(message);
                }
                // Publish what this message queued (a registry record, a
                // containment) now rather than at the housekeeper's next poll.
                if std::mem::take(&mut self.queued)
                    && let Err(e) = pump(&mut self.store, &self.settings.issuer, publisher, &now)
                {
                    tracing::error!(error = %e, "outbox pump failed");
                }
            }
            Err(Dropped(reason)) => {
                tracing::warn!(%device, topic = topic_name(topic), %reason, "input dropped");
            }
        }
    }

    fn enroll_result(
        &self,
        device: &DeviceId,
        request_id: [u8; 16],
        status: EnrollStatus,
        reason: &str,
        now: &Now,
    ) -> Result<Vec<Outgoing>, Dropped> {
        if status == EnrollStatus::Ok {
            tracing::info!(%device, verdict = "enrolled", "enrollment complete");
        } else {
            tracing::warn!(%device, verdict = ?status, %reason, "enrollment refused");
        }
        let payload =
            self.settings
                .issuer
                .enroll_result(device, request_id, status, now.wall_secs())?;
        Ok(vec![Outgoing {
            topic: DeviceTopic::EnrollResult.topic(device).to_string(),
            payload,
            retain: false,
        }])
    }

    fn enroll_request(
        &mut self,
        device: &DeviceId,
        payload: &[u8],
        now: &Now,
    ) -> Result<Vec<Outgoing>, Dropped> {
        let request = EnrollRequest::decode(payload).map_err(|e| format!("undecodable: {e}"))?;
        if request.device != *device {
            return Err(Dropped(
                "device in the payload differs from the topic's".into(),
            ));
        }
        let request_id = request.request_id.0;
        let refuse = |this: &Self, status, reason: &str| {
            this.enroll_result(device, request_id, status, reason, now)
        };
        let record = match self.store.device(device) {
            Ok(record) => record,
            Err(e) => return refuse(self, EnrollStatus::Internal, &e.to_string()),
        };
        let (class, first_use) = match &record {
            Some(r) if r.status == DeviceStatus::Revoked => {
                return refuse(self, EnrollStatus::Revoked, "device is revoked");
            }
            Some(r) => (r.class.clone(), false),
            None => match self.settings.policy.first_use_class() {
                Some(class) => (class.name.clone(), true),
                None => return refuse(self, EnrollStatus::NotAllowed, "device is not registered"),
            },
        };
        let ek = match EkPublic::parse(request.ek_public.0) {
            Ok(ek) => ek,
            Err(e) => return refuse(self, EnrollStatus::BadEk, &format!("EK: {e}")),
        };
        let ek_sha256 = public_key_fingerprint(request.ek_public.0);
        let pinned = record.as_ref().and_then(|r| r.pinned_ek_sha256);
        let enrolled_ek = record
            .as_ref()
            .and_then(|r| r.enrolled.as_ref())
            .map(|e| e.ek_sha256);
        if pinned.is_some_and(|pin| pin != ek_sha256) {
            return refuse(
                self,
                EnrollStatus::BadEk,
                "EK differs from the pinned --ek-sha256",
            );
        }
        if enrolled_ek.is_some_and(|known| known != ek_sha256) {
            return refuse(
                self,
                EnrollStatus::IdentityConflict,
                "device is enrolled with another EK",
            );
        }
        // A pinned or already enrolled EK is trusted by the operator's
        // word; anything else must chain to a vendor CA or be allow-listed.
        if pinned.is_none() && enrolled_ek.is_none() {
            let cert = request.ek_cert.map(|c| c.0);
            let unix = i64::try_from(now.wall_secs()).unwrap_or(i64::MAX);
            if let Err(e) = self.settings.ek_policy.check(&ek, cert, unix) {
                return refuse(self, EnrollStatus::BadEk, &format!("EK: {e}"));
            }
        }
        let ak = match AkPublic::parse(request.ak_public.0) {
            Ok(ak) => ak,
            Err(e) => return refuse(self, EnrollStatus::BadAk, &format!("AK: {e}")),
        };
        if ak.name() != request.ak_name.0 {
            return refuse(
                self,
                EnrollStatus::BadAk,
                "AK name does not match the AK public",
            );
        }
        let secret: [u8; 32] = random(&self.rng)?;
        let proof = enroll_proof(&RingCrypto, &secret, device, ak.name())?;
        let credential = match make_credential(&ek, ak.name(), &secret) {
            Ok(c) => c,
            Err(CredentialError::BadAkName) => {
                return refuse(self, EnrollStatus::BadAk, "AK name is not SHA-256");
            }
            Err(e @ CredentialError::BadEkKey(_)) => {
                return refuse(self, EnrollStatus::BadEk, &e.to_string());
            }
            Err(e) => return refuse(self, EnrollStatus::Internal, &e.to_string()),
        };
        let pending = PendingEnrollment {
            device: device.clone(),
            request_id,
            class,
            first_use,
            proof,
            ek_public: request.ek_public.0.to_vec(),
            ek_sha256,
            ak_public: request.ak_public.0.to_vec(),
            ak_name: request.ak_name.0.to_vec(),
            deadline: now.after(self.settings.challenge_ttl_ms),
        };
        if let Err(e) = self.store.begin_enrollment(&pending) {
            return refuse(self, EnrollStatus::Internal, &e.to_string());
        }
        let challenge = EnrollChallenge {
            v: Version::default(),
            request_id: Bytes(request_id),
            credential_blob: Bstr(&credential.credential_blob),
            encrypted_secret: Bstr(&credential.encrypted_secret),
        };
        let mut buf = [0u8; MAX_SMALL_MESSAGE_LEN];
        let bytes = challenge.encode(&mut buf)?;
        tracing::info!(%device, first_use, "credential challenge sent");
        Ok(vec![Outgoing {
            topic: DeviceTopic::EnrollChallenge.topic(device).to_string(),
            payload: bytes.to_vec(),
            retain: false,
        }])
    }

    fn enroll_proof(
        &mut self,
        device: &DeviceId,
        payload: &[u8],
        now: &Now,
    ) -> Result<Vec<Outgoing>, Dropped> {
        let proof = EnrollProof::decode(payload).map_err(|e| format!("undecodable: {e}"))?;
        let request_id = proof.request_id.0;
        let pending = match self.store.take_enrollment(device, &request_id, now) {
            Ok(Some(p)) => p,
            Ok(None) => {
                return self.enroll_result(
                    device,
                    request_id,
                    EnrollStatus::ProofMismatch,
                    "no open challenge for this attempt (unknown, expired or used)",
                    now,
                );
            }
            Err(e) => {
                return self.enroll_result(
                    device,
                    request_id,
                    EnrollStatus::Internal,
                    &e.to_string(),
                    now,
                );
            }
        };
        if !ring_eq(&pending.proof, &proof.proof.0) {
            return self.enroll_result(
                device,
                request_id,
                EnrollStatus::ProofMismatch,
                "proof does not match the credential's secret",
                now,
            );
        }
        let (status, reason) = match self.store.commit_enrollment(&pending, now) {
            Ok(EnrollCommit::Enrolled) => {
                self.queued = true;
                (EnrollStatus::Ok, "")
            }
            Ok(EnrollCommit::Revoked) => (EnrollStatus::Revoked, "device is revoked"),
            Ok(EnrollCommit::IdentityConflict) => (
                EnrollStatus::IdentityConflict,
                "device is enrolled with another EK",
            ),
            Ok(EnrollCommit::BadEk) => (EnrollStatus::BadEk, "EK differs from the pinned one"),
            Ok(EnrollCommit::NotAllowed) => (EnrollStatus::NotAllowed, "device is not registered"),
            Err(e) => {
                tracing::error!(%device, error = %e, "enrollment not recorded");
                (EnrollStatus::Internal, "database error")
            }
        };
        if status == EnrollStatus::Ok {
            tracing::info!(%device, class = %pending.class, first_use = pending.first_use, "device enrolled");
        }
        self.enroll_result(device, request_id, status, reason, now)
    }

    fn nonce_request(
        &mut self,
        device: &DeviceId,
        payload: &[u8],
        now: &Now,
    ) -> Result<Vec<Outgoing>, Dropped> {
        let request = NonceRequest::decode(payload).map_err(|e| format!("undecodable: {e}"))?;
        if request.device != *device {
            return Err(Dropped(
                "device in the payload differs from the topic's".into(),
            ));
        }
        let nonce: [u8; 32] = random(&self.rng)?;
        let limits = self.settings.limits;
        let grant = self.store.issue_nonce(
            device,
            &nonce,
            request.purpose,
            &now.after(limits.nonce_ttl_ms),
            limits.max_outstanding_nonces,
            now,
        )?;
        match grant {
            NonceGrant::Issued => {}
            NonceGrant::Unknown => return Err(Dropped("device is not registered".into())),
            NonceGrant::NotEnrolled => return Err(Dropped("device has not enrolled".into())),
            NonceGrant::NotActive(status) => {
                return Err(Dropped(format!("device is {}", status_name(status))));
            }
        }
        let message = Nonce {
            v: Version::default(),
            nonce: Bytes(nonce),
            purpose: request.purpose,
            expires_in_ms: u32::try_from(limits.nonce_ttl_ms).unwrap_or(u32::MAX),
        };
        let mut buf = [0u8; MAX_SMALL_MESSAGE_LEN];
        let bytes = message.encode(&mut buf)?;
        tracing::debug!(%device, purpose = ?request.purpose, "nonce issued");
        Ok(vec![Outgoing {
            topic: DeviceTopic::Nonce.topic(device).to_string(),
            payload: bytes.to_vec(),
            retain: false,
        }])
    }

    fn evidence(
        &mut self,
        device: &DeviceId,
        payload: &[u8],
        now: &Now,
    ) -> Result<Vec<Outgoing>, Dropped> {
        let evidence = Evidence::decode(payload).map_err(|e| format!("undecodable: {e}"))?;
        if evidence.device != *device {
            return Err(Dropped(
                "device in the payload differs from the topic's".into(),
            ));
        }
        let policy = Arc::clone(&self.settings.policy);
        // The class fixes the next nonce's lifetime (it must outlive the
        // artifact it rides in); classes never change after registration.
        let Some(record) = self.store.device(device)? else {
            return Err(Dropped("device is not registered".into()));
        };
        let ttl = policy
            .class(&record.class)
            .map_or(0, |c| u64::from(c.artifact_ttl_ms));
        // The longest any of the device's nonces lives (see `evaluate`).
        let tolerance = ttl.saturating_add(self.settings.limits.nonce_ttl_ms);
        let issue = Issue {
            next_nonce: random(&self.rng)?,
            next_nonce_deadline: now.after(ttl.saturating_add(self.settings.limits.nonce_ttl_ms)),
            max_outstanding: self.settings.limits.max_outstanding_nonces,
        };
        let cti: [u8; 16] = random(&self.rng)?;
        let nonce = evidence.nonce.0;
        let attested =
            match self
                .store
                .attest(device, &nonce, &issue, now, &mut |rec, check, learned| {
                    evaluate(
                        rec,
                        check,
                        policy.class(&rec.class),
                        learned,
                        &evidence,
                        tolerance,
                    )
                }) {
                Ok(Some(attested)) => attested,
                Ok(None) => return Err(Dropped("device is not registered".into())),
                Err(e) => {
                    tracing::error!(%device, error = %e, "evidence not decided");
                    return self.refusal(
                        device,
                        nonce,
                        crate::verdict::Refusal::Internal,
                        false,
                        now,
                    );
                }
            };
        let class = attested.class.as_str();
        match &attested.decision {
            Decision::Affirm { facts } => {
                let Some(class_policy) = policy.class(class) else {
                    // evaluate() never affirms without a class policy.
                    return Err(Dropped("class vanished from the policy".into()));
                };
                let artifact = ArtifactFacts {
                    sub: device.clone(),
                    cti,
                    nonce,
                    pcr_mask: facts.mask,
                    pcr_digest: facts.digest,
                    boot: BootCounters {
                        reset: facts.clock.reset_count,
                        restart: facts.clock.restart_count,
                    },
                    next_nonce: issue.next_nonce,
                    hb_seq: attested.fleet.hb_seq,
                    epoch: attested.fleet.epoch,
                    now_ms: now.wall_ms,
                };
                let payload = self.settings.issuer.artifact(&artifact, class_policy)?;
                tracing::info!(
                    %device, class, verdict = "affirmed", cti = %hex::encode(cti),
                    ttl_ms = class_policy.artifact_ttl_ms, "artifact issued"
                );
                Ok(vec![Outgoing {
                    topic: DeviceTopic::Artifact.topic(device).to_string(),
                    payload,
                    retain: false,
                }])
            }
            Decision::Refuse {
                refusal,
                detail,
                contain,
                ..
            } => {
                let contained = attested.status == DeviceStatus::Contained;
                tracing::warn!(%device, class, verdict = "refused", reason = %refusal, %detail, contained, "evidence refused");
                if contain.is_some() && contained {
                    self.queued = true;
                    tracing::warn!(%device, class, reason = contain.as_deref().unwrap_or(""), "device contained automatically");
                }
                self.refusal(device, nonce, *refusal, contained, now)
            }
        }
    }

    fn refusal(
        &self,
        device: &DeviceId,
        nonce: [u8; 32],
        refusal: crate::verdict::Refusal,
        contained: bool,
        now: &Now,
    ) -> Result<Vec<Outgoing>, Dropped> {
        let payload = self.settings.issuer.refusal(
            device,
            nonce,
            refusal.code(),
            contained,
            now.wall_secs(),
        )?;
        Ok(vec![Outgoing {
            topic: DeviceTopic::Artifact.topic(device).to_string(),
            payload,
            retain: false,
        }])
    }
}

/// Constant-time equality of two proofs: the time taken must not tell an
/// attacker how many leading bytes of a guess were right.
fn ring_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proof_comparison_is_exact() {
        assert!(ring_eq(&[7; 32], &[7; 32]));
        let mut other = [7; 32];
        other[31] = 6;
        assert!(!ring_eq(&[7; 32], &other));
    }

    #[test]
    fn input_limits_are_the_shims() {
        assert_eq!(max_input_len(DeviceTopic::EnrollRequest), 6400);
        assert_eq!(max_input_len(DeviceTopic::Evidence), 2560);
        assert_eq!(max_input_len(DeviceTopic::NonceRequest), 1024);
        assert_eq!(max_input_len(DeviceTopic::EnrollProof), 1024);
    }
}
