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
use mctc_shim::tpm::{BootCounters, PcrSelection};
use mctc_shim::wire::{Bstr, Bytes, Version};
use mctc_shim::{DeviceId, Message, RingCrypto};
use ring::rand::{SecureRandom, SystemRandom};

use crate::config::Limits;
use crate::issuer::{ArtifactFacts, Issuer, status_name};
use crate::metrics::AuthorityMetrics;
use crate::now::{Clock, Now, SystemClock};
use crate::outbox::{Outgoing, Publisher, pump};
use crate::policy::Policy;
use crate::store::{EnrollCommit, Issue, NonceGrant, PendingEnrollment, Store, StoreError};
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

/// Why an input got no answer. Two owners, two paths: what the sender did
/// wrong is its business (logged at info as "input dropped", counted), what
/// failed here is ours (logged at error, counted apart, and the device is
/// never told its input was bad).
#[derive(Debug)]
enum Dropped {
    /// Malformed, mismatched or not allowed: the sender's fault.
    Sender(String),
    /// The database, the signer or the random source failed: our fault.
    Ours(Failure),
}

impl Dropped {
    fn sender(reason: impl Into<String>) -> Dropped {
        Dropped::Sender(reason.into())
    }
}

/// A failure on the authority's side while handling an input.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The store failed (busy, corrupt, full, IO, …).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Signing or encoding an answer failed (a buffer too small, the signer).
    #[error("signing or encoding an answer: {0}")]
    Answer(#[from] mctc_shim::Error),
    /// The system random number generator failed.
    #[error("system random number generator failed")]
    Random,
    /// A decision needs a class the loaded policy no longer has.
    #[error("class {0} is not in the policy")]
    Policy(String),
}

impl Failure {
    /// Whether trying again later may succeed (a busy database).
    pub fn is_transient(&self) -> bool {
        matches!(self, Failure::Store(e) if e.is_transient())
    }
}

impl<E: Into<Failure>> From<E> for Dropped {
    fn from(e: E) -> Self {
        Dropped::Ours(e.into())
    }
}

/// What the engine has seen go wrong, by owner.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineCounters {
    /// Inputs dropped for the sender's fault.
    pub sender_faults: u64,
    /// Inputs not handled (or answered `internal`) for a transient failure
    /// of ours (a busy database).
    pub transient_failures: u64,
    /// Inputs not handled (or answered `internal`) for a failure of ours
    /// that will not go away by itself (corrupt, full, IO, signer).
    pub failures: u64,
}

/// The worker. `C` is where it reads the time (every deadline it sets or
/// checks): the host's clocks in the daemon, a controlled one in tests.
#[derive(Debug)]
pub struct Engine<S: Store, C: Clock = SystemClock> {
    store: S,
    settings: EngineSettings,
    clock: C,
    rng: SystemRandom,
    /// The last message queued outbox rows.
    queued: bool,
    counters: EngineCounters,
    metrics: Arc<AuthorityMetrics>,
}

fn random<const N: usize>(rng: &SystemRandom) -> Result<[u8; N], Dropped> {
    let mut out = [0u8; N];
    rng.fill(&mut out).map_err(|_| Failure::Random)?;
    Ok(out)
}

impl<S: Store, C: Clock> Engine<S, C> {
    /// A worker on `store`, reading the time from `clock`.
    pub fn new(store: S, settings: EngineSettings, clock: C) -> Engine<S, C> {
        Engine {
            store,
            settings,
            clock,
            rng: SystemRandom::new(),
            queued: false,
            counters: EngineCounters::default(),
            metrics: Arc::default(),
        }
    }

    /// Counts into `metrics` (the daemon's `/metrics`) as well.
    pub fn with_metrics(mut self, metrics: Arc<AuthorityMetrics>) -> Engine<S, C> {
        self.metrics = metrics;
        self
    }

    /// What went wrong so far, by owner.
    pub fn counters(&self) -> EngineCounters {
        self.counters
    }

    /// Counts and logs a failure of ours: error level unless it is
    /// transient (a busy database: the device asks again).
    fn our_failure(&mut self, device: &DeviceId, topic: DeviceTopic, failure: &Failure) {
        let topic = topic_name(topic);
        if failure.is_transient() {
            self.counters.transient_failures += 1;
            self.metrics.transient_failures.inc();
            tracing::warn!(%device, topic, error = %failure, "input not handled: database busy, the device will ask again");
        } else {
            self.counters.failures += 1;
            self.metrics.failures.inc();
            tracing::error!(%device, topic, error = %failure, "input not handled: the authority failed");
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
        let now = self.clock.now();
        let result = if payload.len() > max_input_len(topic) {
            Err(Dropped::sender(format!(
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
                _ => Err(Dropped::sender("not an input topic")),
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
            Err(Dropped::Sender(reason)) => {
                self.counters.sender_faults += 1;
                self.metrics.sender_faults.inc();
                tracing::info!(%device, topic = topic_name(topic), %reason, "input dropped");
            }
            Err(Dropped::Ours(failure)) => self.our_failure(device, topic, &failure),
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
        self.metrics.enrollments.inc(status.name());
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
        let request = EnrollRequest::decode(payload)
            .map_err(|e| Dropped::sender(format!("undecodable: {e}")))?;
        if request.device != *device {
            return Err(Dropped::sender(
                "device in the payload differs from the topic's",
            ));
        }
        let request_id = request.request_id.0;
        let refuse = |this: &Self, status, reason: &str| {
            this.enroll_result(device, request_id, status, reason, now)
        };
        let record = match self.store.device(device) {
            Ok(record) => record,
            Err(e) => {
                self.our_failure(device, DeviceTopic::EnrollRequest, &e.into());
                return refuse(self, EnrollStatus::Internal, "database error");
            }
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
            Err(e) => {
                tracing::error!(%device, error = %e, "credential not made");
                self.counters.failures += 1;
                self.metrics.failures.inc();
                return refuse(self, EnrollStatus::Internal, "credential not made");
            }
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
            self.our_failure(device, DeviceTopic::EnrollRequest, &e.into());
            return refuse(self, EnrollStatus::Internal, "database error");
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
        let proof = EnrollProof::decode(payload)
            .map_err(|e| Dropped::sender(format!("undecodable: {e}")))?;
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
                self.our_failure(device, DeviceTopic::EnrollProof, &e.into());
                return self.enroll_result(
                    device,
                    request_id,
                    EnrollStatus::Internal,
                    "database error",
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
                self.our_failure(device, DeviceTopic::EnrollProof, &e.into());
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
        let request = NonceRequest::decode(payload)
            .map_err(|e| Dropped::sender(format!("undecodable: {e}")))?;
        if request.device != *device {
            return Err(Dropped::sender(
                "device in the payload differs from the topic's",
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
        let class = match grant {
            NonceGrant::Issued { class } => class,
            NonceGrant::Unknown => return Err(Dropped::sender("device is not registered")),
            NonceGrant::NotEnrolled => return Err(Dropped::sender("device has not enrolled")),
            NonceGrant::NotActive(status) => {
                return Err(Dropped::sender(format!(
                    "device is {}",
                    status_name(status)
                )));
            }
        };
        // The device quotes what its class's policy judges, whatever its own
        // configuration lists; `evaluate` refuses any other selection. A
        // class the policy lost (or an invalid selection) gets no nonce: the
        // evidence could only be refused.
        let selection = self
            .settings
            .policy
            .class(&class)
            .map(|c| PcrSelection::sha256(c.mask()))
            .filter(|s| s.validate().is_ok())
            .ok_or(Dropped::Ours(Failure::Policy(class)))?;
        let message = Nonce {
            v: Version::default(),
            nonce: Bytes(nonce),
            purpose: request.purpose,
            expires_in_ms: u32::try_from(limits.nonce_ttl_ms).unwrap_or(u32::MAX),
            pcr_alg: selection.alg,
            pcr_mask: selection.mask,
        };
        let mut buf = [0u8; MAX_SMALL_MESSAGE_LEN];
        let bytes = message.encode(&mut buf)?;
        tracing::debug!(%device, purpose = ?request.purpose, pcr_mask = selection.mask, "nonce issued");
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
        let evidence =
            Evidence::decode(payload).map_err(|e| Dropped::sender(format!("undecodable: {e}")))?;
        if evidence.device != *device {
            return Err(Dropped::sender(
                "device in the payload differs from the topic's",
            ));
        }
        let policy = Arc::clone(&self.settings.policy);
        // The class fixes the next nonce's lifetime (it must outlive the
        // artifact it rides in); classes never change after registration.
        let Some(record) = self.store.device(device)? else {
            return Err(Dropped::sender("device is not registered"));
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
                .attest(device, &nonce, &issue, now, &mut |rec, check, baseline| {
                    evaluate(
                        rec,
                        check,
                        policy.class(&rec.class),
                        baseline,
                        &evidence,
                        tolerance,
                    )
                }) {
                Ok(Some(attested)) => attested,
                Ok(None) => return Err(Dropped::sender("device is not registered")),
                Err(e) => {
                    // Ours, not the device's: it hears `internal` (never a
                    // verdict on its evidence) and the transaction, nonce
                    // included, did not happen.
                    self.our_failure(device, DeviceTopic::Evidence, &e.into());
                    return self.refusal(
                        device,
                        nonce,
                        crate::model::Refusal::Internal,
                        false,
                        now,
                        &[],
                    );
                }
            };
        let class = attested.class.as_str();
        match &attested.decision {
            Decision::Affirm { facts } => {
                let Some(class_policy) = policy.class(class) else {
                    // evaluate() never affirms without a class policy.
                    return Err(Failure::Policy(class.to_owned()).into());
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
                self.metrics.artifacts_issued.inc();
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
                pcrs,
                ..
            } => {
                let contained = attested.status == DeviceStatus::Contained;
                self.metrics.refusals.inc(refusal.name());
                tracing::warn!(%device, class, verdict = "refused", reason = %refusal, %detail, contained, "evidence refused");
                if contain.is_some() && contained {
                    self.queued = true;
                    self.metrics.containments.inc();
                    tracing::warn!(%device, class, reason = contain.as_deref().unwrap_or(""), "device contained automatically");
                }
                if let Some(stage) = &attested.stage_stopped {
                    tracing::warn!(
                        class,
                        stage = stage.id,
                        failures = stage.failures,
                        stop_after = stage.stop_after,
                        "staged rollout stopped: its share is judged by the class's own values again"
                    );
                }
                self.refusal(device, nonce, *refusal, contained, now, pcrs)
            }
        }
    }

    fn refusal(
        &self,
        device: &DeviceId,
        nonce: [u8; 32],
        refusal: crate::model::Refusal,
        contained: bool,
        now: &Now,
        pcrs: &[mctc_shim::messages::PcrFinding],
    ) -> Result<Vec<Outgoing>, Dropped> {
        let payload = self.settings.issuer.refusal(
            device,
            nonce,
            refusal.code(),
            contained,
            now.wall_secs(),
            pcrs,
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
    use std::sync::Mutex;

    use mctc_shim::cose::Signed;
    use mctc_shim::messages::{NoncePurpose, Refusal as SignedRefusal, RefusalCode};
    use mctc_shim::wire::List;
    use mctc_shim::{AuthorityKey, messages};

    use crate::issuer::KeySigner;
    use crate::model::{ClassBaseline, Forget, LearnMode, Stage};
    use crate::model::{Decision, NonceCheck};
    use crate::now::Deadline;
    use crate::store::sqlite::SqliteStore;
    use crate::store::{
        Attested, DeviceRecord, EnrollCommit as Commit, Fault, FleetState, HeartbeatState,
        NewDevice, NewStage, OutboxItem, Promotion, StatusChange, StatusOutcome,
    };

    /// A real store whose `attest` and `issue_nonce` fail with `fault` when armed.
    #[derive(Debug)]
    struct Failing {
        inner: SqliteStore,
        fault: Option<Fault>,
    }

    impl Failing {
        fn fail(&self) -> Result<(), StoreError> {
            match self.fault {
                Some(fault) => Err(StoreError::Backend {
                    fault,
                    source: format!("injected {fault}").into(),
                }),
                None => Ok(()),
            }
        }
    }

    impl Store for Failing {
        fn add_device(&mut self, d: &NewDevice, now: &Now) -> Result<bool, StoreError> {
            self.inner.add_device(d, now)
        }
        fn device(&mut self, id: &DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
            self.inner.device(id)
        }
        fn devices(&mut self) -> Result<Vec<DeviceRecord>, StoreError> {
            self.inner.devices()
        }
        fn change_status(
            &mut self,
            id: &DeviceId,
            change: StatusChange,
            reason: &str,
            now: &Now,
        ) -> Result<StatusOutcome, StoreError> {
            self.inner.change_status(id, change, reason, now)
        }
        fn begin_enrollment(&mut self, p: &PendingEnrollment) -> Result<(), StoreError> {
            self.inner.begin_enrollment(p)
        }
        fn take_enrollment(
            &mut self,
            d: &DeviceId,
            r: &[u8; 16],
            now: &Now,
        ) -> Result<Option<PendingEnrollment>, StoreError> {
            self.inner.take_enrollment(d, r, now)
        }
        fn commit_enrollment(
            &mut self,
            p: &PendingEnrollment,
            now: &Now,
        ) -> Result<Commit, StoreError> {
            self.inner.commit_enrollment(p, now)
        }
        fn issue_nonce(
            &mut self,
            d: &DeviceId,
            n: &[u8; 32],
            p: NoncePurpose,
            dl: &Deadline,
            max: u32,
            now: &Now,
        ) -> Result<NonceGrant, StoreError> {
            self.fail()?;
            self.inner.issue_nonce(d, n, p, dl, max, now)
        }
        fn attest(
            &mut self,
            d: &DeviceId,
            n: &[u8; 32],
            i: &Issue,
            now: &Now,
            decide: &mut dyn FnMut(&DeviceRecord, NonceCheck, &ClassBaseline) -> Decision,
        ) -> Result<Option<Attested>, StoreError> {
            self.fail()?;
            self.inner.attest(d, n, i, now, decide)
        }
        fn heartbeat(
            &mut self,
            h: &str,
            l: u64,
            m: usize,
            now: &Now,
        ) -> Result<Option<HeartbeatState>, StoreError> {
            self.inner.heartbeat(h, l, m, now)
        }
        fn release_lease(&mut self, h: &str) -> Result<(), StoreError> {
            self.inner.release_lease(h)
        }
        fn fleet(&mut self) -> Result<FleetState, StoreError> {
            self.inner.fleet()
        }
        fn outbox_depth(&mut self) -> Result<u64, StoreError> {
            self.inner.outbox_depth()
        }
        fn claim_outbox(
            &mut self,
            l: usize,
            c: u64,
            now: &Now,
        ) -> Result<Vec<OutboxItem>, StoreError> {
            self.inner.claim_outbox(l, c, now)
        }
        fn ack_outbox(&mut self, ids: &[i64]) -> Result<(), StoreError> {
            self.inner.ack_outbox(ids)
        }
        fn requeue_latest_controls(&mut self, now: &Now) -> Result<usize, StoreError> {
            self.inner.requeue_latest_controls(now)
        }
        fn baseline(&mut self, class: &str) -> Result<ClassBaseline, StoreError> {
            self.inner.baseline(class)
        }
        fn learn(
            &mut self,
            seen: &ClassBaseline,
            class: &str,
            values: &[(u8, [u8; 32])],
            from: &DeviceId,
            mode: LearnMode,
            now: &Now,
        ) -> Result<bool, StoreError> {
            self.inner.learn(seen, class, values, from, mode, now)
        }
        fn forget(
            &mut self,
            seen: &ClassBaseline,
            class: &str,
            forget: &Forget,
        ) -> Result<Option<usize>, StoreError> {
            self.inner.forget(seen, class, forget)
        }
        fn start_stage(
            &mut self,
            seen: &ClassBaseline,
            s: &NewStage,
            now: &Now,
        ) -> Result<Option<Stage>, StoreError> {
            self.inner.start_stage(seen, s, now)
        }
        fn promote_stage(
            &mut self,
            seen: &ClassBaseline,
            c: &str,
            p: Promotion,
            now: &Now,
        ) -> Result<Option<Stage>, StoreError> {
            self.inner.promote_stage(seen, c, p, now)
        }
        fn roll_back_stage(
            &mut self,
            seen: &ClassBaseline,
            c: &str,
            r: &str,
            now: &Now,
        ) -> Result<Option<Stage>, StoreError> {
            self.inner.roll_back_stage(seen, c, r, now)
        }
        fn sweep(&mut self, now: &Now) -> Result<usize, StoreError> {
            self.inner.sweep(now)
        }
    }

    /// Keeps what the engine publishes.
    #[derive(Debug, Default)]
    struct Recorder(Mutex<Vec<Outgoing>>);

    impl Publisher for Recorder {
        fn publish(&self, message: Outgoing) -> bool {
            self.0.lock().unwrap().push(message);
            true
        }
        fn connected(&self) -> bool {
            true
        }
    }

    impl Recorder {
        fn take(&self) -> Vec<Outgoing> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    /// A clock the test moves by hand (shared with the engine).
    #[derive(Debug, Clone)]
    struct Manual(Arc<Mutex<Now>>);

    impl Clock for Manual {
        fn now(&self) -> Now {
            self.0.lock().unwrap().clone()
        }
    }

    impl Manual {
        fn advance(&self, ms: u64) {
            let mut now = self.0.lock().unwrap();
            now.boot_ms += ms;
            now.wall_ms += ms;
        }
    }

    struct Rig {
        engine: Engine<Failing, Manual>,
        clock: Manual,
        keys: Vec<AuthorityKey>,
        _dir: tempfile::TempDir,
    }

    fn rig() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let now = Now {
            wall_ms: 1_800_000_000_000,
            boot_ms: 1_000_000,
            boot_id: "test-boot".into(),
        };
        let clock = Manual(Arc::new(Mutex::new(now.clone())));
        let mut inner = SqliteStore::open(&dir.path().join("a.db")).unwrap();
        inner
            .add_device(
                &NewDevice {
                    id: id(),
                    class: "locker".into(),
                    pinned_ek_sha256: None,
                },
                &now,
            )
            .unwrap();
        let configs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        let policy = Policy::load(&configs.join("policy.toml")).unwrap();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let signer = KeySigner::from_pair(pair).unwrap();
        let keys = vec![AuthorityKey::new(
            &RingCrypto,
            mctc_shim::Signer::public_key(&signer),
        )];
        let settings = EngineSettings {
            policy: Arc::new(policy),
            issuer: Arc::new(Issuer::new(signer, "test-authority".into())),
            ek_policy: EkPolicy::new(None, []),
            limits: Limits::default(),
            challenge_ttl_ms: 10_000,
        };
        let store = Failing { inner, fault: None };
        Rig {
            engine: Engine::new(store, settings, clock.clone()),
            clock,
            keys,
            _dir: dir,
        }
    }

    fn id() -> DeviceId {
        DeviceId::new("locker-1").unwrap()
    }

    fn evidence_bytes(device: &DeviceId) -> Vec<u8> {
        evidence_with(device, [9; 32])
    }

    fn evidence_with(device: &DeviceId, nonce: [u8; 32]) -> Vec<u8> {
        let evidence = messages::Evidence {
            v: Version::default(),
            device: device.clone(),
            nonce: Bytes(nonce),
            attest: Bstr(&[0; 8]),
            signature: Bstr(&[0; 8]),
            pcr_alg: 0x000b,
            pcr_mask: 1,
            pcr_values: List::from_slice(&[Bytes([0; 32])]).unwrap(),
        };
        let mut buf = [0u8; MAX_EVIDENCE_LEN];
        evidence.encode(&mut buf).unwrap().to_vec()
    }

    fn nonce_request(device: &DeviceId) -> Vec<u8> {
        let request = NonceRequest {
            v: Version::default(),
            device: device.clone(),
            purpose: NoncePurpose::Renew,
        };
        let mut buf = [0u8; MAX_SMALL_MESSAGE_LEN];
        request.encode(&mut buf).unwrap().to_vec()
    }

    #[test]
    fn the_senders_fault_is_counted_as_such_and_gets_no_answer() {
        let mut rig = rig();
        let out = Recorder::default();
        let stranger = DeviceId::new("stranger").unwrap();
        rig.engine
            .handle(DeviceTopic::Evidence, &id(), &[0xff, 0x00], &out);
        rig.engine.handle(
            DeviceTopic::NonceRequest,
            &stranger,
            &nonce_request(&stranger),
            &out,
        );
        rig.engine.handle(
            DeviceTopic::Evidence,
            &id(),
            &evidence_bytes(&stranger),
            &out,
        );
        assert!(out.take().is_empty());
        assert_eq!(
            rig.engine.counters(),
            EngineCounters {
                sender_faults: 3,
                transient_failures: 0,
                failures: 0,
            }
        );
    }

    #[test]
    fn a_database_failure_is_ours_and_never_a_verdict_on_the_evidence() {
        let mut rig = rig();
        let out = Recorder::default();
        rig.engine.store.fault = Some(Fault::Corrupt);
        rig.engine
            .handle(DeviceTopic::Evidence, &id(), &evidence_bytes(&id()), &out);
        // The device hears `internal`, not a verdict on its evidence.
        let answers = out.take();
        assert_eq!(answers.len(), 1);
        assert_eq!(
            answers[0].topic,
            DeviceTopic::Artifact.topic(&id()).to_string()
        );
        let refusal = SignedRefusal::open(&answers[0].payload, &rig.keys, &RingCrypto).unwrap();
        assert_eq!(refusal.reason, RefusalCode::Internal);
        assert!(!refusal.contained);
        assert_eq!(
            rig.engine.counters(),
            EngineCounters {
                sender_faults: 0,
                transient_failures: 0,
                failures: 1,
            }
        );

        // A busy database is transient: the nonce request gets no answer
        // and is counted apart; nothing is blamed on the device.
        rig.engine.store.fault = Some(Fault::Busy);
        rig.engine.handle(
            DeviceTopic::NonceRequest,
            &id(),
            &nonce_request(&id()),
            &out,
        );
        assert!(out.take().is_empty());
        assert_eq!(
            rig.engine.counters(),
            EngineCounters {
                sender_faults: 0,
                transient_failures: 1,
                failures: 1,
            }
        );
    }

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

    /// Enrolls `id()` with placeholder keys straight in the store: the
    /// decision then stops at the stored AK (`internal`), after the nonce
    /// check, which is what the clock tests look at.
    fn enroll(rig: &mut Rig) {
        let now = rig.clock.now();
        let pending = PendingEnrollment {
            device: id(),
            request_id: [1; 16],
            class: "locker".into(),
            first_use: false,
            proof: [0; 32],
            ek_public: vec![1],
            ek_sha256: [2; 32],
            ak_public: vec![3],
            ak_name: vec![4],
            deadline: now.after(1000),
        };
        assert_eq!(
            rig.engine.store.commit_enrollment(&pending, &now).unwrap(),
            Commit::Enrolled
        );
    }

    fn issued_nonce(rig: &mut Rig, out: &Recorder) -> [u8; 32] {
        rig.engine
            .handle(DeviceTopic::NonceRequest, &id(), &nonce_request(&id()), out);
        let answers = out.take();
        assert_eq!(answers.len(), 1, "one nonce");
        messages::Nonce::decode(&answers[0].payload)
            .unwrap()
            .nonce
            .0
    }

    fn refusal_code(rig: &Rig, out: &Recorder) -> RefusalCode {
        let answers = out.take();
        assert_eq!(answers.len(), 1, "one answer");
        SignedRefusal::open(&answers[0].payload, &rig.keys, &RingCrypto)
            .unwrap()
            .reason
    }

    /// The nonce names the PCRs of the device's class (from the policy),
    /// not anything the device chose; a class the policy no longer has
    /// gets no nonce at all (the evidence could only be refused), counted
    /// as our failure, not the device's.
    #[test]
    fn the_nonce_carries_the_class_pcr_selection() {
        let mut rig = rig();
        enroll(&mut rig);
        let out = Recorder::default();
        rig.engine.handle(
            DeviceTopic::NonceRequest,
            &id(),
            &nonce_request(&id()),
            &out,
        );
        let answers = out.take();
        assert_eq!(answers.len(), 1, "one nonce");
        let nonce = messages::Nonce::decode(&answers[0].payload).unwrap();
        let locker = rig.engine.settings.policy.class("locker").unwrap();
        assert_eq!(nonce.pcr_alg, mctc_shim::tpm::TPM_ALG_SHA256);
        assert_eq!(nonce.pcr_mask, locker.mask());
        assert_eq!(
            nonce.pcr_selection().indices().collect::<Vec<_>>(),
            locker.pcrs
        );

        let mut policy = (*rig.engine.settings.policy).clone();
        policy.classes.remove("locker");
        rig.engine.settings.policy = Arc::new(policy);
        rig.engine.handle(
            DeviceTopic::NonceRequest,
            &id(),
            &nonce_request(&id()),
            &out,
        );
        assert!(out.take().is_empty(), "no nonce without the class");
        assert_eq!(rig.engine.counters().failures, 1);
        assert_eq!(rig.engine.counters().sender_faults, 0);
    }

    /// Deadlines follow the engine's clock, not the host's: a nonce answered
    /// 1 ms before its ttl is checked against the quote; 1 ms after, it is
    /// stale. No test waits for the ttl to pass.
    #[test]
    fn nonce_expiry_is_decided_on_the_engines_clock() {
        let mut rig = rig();
        enroll(&mut rig);
        let out = Recorder::default();
        let ttl = Limits::default().nonce_ttl_ms;

        let nonce = issued_nonce(&mut rig, &out);
        rig.clock.advance(ttl - 1);
        rig.engine.handle(
            DeviceTopic::Evidence,
            &id(),
            &evidence_with(&id(), nonce),
            &out,
        );
        // Past the nonce check: it fails later, at the placeholder AK.
        assert_eq!(refusal_code(&rig, &out), RefusalCode::Internal);

        let nonce = issued_nonce(&mut rig, &out);
        rig.clock.advance(ttl);
        rig.engine.handle(
            DeviceTopic::Evidence,
            &id(),
            &evidence_with(&id(), nonce),
            &out,
        );
        assert_eq!(refusal_code(&rig, &out), RefusalCode::StaleNonce);
    }
}
