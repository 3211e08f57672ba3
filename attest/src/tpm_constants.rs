//! TPM 2.0 constants (TPM 2.0 Library, Part 2: Structures) used by the
//! software decoders and encoders. Named here once so the parsers read like
//! the specification.

pub(crate) const TPM_GENERATED_VALUE: u32 = 0xff54_4347;
pub(crate) const TPM_ST_ATTEST_QUOTE: u16 = 0x8018;

pub(crate) const TPM_ALG_RSA: u16 = 0x0001;
pub(crate) const TPM_ALG_SHA1: u16 = 0x0004;
pub(crate) const TPM_ALG_AES: u16 = 0x0006;
pub(crate) const TPM_ALG_MGF1: u16 = 0x0007;
pub(crate) const TPM_ALG_SHA256: u16 = 0x000b;
pub(crate) const TPM_ALG_SHA384: u16 = 0x000c;
pub(crate) const TPM_ALG_SHA512: u16 = 0x000d;
pub(crate) const TPM_ALG_NULL: u16 = 0x0010;
pub(crate) const TPM_ALG_RSASSA: u16 = 0x0014;
pub(crate) const TPM_ALG_RSAES: u16 = 0x0015;
pub(crate) const TPM_ALG_RSAPSS: u16 = 0x0016;
pub(crate) const TPM_ALG_OAEP: u16 = 0x0017;
pub(crate) const TPM_ALG_ECDSA: u16 = 0x0018;
pub(crate) const TPM_ALG_ECDH: u16 = 0x0019;
pub(crate) const TPM_ALG_ECDAA: u16 = 0x001a;
pub(crate) const TPM_ALG_SM2: u16 = 0x001b;
pub(crate) const TPM_ALG_ECSCHNORR: u16 = 0x001c;
pub(crate) const TPM_ALG_ECMQV: u16 = 0x001d;
pub(crate) const TPM_ALG_KDF1_SP800_56A: u16 = 0x0020;
pub(crate) const TPM_ALG_KDF2: u16 = 0x0021;
pub(crate) const TPM_ALG_KDF1_SP800_108: u16 = 0x0022;
pub(crate) const TPM_ALG_ECC: u16 = 0x0023;
pub(crate) const TPM_ALG_CFB: u16 = 0x0043;

pub(crate) const TPM_ECC_NIST_P256: u16 = 0x0003;

// TPMA_OBJECT bits.
pub(crate) const TPMA_FIXED_TPM: u32 = 1 << 1;
pub(crate) const TPMA_FIXED_PARENT: u32 = 1 << 4;
pub(crate) const TPMA_SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
pub(crate) const TPMA_RESTRICTED: u32 = 1 << 16;
pub(crate) const TPMA_DECRYPT: u32 = 1 << 17;
pub(crate) const TPMA_SIGN_ENCRYPT: u32 = 1 << 18;

/// Largest `TPMU_HA` (SHA-512): bounds TPM2B_DIGEST, TPM2B_DATA.
pub(crate) const MAX_DIGEST: usize = 64;
/// Largest `TPMU_NAME`: a `TPMT_HA` (algorithm + SHA-512 digest).
pub(crate) const MAX_NAME: usize = 2 + MAX_DIGEST;
/// Banks in one `TPML_PCR_SELECTION` (`HASH_COUNT` upper bound).
pub(crate) const MAX_PCR_BANKS: u32 = 16;
/// `PCR_SELECT_MAX` octets (32 PCRs).
pub(crate) const MAX_PCR_SELECT: usize = 4;
/// Largest RSA modulus handled (4096 bits).
pub(crate) const MAX_RSA_BYTES: usize = 512;
/// Largest ECC coordinate handled (P-521).
pub(crate) const MAX_ECC_BYTES: usize = 66;
