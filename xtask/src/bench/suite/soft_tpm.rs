//! A software attestation key for simulated devices: an ECC P-256 key whose
//! public area, quotes and signatures are marshalled exactly as a TPM 2.0
//! marshals them (TPM 2.0 Part 2: `TPM2B_PUBLIC`, `TPMS_ATTEST`,
//! `TPMT_SIGNATURE`), so the authority's and the collector's verifiers take
//! them as they take a real TPM's. It lets the suite measure the fleet side
//! without a TPM in the loop — it proves nothing about a device, which is
//! exactly why the authority binds real AKs to EKs at enrollment.

use std::time::Instant;

use mctc_shim::limits::MAX_EVIDENCE_LEN;
use mctc_shim::messages::Evidence;
use mctc_shim::wire::{Bstr, Bytes, List, Version};
use mctc_shim::{Crypto, DeviceId, Message, RingCrypto};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};

const TPM_ALG_ECC: u16 = 0x0023;
const TPM_ALG_SHA256: u16 = 0x000b;
const TPM_ALG_NULL: u16 = 0x0010;
const TPM_ALG_ECDSA: u16 = 0x0018;
const TPM_ALG_AES: u16 = 0x0006;
const TPM_ALG_CFB: u16 = 0x0043;
const TPM_ECC_NIST_P256: u16 = 0x0003;
const TPM_GENERATED_VALUE: u32 = 0xff54_4347;
const TPM_ST_ATTEST_QUOTE: u16 = 0x8018;

// TPMA_OBJECT bits (Part 2, 8.3).
const FIXED_TPM: u32 = 1 << 1;
const ST_CLEAR: u32 = 1 << 2;
const FIXED_PARENT: u32 = 1 << 4;
const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
const USER_WITH_AUTH: u32 = 1 << 6;
const ADMIN_WITH_POLICY: u32 = 1 << 7;
const NO_DA: u32 = 1 << 10;
const RESTRICTED: u32 = 1 << 16;
const DECRYPT: u32 = 1 << 17;
const SIGN: u32 = 1 << 18;

/// What the agent's AK template asks for: a restricted signing key.
const AK_ATTRIBUTES: u32 = FIXED_TPM
    | ST_CLEAR
    | FIXED_PARENT
    | SENSITIVE_DATA_ORIGIN
    | USER_WITH_AUTH
    | NO_DA
    | RESTRICTED
    | SIGN;
/// The TCG EK template's attributes: a restricted decryption key.
const EK_ATTRIBUTES: u32 =
    FIXED_TPM | FIXED_PARENT | SENSITIVE_DATA_ORIGIN | ADMIN_WITH_POLICY | RESTRICTED | DECRYPT;

/// A big-endian writer for TPM structures.
#[derive(Default)]
struct Out(Vec<u8>);

impl Out {
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    /// A `TPM2B_*`: u16 size, then the bytes.
    fn tpm2b(&mut self, bytes: &[u8]) -> Result<&mut Self, String> {
        let len = u16::try_from(bytes.len()).map_err(|_| "TPM2B too long".to_owned())?;
        self.u16(len);
        self.0.extend_from_slice(bytes);
        Ok(self)
    }
}

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    RingCrypto.sha256(parts)
}

/// An ECC P-256 `TPMT_PUBLIC` with the given attributes, symmetric
/// definition and scheme, and point `(x, y)`.
fn ecc_public(
    attributes: u32,
    symmetric: &[u16],
    scheme: &[u16],
    point: &[u8],
) -> Result<Vec<u8>, String> {
    // ring's public key is the uncompressed point 04 || x || y.
    let (x, y) = match point {
        [4, rest @ ..] if rest.len() == 64 => rest.split_at(32),
        _ => return Err("not an uncompressed P-256 point".into()),
    };
    let mut t = Out::default();
    t.u16(TPM_ALG_ECC).u16(TPM_ALG_SHA256).u32(attributes);
    t.tpm2b(&[])?; // authPolicy (the EK's real policy does not matter here)
    for v in symmetric {
        t.u16(*v);
    }
    for v in scheme {
        t.u16(*v);
    }
    t.u16(TPM_ECC_NIST_P256).u16(TPM_ALG_NULL); // curve, kdf
    t.tpm2b(x)?.tpm2b(y)?;
    Ok(t.0)
}

fn tpm2b_public(tpmt: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Out::default();
    out.tpm2b(tpmt)?;
    Ok(out.0)
}

/// A simulated device's TPM identity: a software AK, a software EK public
/// area (only its hash matters to the fleet side), and the TPM clock and
/// boot counters its quotes carry.
pub struct SoftTpm {
    ak: EcdsaKeyPair,
    ak_public: Vec<u8>,
    ak_name: Vec<u8>,
    ek_public: Vec<u8>,
    rng: SystemRandom,
    started: Instant,
    clock_base_ms: u64,
    reset_count: u32,
    restart_count: u32,
}

impl std::fmt::Debug for SoftTpm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoftTpm")
            .field("ak_name", &hex::encode(&self.ak_name))
            .finish_non_exhaustive()
    }
}

impl SoftTpm {
    pub fn generate() -> Result<SoftTpm, String> {
        let rng = SystemRandom::new();
        let pair = |what: &str| -> Result<EcdsaKeyPair, String> {
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .map_err(|_| format!("generate the {what}"))?;
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
                .map_err(|e| format!("load the {what}: {e}"))
        };
        let ak = pair("software AK")?;
        let ek = pair("software EK")?;
        let ak_tpmt = ecc_public(
            AK_ATTRIBUTES,
            &[TPM_ALG_NULL],
            &[TPM_ALG_ECDSA, TPM_ALG_SHA256],
            ak.public_key().as_ref(),
        )?;
        let ek_tpmt = ecc_public(
            EK_ATTRIBUTES,
            &[TPM_ALG_AES, 128, TPM_ALG_CFB],
            &[TPM_ALG_NULL],
            ek.public_key().as_ref(),
        )?;
        let mut ak_name = TPM_ALG_SHA256.to_be_bytes().to_vec();
        ak_name.extend_from_slice(&sha256(&[&ak_tpmt]));
        Ok(SoftTpm {
            ak_public: tpm2b_public(&ak_tpmt)?,
            ak_name,
            ek_public: tpm2b_public(&ek_tpmt)?,
            ak,
            rng,
            started: Instant::now(),
            clock_base_ms: 1_000_000,
            reset_count: 1,
            restart_count: 0,
        })
    }

    /// The AK's marshalled `TPM2B_PUBLIC`.
    pub fn ak_public(&self) -> &[u8] {
        &self.ak_public
    }

    /// The AK's TPM name (`0x000b || SHA-256(TPMT_PUBLIC)`).
    pub fn ak_name(&self) -> &[u8] {
        &self.ak_name
    }

    /// The EK's marshalled `TPM2B_PUBLIC`.
    pub fn ek_public(&self) -> &[u8] {
        &self.ek_public
    }

    pub fn ek_sha256(&self) -> [u8; 32] {
        sha256(&[&self.ek_public])
    }

    pub fn boot(&self) -> (u32, u32) {
        (self.reset_count, self.restart_count)
    }

    /// `TPM2_Quote` over `values` (the PCRs of `mask`, ascending) with
    /// `qualifying_data` as extraData: the raw `TPMS_ATTEST` and the
    /// marshalled `TPMT_SIGNATURE`.
    pub fn quote(
        &self,
        qualifying_data: &[u8],
        mask: u32,
        values: &[[u8; 32]],
    ) -> Result<(Vec<u8>, Vec<u8>), String> {
        let clock = self
            .clock_base_ms
            .saturating_add(u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX));
        let mut composite = ring::digest::Context::new(&ring::digest::SHA256);
        for value in values {
            composite.update(value);
        }
        let digest = composite.finish();
        let mut a = Out::default();
        a.u32(TPM_GENERATED_VALUE).u16(TPM_ST_ATTEST_QUOTE);
        a.tpm2b(&self.ak_name)?; // qualifiedSigner
        a.tpm2b(qualifying_data)?; // extraData
        a.u64(clock)
            .u32(self.reset_count)
            .u32(self.restart_count)
            .u8(1); // clockInfo, safe = YES
        a.u64(0x2023_0001); // firmwareVersion
        let select = mask.to_le_bytes();
        a.u32(1).u16(TPM_ALG_SHA256).u8(3); // one TPMS_PCR_SELECTION, 3 bytes
        for byte in select.iter().take(3) {
            a.u8(*byte);
        }
        a.tpm2b(digest.as_ref())?; // pcrDigest
        let attest = a.0;
        let sig = self
            .ak
            .sign(&self.rng, &attest)
            .map_err(|_| "software AK failed to sign".to_owned())?;
        let (r, s) = sig.as_ref().split_at(32);
        let mut t = Out::default();
        t.u16(TPM_ALG_ECDSA).u16(TPM_ALG_SHA256);
        t.tpm2b(r)?.tpm2b(s)?;
        Ok((attest, t.0))
    }
}

/// The values a bench device's PCRs 0, 7 and 14 hold: what the harness's
/// reference policy expects of a fresh swtpm with the measured file
/// extended ([`mctc_tests::fleet::reference_lines`]).
pub fn bench_pcr_values() -> [[u8; 32]; 3] {
    use mctc_tests::fleet::{MEASURED_CONTENT, extended, sha256};
    [[0; 32], [0; 32], extended(&[sha256(&[MEASURED_CONTENT])])]
}

/// The PCR mask of [`crate::limits::QUOTED_PCRS`].
pub fn bench_pcr_mask() -> u32 {
    crate::limits::QUOTED_PCRS
        .iter()
        .fold(0, |mask, pcr| mask | 1 << pcr)
}

/// Encoded shim `Evidence` for `nonce`: a quote over the bench PCRs.
pub fn evidence(tpm: &SoftTpm, device: &DeviceId, nonce: &[u8; 32]) -> Result<Vec<u8>, String> {
    let values = bench_pcr_values();
    let (attest, signature) = tpm.quote(nonce, bench_pcr_mask(), &values)?;
    let digests: Vec<Bytes<32>> = values.iter().copied().map(Bytes).collect();
    let message = Evidence {
        v: Version::default(),
        device: device.clone(),
        nonce: Bytes(*nonce),
        attest: Bstr(&attest),
        signature: Bstr(&signature),
        pcr_alg: TPM_ALG_SHA256,
        pcr_mask: bench_pcr_mask(),
        pcr_values: List::from_slice(&digests).ok_or("too many PCRs")?,
    };
    let mut buf = [0u8; MAX_EVIDENCE_LEN];
    message
        .encode(&mut buf)
        .map(<[u8]>::to_vec)
        .map_err(|e| format!("encode evidence: {e}"))
}
