//! Every capacity of the wire formats, as named constants.
//!
//! A decoder rejects input beyond these limits with a typed error before or
//! while parsing; an encoder refuses to produce it. The crate docs explain
//! why each limit suffices; the `limits` integration test builds the largest
//! message of every kind and checks it fits its kind's byte limit.

/// Longest device id, in bytes (`[a-z0-9._-]{1,64}`).
pub const MAX_DEVICE_ID_LEN: usize = 64;
/// Longest authority id (`iss`), in bytes.
pub const MAX_AUTHORITY_ID_LEN: usize = 64;
/// Longest governed-operation name (`capture`, `unlock`, …), in bytes.
pub const MAX_OP_LEN: usize = 32;
/// Most scope entries in one artifact.
pub const MAX_SCOPE_ENTRIES: usize = 8;
/// Most device ids one heartbeat lists as revoked.
pub const MAX_REVOKED_PER_HEARTBEAT: usize = 16;
/// Longest free-text reason (control messages, agent stop), in bytes.
pub const MAX_REASON_LEN: usize = 64;
/// Longest caller reference of a decision (payment reference, order id).
pub const MAX_REF_LEN: usize = 64;
/// Longest device class name in a registry record.
pub const MAX_CLASS_LEN: usize = 32;
/// Longest agent software version string.
pub const MAX_SW_VERSION_LEN: usize = 32;
/// Longest drift detail (a path or PCR list), in bytes.
pub const MAX_DRIFT_DETAIL_LEN: usize = 128;

/// Marshalled `TPM2B_PUBLIC` of the EK. An RSA-2048 EK with the default
/// policy marshals to about 360 bytes, RSA-4096 to about 620.
pub const MAX_EK_PUBLIC_LEN: usize = 1024;
/// DER EK certificate. TPM vendor EK certificates are 1–2 KiB.
pub const MAX_EK_CERT_LEN: usize = 4096;
/// Marshalled `TPM2B_PUBLIC` of the AK (ECC P-256: about 90 bytes; RSA-2048:
/// about 280).
pub const MAX_AK_PUBLIC_LEN: usize = 1024;
/// A TPM object name: 2-byte algorithm id plus a digest of at most 64 bytes
/// (SHA-512), plus the 2-byte size of `TPM2B_NAME`.
pub const MAX_AK_NAME_LEN: usize = 68;
/// `TPM2B_ID_OBJECT` from `TPM2_MakeCredential` (about 70 bytes for SHA-256).
pub const MAX_CREDENTIAL_BLOB_LEN: usize = 256;
/// `TPM2B_ENCRYPTED_SECRET` (256 bytes for an RSA-2048 EK, about 70 for ECC).
pub const MAX_ENCRYPTED_SECRET_LEN: usize = 512;
/// Raw `TPMS_ATTEST` of a quote. With 24 PCRs selected in one bank and a
/// 64-byte qualifying data it stays under 250 bytes.
pub const MAX_ATTEST_LEN: usize = 1024;
/// Marshalled `TPMT_SIGNATURE` (ECDSA P-256: about 72 bytes; RSA-2048: 262).
pub const MAX_TPM_SIGNATURE_LEN: usize = 512;
/// A TPM 2.0 PC-client platform has 24 PCRs per bank.
pub const MAX_PCRS: usize = 24;
/// Most PCRs a refusal names. Eight keep a refusal small in firmware RAM
/// (each finding is about 20 bytes inline); a class rarely selects more,
/// and the authority's `devices show` keeps every PCR it found.
pub const MAX_REFUSAL_PCRS: usize = 8;
/// Bytes of each digest a refusal's PCR finding shows (8: a person tells
/// values apart; the baseline itself stays with the authority).
pub const PCR_PREFIX_LEN: usize = 8;
/// Longest explanation text in the device status (`why.error`), in bytes.
pub const MAX_EXPLANATION_LEN: usize = 160;
/// Longest activated credential secret (`TPM2B_DIGEST`: at most 64 bytes).
pub const MAX_CREDENTIAL_SECRET_LEN: usize = 64;

/// Largest COSE_Sign1 message (artifact, refusal, heartbeat, control,
/// registry record, enrollment result), envelope included.
pub const MAX_SIGNED_LEN: usize = 2048;
/// Reserved receipt field 8 (the collector log's checkpoint, opaque in v1):
/// a C2SP signed note with a few cosignatures fits.
pub const MAX_RECEIPT_LOG_CHECKPOINT_LEN: usize = 512;
/// Reserved receipt field 9 (an inclusion proof, opaque in v1): 32 hashes of
/// 32 bytes, a tree of up to 2^32 entries.
pub const MAX_RECEIPT_PROOF_LEN: usize = 1024;
/// Largest artifact: the same bound as every signed message.
pub const MAX_ARTIFACT_LEN: usize = MAX_SIGNED_LEN;
/// Largest canonical encoding of one lineage record. A checkpoint (the
/// largest body: `TPMS_ATTEST` and `TPMT_SIGNATURE` at their limits) fits.
pub const MAX_RECORD_LEN: usize = 2048;
/// Most records in one lineage batch.
pub const MAX_BATCH_RECORDS: usize = 64;
/// Largest lineage batch, in bytes. An agent fills a batch until either
/// this or [`MAX_BATCH_RECORDS`] would be exceeded.
pub const MAX_BATCH_LEN: usize = 65_536;
/// Largest unsigned message other than a lineage batch (an enrollment
/// request with an EK certificate at its limit).
pub const MAX_ENROLL_REQUEST_LEN: usize = 6400;
/// Largest evidence message.
pub const MAX_EVIDENCE_LEN: usize = 2560;
/// Largest small control-plane message (nonce request, nonce, challenge,
/// proof, ack).
pub const MAX_SMALL_MESSAGE_LEN: usize = 1024;

/// Longest MQTT topic the helpers in [`crate::topics`] produce.
pub const MAX_TOPIC_LEN: usize = 128;

/// Longest artifact validity the device accepts, in milliseconds (one day).
/// A longer `ttl_ms` is a malformed artifact: short-lived authorization is
/// the point of mctc.
pub const MAX_TTL_MS: u32 = 86_400_000;
/// Shortest heartbeat window the device accepts, in milliseconds.
pub const MIN_HB_MS: u32 = 1_000;
/// Longest heartbeat window the device accepts, in milliseconds (one hour).
pub const MAX_HB_MS: u32 = 3_600_000;
