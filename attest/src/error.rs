//! The crate's error type: one enum, typed sub-errors, and the class of
//! action a caller (the agent, the authority) takes on each.

use std::fmt;
use std::path::PathBuf;

use crate::pcr::PcrError;
use crate::verifier::{CredentialError, EkCertError, PublicKeyError, QuoteError, ReferenceError};
use crate::wire::ParseError;

/// What the caller should do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// Transient: the same call may succeed later (TPM busy or self-testing,
    /// simulator restarting, PCRs moving during a quote, a full disk).
    Retry,
    /// The evidence or challenge is stale or does not verify: start a fresh
    /// attestation round (new nonce, new credential challenge).
    Reattest,
    /// Configuration, policy or hardware: retrying will not help.
    Fatal,
}

/// The TPM operation that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TpmOp {
    /// Opening the TCTI / ESAPI context.
    Connect,
    /// TPM2_GetCapability.
    GetCapability,
    /// TPM2_FlushContext.
    FlushContext,
    /// TPM2_CreatePrimary of the endorsement key.
    CreateEk,
    /// TPM2_ReadPublic.
    ReadPublic,
    /// TPM2_NV_ReadPublic / TPM2_NV_Read (EK certificate).
    NvRead,
    /// TPM2_StartAuthSession and the EK's policy (PolicySecret).
    EkPolicySession,
    /// TPM2_Create of the attestation key.
    CreateAk,
    /// TPM2_Load of the attestation key.
    LoadAk,
    /// TPM2_ActivateCredential.
    ActivateCredential,
    /// TPM2_Quote.
    Quote,
    /// TPM2_PCR_Read.
    PcrRead,
    /// TPM2_PCR_Extend.
    PcrExtend,
    /// Encoding a TPM structure returned by the TPM.
    Marshal,
}

impl fmt::Display for TpmOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TpmOp::Connect => "connect",
            TpmOp::GetCapability => "TPM2_GetCapability",
            TpmOp::FlushContext => "TPM2_FlushContext",
            TpmOp::CreateEk => "TPM2_CreatePrimary(EK)",
            TpmOp::ReadPublic => "TPM2_ReadPublic",
            TpmOp::NvRead => "TPM2_NV_Read(EK certificate)",
            TpmOp::EkPolicySession => "EK policy session",
            TpmOp::CreateAk => "TPM2_Create(AK)",
            TpmOp::LoadAk => "TPM2_Load(AK)",
            TpmOp::ActivateCredential => "TPM2_ActivateCredential",
            TpmOp::Quote => "TPM2_Quote",
            TpmOp::PcrRead => "TPM2_PCR_Read",
            TpmOp::PcrExtend => "TPM2_PCR_Extend",
            TpmOp::Marshal => "marshal",
        })
    }
}

/// The TSS's answer: a TSS2_RC (layer in bits 16..24) or a tss-esapi wrapper
/// error (bad parameter caught before the TPM saw it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TssCode {
    /// A `TSS2_RC`.
    Rc(u32),
    /// A wrapper-level error, described.
    Wrapper(String),
}

impl fmt::Display for TssCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TssCode::Rc(rc) => write!(f, "TSS2_RC {rc:#010x} ({})", layer_name(*rc)),
            TssCode::Wrapper(what) => write!(f, "tss-esapi: {what}"),
        }
    }
}

const LAYER_TPM: u32 = 0;
const LAYER_TCTI: u32 = 10;
const LAYER_RESMGR: u32 = 11;
const LAYER_RESMGR_TPM: u32 = 12;

fn layer(rc: u32) -> u32 {
    (rc >> 16) & 0xff
}

fn layer_name(rc: u32) -> &'static str {
    match layer(rc) {
        LAYER_TPM => "TPM",
        6 => "FAPI",
        7 => "ESAPI",
        8 => "SAPI",
        9 => "MU",
        LAYER_TCTI => "TCTI",
        LAYER_RESMGR => "resource manager",
        LAYER_RESMGR_TPM => "resource manager (TPM)",
        _ => "unknown layer",
    }
}

/// A TPM operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{op} failed: {code}")]
pub struct TpmError {
    /// Which operation.
    pub op: TpmOp,
    /// The TSS return code.
    pub code: TssCode,
}

impl TpmError {
    /// The raw `TSS2_RC`, if the TSS produced one.
    pub fn rc(&self) -> Option<u32> {
        match self.code {
            TssCode::Rc(rc) => Some(rc),
            TssCode::Wrapper(_) => None,
        }
    }

    /// True when the TPM never answered (TCTI or TSS-internal failure): the
    /// connection must be rebuilt.
    pub fn is_transport(&self) -> bool {
        matches!(self.code, TssCode::Rc(rc) if !matches!(layer(rc), LAYER_TPM | LAYER_RESMGR_TPM))
    }

    /// True when the TPM says a handle or object is not loaded: keys must be
    /// reloaded (the TPM was reset or restarted, or something flushed them).
    pub fn is_stale_handle(&self) -> bool {
        match self.code {
            TssCode::Rc(rc) if matches!(layer(rc), LAYER_TPM | LAYER_RESMGR_TPM) => {
                let code = rc & 0xffff;
                let format_one = code & 0x80 != 0;
                // TPM_RC_HANDLE (format one) or TPM_RC_REFERENCE_H0..S6.
                (format_one && code & 0x3f == 0x0b) || (0x910..=0x91e).contains(&code)
            }
            _ => false,
        }
    }

    /// What the caller should do.
    pub fn class(&self) -> ErrorClass {
        let rc = match self.code {
            TssCode::Wrapper(_) => return ErrorClass::Fatal,
            TssCode::Rc(rc) => rc,
        };
        if self.is_transport() || self.is_stale_handle() {
            return ErrorClass::Retry;
        }
        let code = rc & 0xffff;
        if code & 0x80 != 0 {
            // Format one: a parameter, handle or session was refused. For
            // ActivateCredential that means the challenge is not for this
            // EK/AK pair (TPM_RC_INTEGRITY, TPM_RC_VALUE, ...).
            return if self.op == TpmOp::ActivateCredential {
                ErrorClass::Reattest
            } else {
                ErrorClass::Fatal
            };
        }
        match code {
            0x100 => ErrorClass::Retry, // TPM_RC_INITIALIZE: not started yet
            0x907 => ErrorClass::Fatal, // TPM_RC_LOCALITY
            // Warnings: RETRY, YIELDED, TESTING, CANCELED, NV_RATE,
            // NV_UNAVAILABLE, LOCKOUT, out of memory/handles/sessions.
            c if c & 0x900 == 0x900 => ErrorClass::Retry,
            _ => ErrorClass::Fatal,
        }
    }
}

/// A problem with the saved attestation key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AkBlobProblem {
    /// The file does not decode or its checksum is wrong.
    Corrupt,
    /// The key was made under another endorsement key (another TPM, or the
    /// TPM's endorsement seed changed): re-provision.
    OtherEk,
    /// The key was made for another EK or AK kind than configured.
    OtherKind,
}

impl fmt::Display for AkBlobProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AkBlobProblem::Corrupt => "corrupt",
            AkBlobProblem::OtherEk => "made under another endorsement key",
            AkBlobProblem::OtherKind => "made for another key kind than configured",
        })
    }
}

/// Every error of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A TPM operation failed.
    #[error(transparent)]
    Tpm(#[from] TpmError),
    /// The TPM is a software simulator and the configuration does not allow it.
    #[error(
        "the TPM is a software simulator (manufacturer {manufacturer:?}, vendor {vendor:?}); refused because allow_software_tpm is false"
    )]
    SimulatorRefused {
        /// TPM_PT_MANUFACTURER.
        manufacturer: String,
        /// TPM_PT_VENDOR_STRING_1..4.
        vendor: String,
    },
    /// The configuration cannot work (bad TCTI string, unavailable PCR bank).
    #[error("configuration: {0}")]
    Config(String),
    /// A caller passed an argument the TPM cannot take.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// No attestation key exists yet (call `identity()` to create one).
    #[error("no attestation key has been provisioned")]
    NotProvisioned,
    /// The saved attestation key cannot be used.
    #[error("attestation key file {path}: {problem}")]
    AkBlob {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: AkBlobProblem,
    },
    /// Reading or writing the state directory failed.
    #[error("{what} {path}: {source}")]
    State {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// PCRs kept changing between the read and the quote.
    #[error("PCRs changed during the quote {attempts} times in a row")]
    PcrsUnstable {
        /// Attempts made.
        attempts: u32,
    },
    /// The TPM answered with something that does not decode.
    #[error("the TPM returned a malformed structure: {0}")]
    TpmOutput(ParseError),
    /// The TPM worker thread has stopped (shut down, or it could not start).
    #[error("the TPM worker has stopped")]
    WorkerStopped,
    /// A PCR selection or value set is malformed.
    #[error(transparent)]
    Pcr(#[from] PcrError),
    /// A public key was refused.
    #[error(transparent)]
    PublicKey(#[from] PublicKeyError),
    /// A quote was refused.
    #[error(transparent)]
    Quote(#[from] QuoteError),
    /// A credential could not be made.
    #[error(transparent)]
    Credential(#[from] CredentialError),
    /// An EK was not accepted.
    #[error(transparent)]
    EkCert(#[from] EkCertError),
    /// Reference values are unusable.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
}

impl Error {
    /// What the caller should do.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Tpm(e) => e.class(),
            Error::State { .. } | Error::PcrsUnstable { .. } => ErrorClass::Retry,
            Error::NotProvisioned
            | Error::PublicKey(_)
            | Error::Quote(_)
            | Error::Credential(_) => ErrorClass::Reattest,
            Error::SimulatorRefused { .. }
            | Error::Config(_)
            | Error::InvalidArgument(_)
            | Error::AkBlob { .. }
            | Error::TpmOutput(_)
            | Error::WorkerStopped
            | Error::Pcr(_)
            | Error::EkCert(_)
            | Error::Reference(_) => ErrorClass::Fatal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tpm(op: TpmOp, rc: u32) -> TpmError {
        TpmError {
            op,
            code: TssCode::Rc(rc),
        }
    }

    #[test]
    fn classes_follow_the_response_code() {
        // TCTI I/O error: the simulator is gone.
        assert_eq!(tpm(TpmOp::Quote, 0x000a_000a).class(), ErrorClass::Retry);
        assert!(tpm(TpmOp::Quote, 0x000a_000a).is_transport());
        // TPM_RC_OBJECT_MEMORY, TPM_RC_RETRY, TPM_RC_TESTING.
        for rc in [0x902, 0x922, 0x90a] {
            assert_eq!(tpm(TpmOp::Quote, rc).class(), ErrorClass::Retry);
        }
        // TPM_RC_HANDLE on handle 1; TPM_RC_REFERENCE_H0.
        assert!(tpm(TpmOp::Quote, 0x18b).is_stale_handle());
        assert!(tpm(TpmOp::Quote, 0x910).is_stale_handle());
        // TPM_RC_INTEGRITY in ActivateCredential: the challenge is wrong.
        assert_eq!(
            tpm(TpmOp::ActivateCredential, 0x1df).class(),
            ErrorClass::Reattest
        );
        // TPM_RC_SCHEME in a quote: our bug or config, not transient.
        assert_eq!(tpm(TpmOp::Quote, 0x2d2).class(), ErrorClass::Fatal);
        // TPM_RC_FAILURE: failure mode.
        assert_eq!(tpm(TpmOp::Quote, 0x101).class(), ErrorClass::Fatal);
        assert_eq!(
            TpmError {
                op: TpmOp::Quote,
                code: TssCode::Wrapper("x".into())
            }
            .class(),
            ErrorClass::Fatal
        );
    }

    #[test]
    fn display_names_operation_and_code() {
        let text = tpm(TpmOp::PcrRead, 0x000a_000a).to_string();
        assert!(text.contains("TPM2_PCR_Read"), "{text}");
        assert!(text.contains("0x000a000a"), "{text}");
        assert!(text.contains("TCTI"), "{text}");
    }
}
