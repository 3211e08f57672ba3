//! Messages a device must refuse, built with the shim's own encoders: an
//! artifact exactly as the authority would issue it, except for the one
//! property a scenario changes (signing key, expiry, subject, boot, nonce),
//! and heartbeats from the authority's key or a rogue one.
//!
//! The [`Impostor`] stands where the authority stands on the broker (its
//! certificate identity, so the ACL lets it answer a device) while the real
//! authority is down: it hands out nonces and answers every piece of
//! evidence with an artifact of the current [`Variant`]. Its
//! [`Variant::Genuine`] answer must be accepted, which proves that what the
//! other variants change is the only reason they are refused.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use mctc_shim::messages::{Evidence, Heartbeat, Nonce, NonceRequest};
use mctc_shim::tpm::BootCounters;
use mctc_shim::wire::{Bytes, List, Message, Version};
use mctc_shim::{RingCrypto, RingSigner, Signed};
use mctc_tests::Broker;
use mctc_tests::fleet::MqttClient;
pub use mctc_tests::forge::{ArtifactSpec, artifact, authority_signer, random, unix_now};

/// A key the fleet does not trust, from the run's seeded generator (a
/// replayed run forges with the same key).
pub fn rogue_signer(rng: &mut fastrand::Rng) -> Result<RingSigner, String> {
    let mut seed = [0u8; 32];
    rng.fill(&mut seed);
    RingSigner::from_seed(&seed).map_err(|e| format!("rogue key: {e}"))
}

/// Signs a heartbeat revoking nobody.
pub fn heartbeat(seq: u64, epoch: u64, hb_ms: u32, signer: &RingSigner) -> Result<Vec<u8>, String> {
    let heartbeat = Heartbeat {
        v: Version::CURRENT,
        seq,
        epoch,
        since_epoch: epoch,
        iat: unix_now(),
        hb_ms,
        revoked: List::new(),
    };
    let mut buf = [0u8; 2048];
    heartbeat
        .sign(signer, &RingCrypto, &mut buf)
        .map(<[u8]>::to_vec)
        .map_err(|e| format!("sign heartbeat: {e}"))
}

/// How the impostor answers evidence.
#[derive(Debug, Clone)]
pub enum Variant {
    /// Exactly what the authority would issue: must be accepted.
    Genuine,
    /// Signed by a key the device does not trust.
    RogueKey,
    /// `exp` an hour ago (refused by a device that trusts its wall clock).
    Expired,
    /// For another device.
    OtherDevice(String),
    /// For TPM boot counters other than the device's current ones.
    OtherBoot(BootCounters),
    /// A captured artifact, replayed byte for byte.
    Replay(Vec<u8>),
}

/// What the impostor did.
#[derive(Debug, Default)]
pub struct ImpostorCounts {
    pub nonces: AtomicU64,
    pub answers: AtomicU64,
    pub errors: Mutex<Vec<String>>,
}

/// The fake authority (see the module docs).
#[derive(Debug)]
pub struct Impostor {
    variant: Arc<Mutex<Variant>>,
    running: Arc<AtomicBool>,
    pub counts: Arc<ImpostorCounts>,
    thread: Option<JoinHandle<()>>,
}

/// What the impostor needs to answer like the authority.
#[derive(Debug, Clone)]
pub struct ImpostorSetup {
    pub device: String,
    pub ttl_ms: u32,
    pub hb_ms: u32,
    /// The heartbeat seq and revocation epoch to claim (the fleet's
    /// current ones, so the real heartbeats still count afterwards).
    pub hb_seq: u64,
    pub epoch: u64,
    /// The device's current TPM boot counters.
    pub boot: BootCounters,
}

impl Impostor {
    pub fn start(
        broker: &Broker,
        setup: ImpostorSetup,
        signer: RingSigner,
        rogue: RingSigner,
    ) -> Impostor {
        let device = setup.device.clone();
        let nonce_req = format!("mctc/v1/dev/{device}/nonce/req");
        let evidence = format!("mctc/v1/dev/{device}/evidence");
        // A share group of its own: with the authority's certificate (the
        // only one the broker lets hear requests) it gets a copy of each,
        // beside the real authority's group.
        let client = MqttClient::connect(
            broker,
            "mctc-authority",
            &format!("chaos-impostor-{device}"),
            &[
                &format!("$share/chaos-impostor/{nonce_req}"),
                &format!("$share/chaos-impostor/{evidence}"),
            ],
        );
        let variant = Arc::new(Mutex::new(Variant::Genuine));
        let running = Arc::new(AtomicBool::new(true));
        let counts = Arc::new(ImpostorCounts::default());
        let thread = {
            let (variant, running, counts) = (
                Arc::clone(&variant),
                Arc::clone(&running),
                Arc::clone(&counts),
            );
            std::thread::spawn(move || {
                let mut done = 0;
                while running.load(Ordering::Acquire) {
                    let received = client.received();
                    for (topic, payload, _) in received.iter().skip(done) {
                        let current = variant
                            .lock()
                            .map(|v| v.clone())
                            .unwrap_or(Variant::Genuine);
                        let result = if *topic == nonce_req {
                            answer_nonce_request(&client, &setup, payload)
                                .map(|()| counts.nonces.fetch_add(1, Ordering::AcqRel))
                        } else if *topic == evidence {
                            answer_evidence(&client, &setup, payload, &current, &signer, &rogue)
                                .map(|()| counts.answers.fetch_add(1, Ordering::AcqRel))
                        } else {
                            Ok(0)
                        };
                        if let (Err(e), Ok(mut errors)) = (result, counts.errors.lock()) {
                            errors.push(e);
                        }
                    }
                    done = received.len();
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        };
        Impostor {
            variant,
            running,
            counts,
            thread: Some(thread),
        }
    }

    /// Answers evidence with `variant` from now on; returns the answers
    /// given so far.
    pub fn set(&self, variant: Variant) -> u64 {
        if let Ok(mut v) = self.variant.lock() {
            *v = variant;
        }
        self.answers()
    }

    pub fn answers(&self) -> u64 {
        self.counts.answers.load(Ordering::Acquire)
    }

    pub fn errors(&self) -> Vec<String> {
        self.counts
            .errors
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default()
    }
}

impl Drop for Impostor {
    fn drop(&mut self) {
        self.running.store(false, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn answer_nonce_request(
    client: &MqttClient,
    setup: &ImpostorSetup,
    payload: &[u8],
) -> Result<(), String> {
    let request = NonceRequest::decode(payload).map_err(|e| format!("nonce request: {e}"))?;
    let nonce = Nonce {
        v: Version::CURRENT,
        nonce: Bytes(random()),
        purpose: request.purpose,
        expires_in_ms: 10_000,
        // The fleet's class selection (the impostor signs whatever the
        // device quotes).
        pcr_alg: mctc_shim::tpm::TPM_ALG_SHA256,
        pcr_mask: (1 << 0) | (1 << 7) | (1 << mctc_tests::fleet::MEASURED_PCR),
    };
    let mut buf = [0u8; 256];
    let bytes = nonce.encode(&mut buf).map_err(|e| format!("nonce: {e}"))?;
    client.publish(&format!("mctc/v1/dev/{}/nonce", setup.device), bytes, false);
    Ok(())
}

fn answer_evidence(
    client: &MqttClient,
    setup: &ImpostorSetup,
    payload: &[u8],
    variant: &Variant,
    signer: &RingSigner,
    rogue: &RingSigner,
) -> Result<(), String> {
    let evidence = Evidence::decode(payload).map_err(|e| format!("evidence: {e}"))?;
    let mut composite = ring::digest::Context::new(&ring::digest::SHA256);
    for value in evidence.pcr_values.iter() {
        composite.update(&value.0);
    }
    let digest: [u8; 32] = composite
        .finish()
        .as_ref()
        .try_into()
        .map_err(|_| "SHA-256 is 32 bytes".to_owned())?;
    let now = unix_now();
    let mut spec = ArtifactSpec {
        sub: setup.device.clone(),
        nonce: evidence.nonce.0,
        boot: setup.boot,
        pcr_mask: evidence.pcr_mask,
        pcr_digest: digest,
        iat: now,
        exp: now + u64::from(setup.ttl_ms / 1000) + 1,
        ttl_ms: setup.ttl_ms,
        hb_ms: setup.hb_ms,
        hb_seq: setup.hb_seq,
        epoch: setup.epoch,
    };
    let mut key = signer;
    let bytes = match variant {
        Variant::Replay(bytes) => bytes.clone(),
        other => {
            match other {
                Variant::RogueKey => key = rogue,
                Variant::Expired => {
                    spec.iat = now - 7200;
                    spec.exp = now - 3600;
                }
                Variant::OtherDevice(id) => spec.sub.clone_from(id),
                Variant::OtherBoot(boot) => spec.boot = *boot,
                Variant::Genuine | Variant::Replay(_) => {}
            }
            artifact(&spec, key)?
        }
    };
    client.publish(
        &format!("mctc/v1/dev/{}/artifact", setup.device),
        &bytes,
        false,
    );
    Ok(())
}
