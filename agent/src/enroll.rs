//! `mctc-agent enroll`: the device's TPM identity enrolled with the
//! authority over `mctc/v1/enroll/{id}/…`, and `identity`.
//!
//! 1. EK and AK are created or loaded (the AK is kept as a TPM-wrapped blob
//!    and reused; `--reprovision` replaces it).
//! 2. `EnrollRequest` (EK public and certificate, AK public and name) on
//!    `enroll/{id}/request`, again every [`RESEND_EVERY`] until a challenge
//!    arrives.
//! 3. The challenge is activated by the TPM (only the TPM holding that EK
//!    and this AK can), and the proof goes back on `enroll/{id}/proof`.
//! 4. The signed `EnrollResult` on `enroll/{id}/result` says ok or why not.
//!    The authority's signed `RegistryRecord` for the device, if it is also
//!    published on the result topic (told apart by its COSE content type),
//!    is kept for lineage bundles.
//!
//! Running it again is harmless: the authority answers ok for the same EK
//! and AK.

use std::time::Duration;

use mctc_attest::device::{Identity, Tpm};
use mctc_service::link::{Link, LinkEvent, LinkOptions, QoS};
use mctc_shim::crypto::RingCrypto;
use mctc_shim::limits::{MAX_ENROLL_REQUEST_LEN, MAX_SMALL_MESSAGE_LEN};
use mctc_shim::messages::{
    EnrollChallenge, EnrollProof, EnrollRequest, EnrollResult, EnrollStatus, RegistryRecord,
    enroll_proof,
};
use mctc_shim::topics::DeviceTopic;
use mctc_shim::wire::{Bstr, Bytes, Message, Version};
use mctc_shim::{AuthorityKey, DeviceId, Signed};
use ring::rand::SecureRandom;
use serde::Serialize;

use crate::clock::Clock;
use crate::config::{self, Validated};
use crate::error::AgentError;
use crate::state::{Enrollment, StateDir};

/// The request is sent again this often until a challenge arrives.
pub const RESEND_EVERY: Duration = Duration::from_secs(5);
/// After an ok result, how long to wait for the registry record.
const REGISTRY_GRACE: Duration = Duration::from_secs(3);

/// What `identity` prints.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct IdentityReport {
    pub device: String,
    pub ek_sha256: String,
    pub ak_sha256: String,
    pub ak_name: String,
    pub ek_certificate: bool,
    pub tpm_manufacturer: String,
    pub tpm_simulator: bool,
    pub enrolled: bool,
    pub revoked: bool,
}

/// What `enroll` reports.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct EnrollReport {
    pub device: String,
    pub ak_sha256: String,
    pub ek_sha256: String,
    pub registry_record: bool,
}

fn enroll_status(status: EnrollStatus) -> &'static str {
    match status {
        EnrollStatus::Ok => "ok",
        EnrollStatus::BadEk => "the EK (public key or certificate) is not acceptable",
        EnrollStatus::BadAk => "the AK is not acceptable",
        EnrollStatus::ProofMismatch => "the credential proof does not match",
        EnrollStatus::IdentityConflict => "this device id is enrolled with another EK",
        EnrollStatus::NotAllowed => "the fleet does not admit this device id",
        EnrollStatus::Revoked => "this device id is revoked",
        EnrollStatus::Internal => "the authority failed; try again",
    }
}

/// `identity`: the TPM identity, without network.
pub async fn identity(config: &Validated) -> Result<IdentityReport, AgentError> {
    let state = StateDir::open(config.state_dir())?;
    let tpm = Tpm::open(config.tpm_config()).await?;
    let id = tpm.identity().await;
    let info = tpm.info().clone();
    tpm.shutdown().await;
    let id = id?;
    Ok(IdentityReport {
        device: config.device.as_str().to_owned(),
        ek_sha256: hex::encode(id.ek_fingerprint()),
        ak_sha256: hex::encode(id.ak_fingerprint()),
        ak_name: hex::encode(&id.ak_name),
        ek_certificate: id.ek_cert.is_some(),
        tpm_manufacturer: info.manufacturer,
        tpm_simulator: info.simulator,
        enrolled: state
            .enrollment()?
            .is_some_and(|e| e.ak_name == hex::encode(&id.ak_name)),
        revoked: state.is_revoked()?,
    })
}

/// `enroll`: see the module docs. `clock` stamps the enrollment record (for
/// people to read, like the status: the system's wall time, trusted or
/// not).
pub async fn enroll(
    config: &Validated,
    clock: &dyn Clock,
    reprovision: bool,
    timeout: Duration,
) -> Result<EnrollReport, AgentError> {
    let state = StateDir::open(config.state_dir())?;
    if state.is_revoked()? && !reprovision {
        return Err(AgentError::Enroll(
            "this device is revoked; after the fleet manager re-admits it, run `enroll --reprovision`"
                .into(),
        ));
    }
    let keys = config::authority_keys(config)?;
    let tpm = Tpm::open(config.tpm_config()).await?;
    let id = if reprovision {
        tpm.reprovision().await
    } else {
        tpm.identity().await
    };
    let id = match id {
        Ok(id) => id,
        Err(e) => {
            tpm.shutdown().await;
            return Err(e.into());
        }
    };
    let result = exchange(config, &keys, &tpm, &id, &state, timeout).await;
    tpm.shutdown().await;
    let registry_record = result?;
    let enrollment = Enrollment {
        device: config.device.as_str().to_owned(),
        ak_name: hex::encode(&id.ak_name),
        ek_sha256: hex::encode(id.ek_fingerprint()),
        ak_sha256: hex::encode(id.ak_fingerprint()),
        wall_ms: clock.wall_display_ms(),
    };
    state.set_enrollment(&enrollment)?;
    if reprovision {
        state.clear_revoked()?;
    }
    Ok(EnrollReport {
        device: enrollment.device,
        ak_sha256: enrollment.ak_sha256,
        ek_sha256: enrollment.ek_sha256,
        registry_record,
    })
}

/// Accepts a signed registry record for this device and AK; returns
/// whether it was stored.
pub fn accept_registry_record(
    payload: &[u8],
    keys: &[AuthorityKey],
    device: &DeviceId,
    state: &StateDir,
) -> bool {
    let Ok(record) = RegistryRecord::open(payload, keys, &RingCrypto) else {
        return false;
    };
    if record.sub != *device {
        return false;
    }
    let newer = match state.registry_record() {
        Ok(Some(old)) => RegistryRecord::open(&old, keys, &RingCrypto)
            .map_or(true, |old| record.version > old.version),
        _ => true,
    };
    if !newer {
        return true;
    }
    match state.set_registry_record(payload) {
        Ok(()) => {
            tracing::info!(version = record.version, "registry record stored");
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not store the registry record");
            false
        }
    }
}

async fn exchange(
    config: &Validated,
    keys: &[AuthorityKey],
    tpm: &Tpm,
    id: &Identity,
    state: &StateDir,
    timeout: Duration,
) -> Result<bool, AgentError> {
    let device = &config.device;
    let challenge_topic = DeviceTopic::EnrollChallenge
        .topic(device)
        .as_str()
        .to_owned();
    let result_topic = DeviceTopic::EnrollResult.topic(device).as_str().to_owned();
    let request_topic = DeviceTopic::EnrollRequest.topic(device).as_str().to_owned();
    let proof_topic = DeviceTopic::EnrollProof.topic(device).as_str().to_owned();
    let registry_topic = DeviceTopic::Registry.topic(device).as_str().to_owned();
    let options = LinkOptions::new(format!("{device}-enroll"))
        .subscribe(challenge_topic.clone(), QoS::AtLeastOnce)
        .subscribe(result_topic.clone(), QoS::AtLeastOnce)
        .subscribe(registry_topic.clone(), QoS::AtLeastOnce);
    let mut link = Link::start(&config.raw.broker, options)?;

    let mut request_id = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut request_id)
        .map_err(|_| AgentError::Startup("no system randomness".into()))?;
    let request = EnrollRequest {
        v: Version::CURRENT,
        request_id: Bytes(request_id),
        device: device.clone(),
        ek_public: Bstr(&id.ek_public),
        ek_cert: id.ek_cert.as_deref().map(Bstr),
        ak_public: Bstr(&id.ak_public),
        ak_name: Bstr(&id.ak_name),
    };
    let mut buf = vec![0u8; MAX_ENROLL_REQUEST_LEN];
    let request_bytes = request
        .encode(&mut buf)
        .map_err(AgentError::wire("enrollment request"))?
        .to_vec();

    let deadline = tokio::time::Instant::now() + timeout;
    let mut resend_at: Option<tokio::time::Instant> = None;
    let mut challenged = false;
    let mut enrolled_at: Option<tokio::time::Instant> = None;
    let mut registry = false;
    let outcome = loop {
        let now = tokio::time::Instant::now();
        if let Some(at) = enrolled_at
            && (registry || now >= at + REGISTRY_GRACE)
        {
            break Ok(registry);
        }
        if now >= deadline {
            break Err(AgentError::Enroll(format!(
                "no answer from the authority within {} s",
                timeout.as_secs()
            )));
        }
        let mut wake = deadline;
        if let Some(at) = resend_at {
            wake = wake.min(at);
        }
        if let Some(at) = enrolled_at {
            wake = wake.min(at + REGISTRY_GRACE);
        }
        let event = tokio::select! {
            event = link.recv() => event,
            () = tokio::time::sleep_until(wake) => {
                if resend_at.is_some_and(|at| tokio::time::Instant::now() >= at) && !challenged {
                    tracing::info!("no challenge yet; sending the enrollment request again");
                    let _ = link.client().try_publish(&request_topic, QoS::AtLeastOnce, false, request_bytes.clone());
                    resend_at = Some(tokio::time::Instant::now() + RESEND_EVERY);
                }
                continue;
            }
        };
        match event {
            None => break Err(AgentError::Enroll("broker link stopped".into())),
            Some(LinkEvent::Connected { .. }) => {
                if enrolled_at.is_none() {
                    challenged = false;
                    if let Err(e) = link.client().try_publish(
                        &request_topic,
                        QoS::AtLeastOnce,
                        false,
                        request_bytes.clone(),
                    ) {
                        tracing::warn!(error = %e, "enrollment request not queued");
                    }
                    resend_at = Some(tokio::time::Instant::now() + RESEND_EVERY);
                }
            }
            Some(LinkEvent::Subscribed { .. }) => {}
            Some(LinkEvent::Disconnected { reason }) => {
                tracing::warn!(%reason, "broker connection lost during enrollment");
            }
            Some(LinkEvent::SubscribeRefused { topic }) => {
                // The broker has not granted this device (yet): the
                // authority grants a device when it is added. The link asks
                // again with backoff; the enrollment's own deadline bounds
                // the wait.
                tracing::warn!(
                    %topic,
                    "the broker refused a subscription: is the device added at the authority, and is the certificate CN the device id? asking again"
                );
            }
            Some(LinkEvent::Message { topic, payload, .. }) => {
                if topic == challenge_topic && enrolled_at.is_none() {
                    let Ok(challenge) = EnrollChallenge::decode(&payload) else {
                        tracing::warn!("undecodable enrollment challenge dropped");
                        continue;
                    };
                    if challenge.request_id.0 != request_id {
                        continue;
                    }
                    challenged = true;
                    let secret = tpm
                        .activate_credential(
                            challenge.credential_blob.0.to_vec(),
                            challenge.encrypted_secret.0.to_vec(),
                        )
                        .await?;
                    let proof = enroll_proof(&RingCrypto, &secret, device, &id.ak_name)
                        .map_err(AgentError::wire("enrollment proof"))?;
                    let message = EnrollProof {
                        v: Version::CURRENT,
                        request_id: Bytes(request_id),
                        proof: Bytes(proof),
                    };
                    let mut buf = [0u8; MAX_SMALL_MESSAGE_LEN];
                    let bytes = message
                        .encode(&mut buf)
                        .map_err(AgentError::wire("enrollment proof"))?;
                    if let Err(e) = link.client().try_publish(
                        &proof_topic,
                        QoS::AtLeastOnce,
                        false,
                        bytes.to_vec(),
                    ) {
                        tracing::warn!(error = %e, "enrollment proof not queued");
                    }
                } else if topic == registry_topic {
                    if accept_registry_record(&payload, keys, device, state) {
                        registry = true;
                    }
                } else if topic == result_topic {
                    if accept_registry_record(&payload, keys, device, state) {
                        registry = true;
                        continue;
                    }
                    let Ok(result) = EnrollResult::open(&payload, keys, &RingCrypto) else {
                        tracing::warn!("enrollment result that does not verify dropped");
                        continue;
                    };
                    if result.request_id.0 != request_id || result.sub != *device {
                        continue;
                    }
                    if result.status != EnrollStatus::Ok {
                        break Err(AgentError::Enroll(format!(
                            "refused: {}",
                            enroll_status(result.status)
                        )));
                    }
                    tracing::info!(device = %device, "enrolled");
                    enrolled_at = Some(tokio::time::Instant::now());
                }
            }
        }
    };
    link.shutdown(Duration::from_secs(2)).await;
    outcome
}
