//! Everything the authority signs, built from typed inputs: artifacts,
//! refusals, heartbeats, controls, registry records and enrollment
//! results, each a COSE_Sign1 by the issuer key (mctc-shim encoders).

use std::fmt;
use std::path::Path;

use mctc_shim::artifact::{Claims, ScopeEntry};
use mctc_shim::cose::Signed;
use mctc_shim::limits::{MAX_REFUSAL_PCRS, MAX_SIGNED_LEN};
use mctc_shim::messages::{
    Control, ControlAction, DeviceStatus, EnrollResult, EnrollStatus, Heartbeat, PcrFinding,
    Refusal, RefusalCode, RegistryRecord,
};
use mctc_shim::tpm::{BootCounters, TPM_ALG_SHA256};
use mctc_shim::wire::{Bstr, Bytes, List, Text, Token, Version};
use mctc_shim::{DeviceId, RingCrypto, Signer};
use ring::signature::{Ed25519KeyPair, KeyPair};

use crate::error::Error;
use crate::policy::ClassPolicy;
use crate::store::{HeartbeatState, RegistryRow};

/// The issuer key as the shim's [`Signer`].
pub struct KeySigner {
    pair: Ed25519KeyPair,
    public: [u8; 32],
}

impl fmt::Debug for KeySigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never key material; the public key names the key.
        f.debug_struct("KeySigner")
            .field("public", &hex::encode(self.public))
            .finish()
    }
}

impl KeySigner {
    /// Reads the PKCS#8 PEM key (refused if others can read it).
    pub fn load(path: &Path) -> Result<KeySigner, Error> {
        let pair = mctc_service::keys::read_signing_key(path)?;
        KeySigner::from_pair(pair)
            .ok_or_else(|| Error::config(path, "the Ed25519 public key is not 32 bytes".to_owned()))
    }

    /// Wraps a key pair.
    pub fn from_pair(pair: Ed25519KeyPair) -> Option<KeySigner> {
        let public = <[u8; 32]>::try_from(pair.public_key().as_ref()).ok()?;
        Some(KeySigner { pair, public })
    }
}

impl Signer for KeySigner {
    fn public_key(&self) -> [u8; 32] {
        self.public
    }

    fn sign(&self, message: &[u8]) -> Result<[u8; 64], mctc_shim::Error> {
        <[u8; 64]>::try_from(self.pair.sign(message).as_ref()).map_err(|_| mctc_shim::Error::Signer)
    }
}

/// What an artifact says, apart from the class's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactFacts {
    /// The device.
    pub sub: DeviceId,
    /// Artifact id.
    pub cti: [u8; 16],
    /// The nonce the evidence quoted.
    pub nonce: [u8; 32],
    /// The quoted PCRs.
    pub pcr_mask: u32,
    /// The attested composite digest.
    pub pcr_digest: [u8; 32],
    /// The attested boot.
    pub boot: BootCounters,
    /// For the next renewal.
    pub next_nonce: [u8; 32],
    /// Last heartbeat seq allocated.
    pub hb_seq: u64,
    /// Revocation epoch.
    pub epoch: u64,
    /// Issue time, Unix milliseconds.
    pub now_ms: u64,
}

/// Signs what the authority sends.
#[derive(Debug)]
pub struct Issuer {
    signer: KeySigner,
    authority_id: String,
}

fn sign<'a, M: Signed<'a>>(message: &M, signer: &KeySigner) -> Result<Vec<u8>, mctc_shim::Error> {
    let mut buf = [0u8; MAX_SIGNED_LEN];
    message
        .sign(signer, &RingCrypto, &mut buf)
        .map(<[u8]>::to_vec)
}

impl Issuer {
    /// An issuer with `authority_id` as `iss`.
    pub fn new(signer: KeySigner, authority_id: String) -> Issuer {
        Issuer {
            signer,
            authority_id,
        }
    }

    /// The issuer's public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.signer.public
    }

    /// A signed artifact for `facts` under `class`.
    pub fn artifact(
        &self,
        facts: &ArtifactFacts,
        class: &ClassPolicy,
    ) -> Result<Vec<u8>, mctc_shim::Error> {
        let mut scope: List<ScopeEntry<'_>, { mctc_shim::limits::MAX_SCOPE_ENTRIES }> = List::new();
        for rule in &class.scope {
            // The policy loader caps the scope at the list's capacity.
            if scope
                .push(ScopeEntry {
                    op: Token(&rule.op),
                    max_amount: rule.max_amount,
                    currency: rule.currency,
                    fresh_attestation: rule.fresh_attestation,
                })
                .is_err()
            {
                return Err(mctc_shim::Error::BufferTooSmall {
                    kind: mctc_shim::MessageKind::Artifact,
                });
            }
        }
        // `exp` is rounded up, so a device with a trusted wall clock gets
        // the full ttl rather than losing the fraction of a second.
        let iat = facts.now_ms / 1000;
        let exp = facts
            .now_ms
            .saturating_add(u64::from(class.artifact_ttl_ms))
            .div_ceil(1000)
            .max(iat + 1);
        let claims = Claims {
            iss: Token(&self.authority_id),
            sub: facts.sub.clone(),
            exp,
            iat,
            cti: Bytes(facts.cti),
            v: Version::default(),
            ttl_ms: class.artifact_ttl_ms,
            nonce: Bytes(facts.nonce),
            pcr_alg: TPM_ALG_SHA256,
            pcr_mask: facts.pcr_mask,
            pcr_digest: Bytes(facts.pcr_digest),
            boot: facts.boot,
            scope,
            next_nonce: Bytes(facts.next_nonce),
            hb_ms: class.heartbeat_ms,
            hb_seq: facts.hb_seq,
            epoch: facts.epoch,
        };
        sign(&claims, &self.signer)
    }

    /// A signed refusal of the evidence that quoted `nonce`.
    pub fn refusal(
        &self,
        sub: &DeviceId,
        nonce: [u8; 32],
        reason: RefusalCode,
        contained: bool,
        iat: u64,
        pcrs: &[PcrFinding],
    ) -> Result<Vec<u8>, mctc_shim::Error> {
        // More findings than a refusal carries cannot come from a verdict
        // (one per PCR of the bank); cut rather than fail the answer.
        let pcrs = pcrs
            .get(..pcrs.len().min(MAX_REFUSAL_PCRS))
            .unwrap_or_default();
        sign(
            &Refusal {
                v: Version::default(),
                sub: sub.clone(),
                nonce: Bytes(nonce),
                reason,
                contained,
                iat,
                pcrs: (!pcrs.is_empty()).then(|| List::from_slice(pcrs)).flatten(),
            },
            &self.signer,
        )
    }

    /// A signed fleet heartbeat.
    pub fn heartbeat(
        &self,
        state: &HeartbeatState,
        hb_ms: u32,
        iat: u64,
    ) -> Result<Vec<u8>, mctc_shim::Error> {
        let revoked = List::from_slice(&state.revoked).ok_or(mctc_shim::Error::BufferTooSmall {
            kind: mctc_shim::MessageKind::Heartbeat,
        })?;
        sign(
            &Heartbeat {
                v: Version::default(),
                seq: state.seq,
                epoch: state.epoch,
                since_epoch: state.since_epoch,
                iat,
                hb_ms,
                revoked,
            },
            &self.signer,
        )
    }

    /// A signed control message.
    pub fn control(
        &self,
        sub: &DeviceId,
        seq: u64,
        action: ControlAction,
        reason: &str,
        iat: u64,
    ) -> Result<Vec<u8>, mctc_shim::Error> {
        sign(
            &Control {
                v: Version::default(),
                sub: sub.clone(),
                seq,
                action,
                reason: Text(reason),
                iat,
            },
            &self.signer,
        )
    }

    /// A signed registry record.
    pub fn registry(&self, row: &RegistryRow, iat: u64) -> Result<Vec<u8>, mctc_shim::Error> {
        sign(
            &RegistryRecord {
                v: Version::default(),
                sub: row.device.clone(),
                class: Token(&row.class),
                ak_public: Bstr(&row.ak_public),
                ak_name: Bstr(&row.ak_name),
                ek_sha256: Bytes(row.ek_sha256),
                status: row.status,
                version: row.version,
                iat,
            },
            &self.signer,
        )
    }

    /// A signed enrollment result.
    pub fn enroll_result(
        &self,
        sub: &DeviceId,
        request_id: [u8; 16],
        status: EnrollStatus,
        iat: u64,
    ) -> Result<Vec<u8>, mctc_shim::Error> {
        sign(
            &EnrollResult {
                v: Version::default(),
                request_id: Bytes(request_id),
                sub: sub.clone(),
                status,
                iat,
            },
            &self.signer,
        )
    }
}

/// A name for a device status (CLI, logs): the shim's name of the code.
pub const fn status_name(status: DeviceStatus) -> &'static str {
    status.name()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mctc_shim::AuthorityKey;
    use mctc_shim::artifact::Currency;
    use mctc_shim::gate::{verify_control, verify_heartbeat};

    use crate::policy::ScopeRule;

    fn issuer() -> Issuer {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        Issuer::new(KeySigner::from_pair(pair).unwrap(), "fleet".into())
    }

    #[test]
    fn artifacts_carry_the_class_settings_and_verify() {
        let issuer = issuer();
        let keys = [AuthorityKey::new(&RingCrypto, issuer.public_key())];
        let class = ClassPolicy {
            name: "pos".into(),
            pcrs: vec![0, 7],
            artifact_ttl_ms: 1500,
            heartbeat_ms: 9000,
            allow_first_use: false,
            reference: Default::default(),
            scope: vec![ScopeRule {
                op: "capture".into(),
                max_amount: Some(500),
                currency: Currency::new("EUR"),
                fresh_attestation: true,
            }],
        };
        let facts = ArtifactFacts {
            sub: DeviceId::new("d1").unwrap(),
            cti: [3; 16],
            nonce: [4; 32],
            pcr_mask: 0b1000_0001,
            pcr_digest: [5; 32],
            boot: BootCounters {
                reset: 2,
                restart: 1,
            },
            next_nonce: [6; 32],
            hb_seq: 41,
            epoch: 3,
            now_ms: 1_700_000_000_700,
        };
        let bytes = issuer.artifact(&facts, &class).unwrap();
        let claims = Claims::open(&bytes, &keys, &RingCrypto).unwrap();
        assert_eq!(claims.iss.0, "fleet");
        assert_eq!(claims.ttl_ms, 1500);
        assert_eq!(claims.iat, 1_700_000_000);
        assert_eq!(claims.exp, 1_700_000_003, "now + ttl, rounded up");
        assert_eq!(claims.hb_ms, 9000);
        assert_eq!(claims.hb_seq, 41);
        assert_eq!(claims.epoch, 3);
        assert_eq!(claims.scope.len(), 1);
        assert_eq!(claims.scope[0].max_amount, Some(500));
        assert!(claims.scope[0].fresh_attestation);
        assert_eq!(claims.next_nonce.0, [6; 32]);
    }

    #[test]
    fn fleet_messages_verify_with_the_public_key() {
        let issuer = issuer();
        let keys = [AuthorityKey::new(&RingCrypto, issuer.public_key())];
        let dev = DeviceId::new("d1").unwrap();
        let hb = issuer
            .heartbeat(
                &HeartbeatState {
                    seq: 9,
                    epoch: 2,
                    since_epoch: 0,
                    revoked: vec![dev.clone(), DeviceId::new("d0").unwrap()],
                },
                30_000,
                1,
            )
            .unwrap();
        let hb = verify_heartbeat(&hb, &keys, &RingCrypto).unwrap();
        assert_eq!(hb.message().seq, 9);
        assert_eq!(hb.message().revoked.len(), 2);
        let control = issuer
            .control(&dev, 4, ControlAction::Contain, "pcr drift: PCR 7", 1)
            .unwrap();
        let control = verify_control(&control, &keys, &RingCrypto, &dev).unwrap();
        assert_eq!(control.message().seq, 4);
        assert_eq!(control.message().action, ControlAction::Contain);
        assert!(format!("{:?}", issuer.signer).contains("public"));
    }
}
