//! Every MQTT payload of mctc except the artifact ([`crate::artifact`]) and
//! the lineage record ([`crate::lineage`]). Field docs start with the CBOR
//! map key; the crate README has the same tables.
//!
//! Unsigned messages travel as their canonical CBOR. Signed ones
//! ([`EnrollResult`], [`Refusal`], [`Heartbeat`], [`Control`],
//! [`RegistryRecord`]) travel inside a COSE_Sign1 envelope
//! ([`crate::cose::Signed`]).

use crate::cose::Signed;
use crate::crypto::{Crypto, DOMAIN_ENROLL_PROOF, tagged_hash};
use crate::error::{Error, Invalid, MessageKind, Problem};
use crate::id::DeviceId;
use crate::limits::{
    MAX_AK_NAME_LEN, MAX_AK_PUBLIC_LEN, MAX_ATTEST_LEN, MAX_BATCH_RECORDS, MAX_CLASS_LEN,
    MAX_CREDENTIAL_BLOB_LEN, MAX_CREDENTIAL_SECRET_LEN, MAX_EK_CERT_LEN, MAX_EK_PUBLIC_LEN,
    MAX_ENCRYPTED_SECRET_LEN, MAX_HB_MS, MAX_PCRS, MAX_REASON_LEN, MAX_RECORD_LEN,
    MAX_REFUSAL_PCRS, MAX_REVOKED_PER_HEARTBEAT, MAX_TPM_SIGNATURE_LEN, MIN_HB_MS, PCR_PREFIX_LEN,
};
use crate::tpm::PcrSelection;
use crate::wire::{
    Bstr, Bytes, Digest, List, Text, Token, Version, wire_code, wire_map, wire_message,
};

/// A 16-byte id the agent picks for one enrollment attempt; every
/// enrollment message echoes it.
pub type RequestId = Bytes<16>;
/// A 32-byte nonce.
pub type NonceBytes = Bytes<32>;

wire_map! {
    /// Agent → authority on `enroll/{dev}/request`: the TPM identity to
    /// enroll. Unsigned: the authority trusts nothing in it until the
    /// credential activation round trip proves the AK lives in the TPM that
    /// owns the EK (and, if given, the EK certificate chains to a TPM
    /// vendor).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct EnrollRequest<'a> {
        /// Key `0`: wire version (1).
        0 => v: Version,
        /// Key `1`: the attempt's id.
        1 => request_id: RequestId,
        /// Key `2`: the device id (must equal the topic's).
        2 => device: DeviceId,
        /// Key `3`: marshalled `TPM2B_PUBLIC` of the EK (≤ 1024 bytes).
        3 => ek_public: Bstr<'a, MAX_EK_PUBLIC_LEN>,
        /// Key `4`: DER EK certificate, when the TPM has one (≤ 4096 bytes).
        4 => ek_cert: Option<Bstr<'a, MAX_EK_CERT_LEN>>,
        /// Key `5`: marshalled `TPM2B_PUBLIC` of the AK (≤ 1024 bytes).
        5 => ak_public: Bstr<'a, MAX_AK_PUBLIC_LEN>,
        /// Key `6`: the AK's TPM name (≤ 68 bytes).
        6 => ak_name: Bstr<'a, MAX_AK_NAME_LEN>,
    }
}
wire_message!(EnrollRequest<'a>, MessageKind::EnrollRequest);

wire_map! {
    /// Authority → agent on `enroll/{dev}/challenge`: `TPM2_MakeCredential`
    /// output for the EK and the AK name.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct EnrollChallenge<'a> {
        /// Key `0`: wire version (1).
        0 => v: Version,
        /// Key `1`: echo of the request id.
        1 => request_id: RequestId,
        /// Key `2`: `TPM2B_ID_OBJECT` credential blob (≤ 256 bytes).
        2 => credential_blob: Bstr<'a, MAX_CREDENTIAL_BLOB_LEN>,
        /// Key `3`: `TPM2B_ENCRYPTED_SECRET` (≤ 512 bytes).
        3 => encrypted_secret: Bstr<'a, MAX_ENCRYPTED_SECRET_LEN>,
    }
}
wire_message!(EnrollChallenge<'a>, MessageKind::EnrollChallenge);

wire_map! {
    /// Agent → authority on `enroll/{dev}/proof`: proof that the TPM
    /// activated the credential. The secret itself never travels.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct EnrollProof {
        /// Key `0`: wire version (1).
        0 => v: Version,
        /// Key `1`: echo of the request id.
        1 => request_id: RequestId,
        /// Key `2`: [`enroll_proof`] over the activated secret.
        2 => proof: Digest,
    }
}
wire_message!(EnrollProof, MessageKind::EnrollProof);

/// The enrollment proof: `tagged_hash("mctc/v1/enroll-proof", secret,
/// device id, AK name)` (see [`tagged_hash`]). Binding the device id and AK
/// name means a proof cannot be replayed for another device or key.
pub fn enroll_proof(
    crypto: &dyn Crypto,
    secret: &[u8],
    device: &DeviceId,
    ak_name: &[u8],
) -> Result<[u8; 32], Error> {
    if secret.len() > MAX_CREDENTIAL_SECRET_LEN {
        return Err(Error::Invalid {
            kind: MessageKind::EnrollProof,
            invalid: Invalid {
                field: "secret",
                problem: Problem::TooLong {
                    max: MAX_CREDENTIAL_SECRET_LEN,
                },
            },
        });
    }
    Ok(tagged_hash(
        crypto,
        DOMAIN_ENROLL_PROOF,
        [secret, device.as_str().as_bytes(), ak_name],
    ))
}

wire_code! {
    /// The outcome of an enrollment.
    pub enum EnrollStatus: u8 {
        /// Enrolled (or already enrolled with the same EK and AK).
        Ok = 0 => "ok",
        /// The EK public or certificate is unacceptable.
        BadEk = 1 => "bad-ek",
        /// The AK public or name is unacceptable (attributes, algorithm).
        BadAk = 2 => "bad-ak",
        /// The proof does not match the credential's secret.
        ProofMismatch = 3 => "proof-mismatch",
        /// The device id is enrolled with another EK.
        IdentityConflict = 4 => "identity-conflict",
        /// The fleet does not admit this device id.
        NotAllowed = 5 => "not-allowed",
        /// The device id is revoked; only re-provisioning clears it.
        Revoked = 6 => "revoked",
        /// The authority failed; try again later.
        Internal = 7 => "internal",
    }
}

wire_map! {
    /// Authority → agent on `enroll/{dev}/result` (signed).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct EnrollResult {
        /// Key `0`: wire version (1).
        0 => v: Version,
        /// Key `1`: echo of the request id.
        1 => request_id: RequestId,
        /// Key `2`: the device.
        2 => sub: DeviceId,
        /// Key `3`: outcome.
        3 => status: EnrollStatus,
        /// Key `4`: issue time, Unix seconds.
        4 => iat: u64,
    }
}
wire_message!(EnrollResult, MessageKind::EnrollResult);
impl Signed<'_> for EnrollResult {}

wire_code! {
    /// Why a device asks for a nonce.
    pub enum NoncePurpose: u8 {
        /// Renewal of the gate's artifact.
        Renew = 1 => "renew",
        /// A fresh attestation for one operation whose scope demands it.
        FreshOp = 2 => "fresh-op",
    }
}

wire_map! {
    /// Agent → authority on `dev/{dev}/nonce/req`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct NonceRequest {
        /// Key `0`: wire version (1).
        0 => v: Version,
        /// Key `1`: the device (must equal the topic's).
        1 => device: DeviceId,
        /// Key `2`: what the nonce is for.
        2 => purpose: NoncePurpose,
    }
}
wire_message!(NonceRequest, MessageKind::NonceRequest);

wire_map! {
    /// Authority → agent on `dev/{dev}/nonce`. Unsigned: a forged nonce
    /// only makes the device's evidence fail at the authority, which checks
    /// the nonce against those it issued, and the PCR selection against
    /// the device's class.
    ///
    /// The authority names the PCRs to quote (its policy for the device's
    /// class), so a device's configuration cannot drift from the policy.
    /// Keys `4` and `5` are required: a nonce from an authority that does
    /// not send them does not decode (an old peer fails closed), and an old
    /// device refuses the unknown keys.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Nonce {
        /// Key `0`: wire version (1).
        0 => v: Version,
        /// Key `1`: the nonce (qualifying data of the quote).
        1 => nonce: NonceBytes,
        /// Key `2`: echo of the request's purpose.
        2 => purpose: NoncePurpose,
        /// Key `3`: how long the authority accepts evidence for it.
        3 => expires_in_ms: u32,
        /// Key `4`: PCR bank to quote: `TPM_ALG_SHA256` (0x000B).
        4 => pcr_alg: u16,
        /// Key `5`: PCRs to quote, bit `i` = PCR `i` (bits 0–23, at least
        /// one).
        5 => pcr_mask: u32,
    }
    check = check_nonce;
}
wire_message!(Nonce, MessageKind::Nonce);

impl Nonce {
    /// The PCR selection the authority asks the quote to cover.
    pub const fn pcr_selection(&self) -> PcrSelection {
        PcrSelection {
            alg: self.pcr_alg,
            mask: self.pcr_mask,
        }
    }
}

/// An empty selection, one outside PCRs 0–23 or another bank is refused:
/// the device would quote nothing the policy can judge.
fn check_nonce(n: &Nonce) -> Result<(), Invalid> {
    n.pcr_selection().validate()
}

wire_map! {
    /// Agent → authority on `dev/{dev}/evidence`: a TPM quote over the
    /// policy PCRs with the nonce as qualifying data, and the PCR values it
    /// covers.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Evidence<'a> {
        /// Key `0`: wire version (1).
        0 => v: Version,
        /// Key `1`: the device (must equal the topic's).
        1 => device: DeviceId,
        /// Key `2`: the nonce the quote answers.
        2 => nonce: NonceBytes,
        /// Key `3`: raw `TPMS_ATTEST` the AK signed (≤ 1024 bytes).
        3 => attest: Bstr<'a, MAX_ATTEST_LEN>,
        /// Key `4`: marshalled `TPMT_SIGNATURE` (≤ 512 bytes).
        4 => signature: Bstr<'a, MAX_TPM_SIGNATURE_LEN>,
        /// Key `5`: PCR bank: `TPM_ALG_SHA256` (0x000B).
        5 => pcr_alg: u16,
        /// Key `6`: selected PCRs, bit `i` = PCR `i` (bits 0–23, at least one).
        6 => pcr_mask: u32,
        /// Key `7`: the selected PCRs' values in ascending PCR order; exactly as
        /// many as bits in `pcr_mask`.
        7 => pcr_values: List<Digest, MAX_PCRS>,
    }
    check = check_evidence;
}
wire_message!(Evidence<'a>, MessageKind::Evidence);

impl Evidence<'_> {
    /// The PCR selection the quote covers.
    pub const fn pcr_selection(&self) -> PcrSelection {
        PcrSelection {
            alg: self.pcr_alg,
            mask: self.pcr_mask,
        }
    }
}

fn check_evidence(e: &Evidence<'_>) -> Result<(), Invalid> {
    let selection = e.pcr_selection();
    selection.validate()?;
    if selection.count() != e.pcr_values.len() {
        return Err(Invalid {
            field: "pcr_values",
            problem: Problem::Inconsistent,
        });
    }
    Ok(())
}

wire_code! {
    /// Why the authority did not affirm evidence.
    pub enum RefusalCode: u16 {
        /// The quote, its signature or the PCR values do not verify.
        BadEvidence = 1 => "bad-evidence",
        /// The nonce is unknown or expired: ask for a new one.
        StaleNonce = 2 => "stale-nonce",
        /// The PCR values do not match the device's policy.
        PolicyMismatch = 3 => "policy-mismatch",
        /// The device is not enrolled (or the AK is not its enrolled AK).
        NotEnrolled = 4 => "not-enrolled",
        /// The device is revoked. The device treats this as revocation.
        Revoked = 5 => "revoked",
        /// The device is contained until an operator restores it.
        Contained = 6 => "contained",
        /// The TPM boot counters went backwards or the clock is unsafe.
        BootAnomaly = 7 => "boot-anomaly",
        /// The authority failed; try again later.
        Internal = 8 => "internal",
    }
}

wire_map! {
    /// Authority → agent on `dev/{dev}/artifact` (signed, in place of an
    /// artifact): the evidence answering `nonce` was not affirmed.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Refusal {
        /// Key `0`: wire version (1).
        0 => v: Version,
        /// Key `1`: the device.
        1 => sub: DeviceId,
        /// Key `2`: the nonce of the refused evidence (binds the refusal to one
        /// attempt, so an old refusal cannot be replayed).
        2 => nonce: NonceBytes,
        /// Key `3`: why.
        3 => reason: RefusalCode,
        /// Key `4`: whether the authority now holds the device contained.
        4 => contained: bool,
        /// Key `5`: issue time, Unix seconds.
        5 => iat: u64,
        /// Key `6` (optional): the PCRs that made the authority refuse, at
        /// most [`MAX_REFUSAL_PCRS`] (the first ones, by index), each with
        /// the digest prefixes it compared. Absent when the refusal is not about PCR values. A
        /// decoder that predates the key rejects the whole refusal as
        /// malformed (unknown key): the old agent hears no answer and its
        /// gate stays closed.
        6 => pcrs: Option<List<PcrFinding, MAX_REFUSAL_PCRS>>,
    }
}
wire_message!(Refusal, MessageKind::Refusal);

wire_code! {
    /// How one PCR of refused evidence disagrees with the device's class.
    pub enum PcrProblem: u8 {
        /// Quoted, but not a value the class allows (drift).
        Differs = 1 => "differs",
        /// The class has no reference value for it yet (`policy learn`).
        NoReference = 2 => "no-reference",
        /// The class asks for it, the evidence does not quote it.
        NotQuoted = 3 => "not-quoted",
        /// Quoted, but the class does not ask for it.
        NotInPolicy = 4 => "not-in-policy",
    }
}

/// The leading bytes of a digest a [`PcrFinding`] carries: enough for a
/// person to tell values apart, never the whole baseline.
pub type DigestPrefix = Bytes<PCR_PREFIX_LEN>;

wire_map! {
    /// One PCR named in a [`Refusal`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct PcrFinding {
        /// Key `0`: the PCR index (0–23).
        0 => pcr: u8,
        /// Key `1`: how it disagrees.
        1 => problem: PcrProblem,
        /// Key `2`: a reference value's prefix (the first the class allows),
        /// when the class has one.
        2 => expected: Option<DigestPrefix>,
        /// Key `3`: the quoted value's prefix, when the evidence quoted it.
        3 => got: Option<DigestPrefix>,
    }
    check = check_pcr_finding;
}

fn check_pcr_finding(f: &PcrFinding) -> Result<(), Invalid> {
    if usize::from(f.pcr) >= MAX_PCRS {
        return Err(Invalid {
            field: "pcr",
            problem: Problem::OutOfRange,
        });
    }
    Ok(())
}
impl Signed<'_> for Refusal {}

wire_map! {
    /// Authority → all on `fleet/heartbeat` (signed), every `hb_ms / 3`.
    ///
    /// `revoked` lists every device revoked in the epochs
    /// `since_epoch + 1 ..= epoch`. The authority keeps each revocation in
    /// the list for at least `hb_ms` (so every device whose gate is open
    /// hears it) and raises `since_epoch` only as far as the 16-entry limit
    /// forces. A device whose known epoch is below `since_epoch` may have
    /// missed a revocation and closes its gate until it re-attests.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Heartbeat {
        /// Key `0`: wire version (1).
        0 => v: Version,
        /// Key `1`: strictly increasing across the fleet's heartbeats.
        1 => seq: u64,
        /// Key `2`: revocation epoch: raised by one for every revocation.
        2 => epoch: u64,
        /// Key `3`: the list covers revocations after this epoch (≤ `epoch`).
        3 => since_epoch: u64,
        /// Key `4`: issue time, Unix seconds.
        4 => iat: u64,
        /// Key `5`: the heartbeat window the authority currently applies
        /// (1 000 – 3 600 000 ms); devices use the smaller of this and the
        /// artifact's.
        5 => hb_ms: u32,
        /// Key `6`: devices revoked in `since_epoch + 1 ..= epoch` (≤ 16).
        6 => revoked: List<DeviceId, MAX_REVOKED_PER_HEARTBEAT>,
    }
    check = check_heartbeat;
}
wire_message!(Heartbeat, MessageKind::Heartbeat);
impl Signed<'_> for Heartbeat {}

fn check_heartbeat(h: &Heartbeat) -> Result<(), Invalid> {
    if h.since_epoch > h.epoch {
        return Err(Invalid {
            field: "since_epoch",
            problem: Problem::Inconsistent,
        });
    }
    if !(MIN_HB_MS..=MAX_HB_MS).contains(&h.hb_ms) {
        return Err(Invalid {
            field: "hb_ms",
            problem: Problem::OutOfRange,
        });
    }
    Ok(())
}

wire_code! {
    /// What a control message orders.
    pub enum ControlAction: u8 {
        /// Close the gate and refuse artifacts until restored.
        Contain = 1 => "contain",
        /// Lift containment; the device re-attests to reopen.
        Restore = 2 => "restore",
        /// Close permanently; only re-provisioning clears it.
        Revoke = 3 => "revoke",
    }
}

wire_map! {
    /// Authority → agent on `dev/{dev}/control` (signed).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Control<'a> {
        /// Key `0`: wire version (1).
        0 => v: Version,
        /// Key `1`: the device.
        1 => sub: DeviceId,
        /// Key `2`: strictly increasing per device; a device rejects a seq not
        /// above the last it accepted (and persists that seq).
        2 => seq: u64,
        /// Key `3`: the order.
        3 => action: ControlAction,
        /// Key `4`: operator's reason (≤ 64 bytes UTF-8).
        4 => reason: Text<'a, MAX_REASON_LEN>,
        /// Key `5`: issue time, Unix seconds.
        5 => iat: u64,
    }
}
wire_message!(Control<'a>, MessageKind::Control);
impl<'a> Signed<'a> for Control<'a> {}

wire_code! {
    /// A device's standing in the fleet registry.
    pub enum DeviceStatus: u8 {
        /// Enrolled and in good standing.
        Active = 1 => "active",
        /// Contained by an operator.
        Contained = 2 => "contained",
        /// Revoked (terminal).
        Revoked = 3 => "revoked",
    }
}

wire_map! {
    /// Authority → collectors on `registry/{dev}` (signed, retained): what
    /// a collector needs to verify a device's checkpoints offline.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct RegistryRecord<'a> {
        /// Key `0`: wire version (1).
        0 => v: Version,
        /// Key `1`: the device.
        1 => sub: DeviceId,
        /// Key `2`: device class (token, ≤ 32 bytes): selects the PCR policy.
        2 => class: Token<'a, MAX_CLASS_LEN>,
        /// Key `3`: marshalled `TPM2B_PUBLIC` of the enrolled AK (≤ 1024 bytes).
        3 => ak_public: Bstr<'a, MAX_AK_PUBLIC_LEN>,
        /// Key `4`: the AK's TPM name (≤ 68 bytes).
        4 => ak_name: Bstr<'a, MAX_AK_NAME_LEN>,
        /// Key `5`: SHA-256 of the EK's marshalled `TPM2B_PUBLIC`.
        5 => ek_sha256: Digest,
        /// Key `6`: standing.
        6 => status: DeviceStatus,
        /// Key `7`: record version, strictly increasing per device: a collector
        /// keeps the highest it has seen.
        7 => version: u64,
        /// Key `8`: issue time, Unix seconds.
        8 => iat: u64,
    }
}
wire_message!(RegistryRecord<'a>, MessageKind::RegistryRecord);
impl<'a> Signed<'a> for RegistryRecord<'a> {}

wire_map! {
    /// Agent → collector on `dev/{dev}/lineage`: consecutive records, each
    /// as its own canonical encoding inside a byte string, so the collector
    /// hashes exactly the bytes the agent hashed and iterates without
    /// allocating.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct LineageBatch<'a> {
        /// Key `0`: wire version (1).
        0 => v: Version,
        /// Key `1`: the device (must equal the topic's and every record's).
        1 => device: DeviceId,
        /// Key `2`: 1 to 64 encoded records (each ≤ 2048 bytes), ascending seq;
        /// the whole batch is at most 65 536 bytes.
        2 => records: List<Bstr<'a, MAX_RECORD_LEN>, MAX_BATCH_RECORDS>,
    }
    check = check_batch;
}
wire_message!(LineageBatch<'a>, MessageKind::LineageBatch);

fn check_batch(b: &LineageBatch<'_>) -> Result<(), Invalid> {
    if b.records.is_empty() {
        return Err(Invalid {
            field: "records",
            problem: Problem::Empty,
        });
    }
    Ok(())
}

wire_code! {
    /// What a collector found wrong in a device's lineage.
    pub enum AckAnomaly: u8 {
        /// A record does not decode.
        Undecodable = 1 => "undecodable",
        /// A record names another device.
        WrongDevice = 2 => "wrong-device",
        /// Records are missing before `at_seq`.
        Gap = 3 => "gap",
        /// A record arrived after later ones.
        Reordered = 4 => "reordered",
        /// Two different records share a seq (equivocation).
        Conflict = 5 => "conflict",
        /// A record's `prev` is not its predecessor's hash.
        LinkMismatch = 6 => "link-mismatch",
        /// A checkpoint does not commit to its predecessor, or its quote
        /// does not verify.
        BadCheckpoint = 7 => "bad-checkpoint",
        /// Monotonic time went backwards within one boot.
        ClockRegression = 8 => "clock-regression",
    }
}

wire_map! {
    /// Collector → agent on `dev/{dev}/lineage/ack`. The agent may prune
    /// records up to `through_seq`; on an anomaly it keeps everything and
    /// raises an alarm.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct LineageAck {
        /// Key `0`: wire version (1).
        0 => v: Version,
        /// Key `1`: the device.
        1 => device: DeviceId,
        /// Key `2`: highest seq up to which the collector holds a verified,
        /// contiguous chain from seq 0 (absent: none yet).
        2 => through_seq: Option<u64>,
        /// Key `3`: what is wrong, if anything.
        3 => anomaly: Option<AckAnomaly>,
        /// Key `4`: the seq the anomaly was found at.
        4 => at_seq: Option<u64>,
    }
}
wire_message!(LineageAck, MessageKind::LineageAck);
