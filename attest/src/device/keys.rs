//! Key templates and the TPM commands around keys: the EK from the TCG
//! template, the AK template, the EK's policy session, marshalling, and the
//! translation of tss-esapi errors into ours.

use tss_esapi::Context;
use tss_esapi::abstraction::ek::create_ek_object_2;
use tss_esapi::abstraction::{AsymmetricAlgorithmSelection, DefaultKey};
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::constants::{SessionType, Tss2ResponseCode};
use tss_esapi::handles::{AuthHandle, KeyHandle, SessionHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    EccPoint, EccScheme, HashScheme, KeyDerivationFunctionScheme, Public, PublicBuffer,
    PublicBuilder, PublicEccParametersBuilder, PublicKeyRsa, PublicRsaParametersBuilder,
    RsaExponent, RsaScheme, SymmetricDefinition, SymmetricDefinitionObject,
};
use tss_esapi::traits::{Marshall, UnMarshall};

use crate::error::{Error, TpmError, TpmOp, TssCode};
use crate::pcr::HashAlg;
use crate::verifier::{AkKind, EkKind};

/// Converts a tss-esapi error into ours, naming the operation.
pub(crate) fn tss(op: TpmOp) -> impl Fn(tss_esapi::Error) -> Error {
    move |e| Error::Tpm(tpm_error(op, e))
}

pub(crate) fn tpm_error(op: TpmOp, e: tss_esapi::Error) -> TpmError {
    let code = match e {
        tss_esapi::Error::Tss2Error(rc) => TssCode::Rc(match rc {
            Tss2ResponseCode::Success => 0,
            Tss2ResponseCode::FormatZero(c) => c.0,
            Tss2ResponseCode::FormatOne(c) => c.0,
        }),
        tss_esapi::Error::WrapperError(kind) => TssCode::Wrapper(kind.to_string()),
    };
    TpmError { op, code }
}

pub(crate) fn hashing_algorithm(alg: HashAlg) -> HashingAlgorithm {
    match alg {
        HashAlg::Sha1 => HashingAlgorithm::Sha1,
        HashAlg::Sha256 => HashingAlgorithm::Sha256,
        HashAlg::Sha384 => HashingAlgorithm::Sha384,
        HashAlg::Sha512 => HashingAlgorithm::Sha512,
    }
}

/// TPM2_CreatePrimary in the endorsement hierarchy with the TCG EK
/// Credential Profile's low-range template (L-1 RSA-2048, L-2 ECC P-256):
/// the same template the manufacturer used, so the key is the certified one.
pub(crate) fn create_ek(ctx: &mut Context, kind: EkKind) -> Result<KeyHandle, Error> {
    let selection = match kind {
        EkKind::EccP256 => AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP256),
        EkKind::Rsa2048 => AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048),
    };
    create_ek_object_2(ctx, selection, DefaultKey).map_err(tss(TpmOp::CreateEk))
}

/// The AK template: a restricted signing key (it only signs structures the
/// TPM itself produced), bound to this TPM (fixedTPM, fixedParent,
/// sensitiveDataOrigin). Empty auth, so noDA keeps failed uses from counting
/// towards dictionary-attack lockout. stClear makes saved contexts invalid
/// after any Startup(CLEAR), so even a resource manager's cached copy of the
/// AK disappears on a TPM Reset or Restart, which `boot_counters` relies on.
pub fn ak_template(kind: AkKind) -> Result<Public, Error> {
    let template = |e| Error::Tpm(tpm_error(TpmOp::CreateAk, e));
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .with_st_clear(true)
        .with_restricted(true)
        .with_sign_encrypt(true)
        .with_decrypt(false)
        .build()
        .map_err(template)?;
    let builder = PublicBuilder::new()
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes);
    let builder = match kind {
        AkKind::EccP256 => builder
            .with_public_algorithm(PublicAlgorithm::Ecc)
            .with_ecc_parameters(
                PublicEccParametersBuilder::new()
                    .with_symmetric(SymmetricDefinitionObject::Null)
                    .with_ecc_scheme(EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)))
                    .with_curve(EccCurve::NistP256)
                    .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
                    .with_is_signing_key(true)
                    .with_is_decryption_key(false)
                    .with_restricted(true)
                    .build()
                    .map_err(template)?,
            )
            .with_ecc_unique_identifier(EccPoint::default()),
        AkKind::Rsa2048 => builder
            .with_public_algorithm(PublicAlgorithm::Rsa)
            .with_rsa_parameters(
                PublicRsaParametersBuilder::new()
                    .with_symmetric(SymmetricDefinitionObject::Null)
                    .with_scheme(RsaScheme::RsaSsa(HashScheme::new(HashingAlgorithm::Sha256)))
                    .with_key_bits(RsaKeyBits::Rsa2048)
                    .with_exponent(RsaExponent::default())
                    .with_is_signing_key(true)
                    .with_is_decryption_key(false)
                    .with_restricted(true)
                    .build()
                    .map_err(template)?,
            )
            .with_rsa_unique_identifier(PublicKeyRsa::default()),
    };
    builder.build().map_err(template)
}

/// Runs `f` with a policy session that satisfies the EK's authPolicy
/// (PolicySecret(TPM_RH_ENDORSEMENT), the low-range templates' policy A),
/// then flushes the session whatever `f` returned.
pub(crate) fn with_ek_policy<T>(
    ctx: &mut Context,
    f: impl FnOnce(&mut Context, AuthSession) -> Result<T, Error>,
) -> Result<T, Error> {
    let op = tss(TpmOp::EkPolicySession);
    let session = ctx
        .start_auth_session(
            None,
            None,
            None,
            SessionType::Policy,
            SymmetricDefinition::Null,
            HashingAlgorithm::Sha256,
        )
        .map_err(&op)?
        .ok_or(Error::Tpm(TpmError {
            op: TpmOp::EkPolicySession,
            code: TssCode::Wrapper("no session returned".into()),
        }))?;
    let result = PolicySession::try_from(session)
        .and_then(|policy| {
            ctx.execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.policy_secret(
                    policy,
                    AuthHandle::Endorsement,
                    Default::default(),
                    Default::default(),
                    Default::default(),
                    None,
                )
            })
        })
        .map_err(&op)
        .and_then(|_| f(ctx, session));
    let flushed = ctx.flush_context(SessionHandle::from(session).into());
    match (result, flushed) {
        (Ok(value), Ok(())) => Ok(value),
        (Ok(_), Err(e)) => Err(tss(TpmOp::FlushContext)(e)),
        (Err(e), _) => Err(e),
    }
}

/// A `Public` as a marshalled `TPM2B_PUBLIC`.
pub(crate) fn marshal_public(public: Public) -> Result<Vec<u8>, Error> {
    PublicBuffer::try_from(public)
        .and_then(|buffer| buffer.marshall())
        .map_err(tss(TpmOp::Marshal))
}

/// A marshalled `TPM2B_PUBLIC` as a `Public`.
pub(crate) fn unmarshal_public(bytes: &[u8]) -> Result<Public, Error> {
    PublicBuffer::unmarshall(bytes)
        .and_then(Public::try_from)
        .map_err(tss(TpmOp::Marshal))
}
