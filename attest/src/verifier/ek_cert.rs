//! Is this EK a genuine TPM's? Either its certificate chains to a configured
//! manufacturer CA, or its public key's fingerprint is on an allow-list (for
//! TPMs without EK certificates, e.g. simulators and some firmware TPMs).
//!
//! EK certificates are not web-PKI certificates (empty subject, a critical
//! subjectAltName holding TPM manufacturer attributes, TCG key purposes), so
//! they are checked here directly: decoded with x509-parser, signatures
//! verified with ring, chain walked through the configured bundle to a
//! self-signed root.

use std::collections::HashSet;

use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use x509_parser::certificate::X509Certificate;
use x509_parser::oid_registry::{
    OID_KEY_TYPE_EC_PUBLIC_KEY, OID_PKCS1_RSAENCRYPTION, OID_PKCS1_SHA256WITHRSA,
    OID_PKCS1_SHA384WITHRSA, OID_PKCS1_SHA512WITHRSA, OID_SIG_ECDSA_WITH_SHA256,
    OID_SIG_ECDSA_WITH_SHA384,
};
use x509_parser::pem::Pem;
use x509_parser::prelude::{ASN1Time, FromDer};
use x509_parser::public_key::PublicKey;

use crate::verifier::public_key::{EkKey, EkPublic};

/// Longest chain walked above the EK certificate (intermediates + root).
const MAX_CHAIN: usize = 6;

/// Critical extensions this validator understands well enough to accept.
/// Any other critical extension makes the certificate unusable (RFC 5280).
const KNOWN_CRITICAL: &[&str] = &[
    "2.5.29.9",  // subjectDirectoryAttributes (TPM specification attributes)
    "2.5.29.14", // subjectKeyIdentifier
    "2.5.29.15", // keyUsage
    "2.5.29.17", // subjectAltName (TPM manufacturer, model, version)
    "2.5.29.19", // basicConstraints
    "2.5.29.32", // certificatePolicies
    "2.5.29.35", // authorityKeyIdentifier
    "2.5.29.37", // extKeyUsage (tcg-kp-EKCertificate)
];

/// Why an EK was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EkCertError {
    /// The CA bundle is unusable.
    #[error("EK CA bundle: {0}")]
    BadBundle(String),
    /// The EK certificate (or a CA certificate) does not decode.
    #[error("certificate does not decode: {0}")]
    Malformed(String),
    /// The certificate certifies a different key than the EK presented.
    #[error("the EK certificate is for a different key")]
    KeyMismatch,
    /// No certificate in the bundle issued this one.
    #[error("no CA in the bundle issued the certificate for {subject} (issuer {issuer})")]
    UnknownIssuer {
        /// Subject of the certificate whose issuer is missing.
        subject: String,
        /// The issuer it names.
        issuer: String,
    },
    /// A signature in the chain does not verify.
    #[error("signature on the certificate for {subject} does not verify")]
    BadSignature {
        /// Subject of the certificate.
        subject: String,
    },
    /// A signature algorithm or key type this validator does not support.
    #[error("unsupported algorithm in the certificate for {subject}: {what}")]
    UnsupportedAlgorithm {
        /// Subject of the certificate.
        subject: String,
        /// The algorithm.
        what: String,
    },
    /// A certificate in the chain is outside its validity period.
    #[error("certificate for {subject} is not valid at the verification time")]
    NotValidNow {
        /// Subject of the certificate.
        subject: String,
    },
    /// An issuing certificate is not a CA allowed to sign certificates.
    #[error("certificate for {subject} is not a CA")]
    NotACa {
        /// Subject of the certificate.
        subject: String,
    },
    /// A critical extension this validator does not understand.
    #[error("unhandled critical extension {oid} in the certificate for {subject}")]
    UnhandledCriticalExtension {
        /// Subject of the certificate.
        subject: String,
        /// The extension's OID.
        oid: String,
    },
    /// The chain does not reach a self-signed root within the bundle.
    #[error("certificate chain longer than {MAX_CHAIN} without a self-signed root")]
    ChainTooLong,
    /// No certificate and the EK is not allow-listed.
    #[error("EK has no certificate and its fingerprint is not allow-listed")]
    NotAllowListed,
    /// A certificate was presented but no CA bundle is configured.
    #[error("EK has a certificate but no EK CA bundle is configured, and it is not allow-listed")]
    NoCaConfigured,
}

/// Trusted EK-issuing CAs (roots and intermediates), DER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EkCaBundle {
    certs: Vec<Vec<u8>>,
}

impl EkCaBundle {
    /// Reads every `CERTIFICATE` block of a PEM bundle; each must decode and
    /// there must be at least one.
    pub fn from_pem(pem: &[u8]) -> Result<EkCaBundle, EkCertError> {
        let mut certs = Vec::new();
        for block in Pem::iter_from_buffer(pem) {
            let block = block.map_err(|e| EkCertError::BadBundle(e.to_string()))?;
            if block.label != "CERTIFICATE" {
                continue;
            }
            X509Certificate::from_der(&block.contents)
                .map_err(|e| EkCertError::BadBundle(e.to_string()))?;
            certs.push(block.contents);
        }
        if certs.is_empty() {
            return Err(EkCertError::BadBundle("no CERTIFICATE block".into()));
        }
        Ok(EkCaBundle { certs })
    }

    /// Number of certificates.
    pub fn len(&self) -> usize {
        self.certs.len()
    }

    /// Whether the bundle is empty (never, once built).
    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }

    fn parsed(&self) -> Vec<X509Certificate<'_>> {
        self.certs
            .iter()
            .filter_map(|der| X509Certificate::from_der(der).ok().map(|(_, c)| c))
            .collect()
    }
}

/// How an EK came to be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EkTrust {
    /// Its certificate chains to the configured CA bundle.
    Certified,
    /// Its fingerprint is on the operator's allow-list.
    AllowListed,
}

/// The fleet's EK acceptance policy.
#[derive(Debug, Clone, Default)]
pub struct EkPolicy {
    ca_bundle: Option<EkCaBundle>,
    allow_list: HashSet<[u8; 32]>,
}

impl EkPolicy {
    /// A policy from an optional CA bundle and allow-listed EK fingerprints
    /// (SHA-256 of the marshalled `TPM2B_PUBLIC`). The empty policy accepts
    /// nothing.
    pub fn new(
        ca_bundle: Option<EkCaBundle>,
        allow_list: impl IntoIterator<Item = [u8; 32]>,
    ) -> EkPolicy {
        EkPolicy {
            ca_bundle,
            allow_list: allow_list.into_iter().collect(),
        }
    }

    /// Decides whether `ek` belongs to a genuine TPM. An allow-listed EK is
    /// accepted as the operator's explicit decision; otherwise its
    /// certificate must validate against the bundle at `now_unix` (seconds).
    pub fn check(
        &self,
        ek: &EkPublic,
        certificate: Option<&[u8]>,
        now_unix: i64,
    ) -> Result<EkTrust, EkCertError> {
        if self.allow_list.contains(&ek.fingerprint()) {
            return Ok(EkTrust::AllowListed);
        }
        match (certificate, &self.ca_bundle) {
            (None, _) => Err(EkCertError::NotAllowListed),
            (Some(_), None) => Err(EkCertError::NoCaConfigured),
            (Some(der), Some(bundle)) => {
                verify_ek_certificate(der, ek, bundle, now_unix).map(|()| EkTrust::Certified)
            }
        }
    }
}

/// Checks that `cert_der` certifies `ek` and chains through `bundle` to a
/// self-signed root, every certificate valid at `now_unix`.
pub fn verify_ek_certificate(
    cert_der: &[u8],
    ek: &EkPublic,
    bundle: &EkCaBundle,
    now_unix: i64,
) -> Result<(), EkCertError> {
    let now = ASN1Time::from_timestamp(now_unix)
        .map_err(|e| EkCertError::Malformed(format!("verification time: {e}")))?;
    let (rest, leaf) =
        X509Certificate::from_der(cert_der).map_err(|e| EkCertError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(EkCertError::Malformed("trailing bytes".into()));
    }
    check_common(&leaf, now)?;
    if !certifies(&leaf, ek) {
        return Err(EkCertError::KeyMismatch);
    }

    let cas = bundle.parsed();
    let mut child = leaf;
    for _ in 0..MAX_CHAIN {
        let issuer = cas
            .iter()
            .filter(|ca| ca.subject().as_raw() == child.issuer().as_raw())
            .find(|ca| verify_signed_by(&child, ca).is_ok());
        let Some(issuer) = issuer else {
            // Report a bad signature if a CA of that name exists, else unknown.
            if let Some(named) = cas
                .iter()
                .find(|ca| ca.subject().as_raw() == child.issuer().as_raw())
            {
                return Err(verify_signed_by(&child, named).err().unwrap_or(
                    EkCertError::BadSignature {
                        subject: subject_of(&child),
                    },
                ));
            }
            return Err(EkCertError::UnknownIssuer {
                subject: subject_of(&child),
                issuer: child.issuer().to_string(),
            });
        };
        check_common(issuer, now)?;
        if !is_signing_ca(issuer) {
            return Err(EkCertError::NotACa {
                subject: subject_of(issuer),
            });
        }
        if issuer.subject().as_raw() == issuer.issuer().as_raw() {
            verify_signed_by(issuer, issuer)?;
            return Ok(());
        }
        child = issuer.clone();
    }
    Err(EkCertError::ChainTooLong)
}

fn subject_of(cert: &X509Certificate<'_>) -> String {
    let s = cert.subject().to_string();
    if s.is_empty() {
        // EK certificates usually have an empty subject (the TPM is named in
        // the subjectAltName); the serial number identifies it.
        format!("serial {}", cert.raw_serial_as_string())
    } else {
        s
    }
}

/// Validity period and critical extensions.
fn check_common(cert: &X509Certificate<'_>, now: ASN1Time) -> Result<(), EkCertError> {
    if !cert.validity().is_valid_at(now) {
        return Err(EkCertError::NotValidNow {
            subject: subject_of(cert),
        });
    }
    for ext in cert.extensions() {
        let oid = ext.oid.to_id_string();
        if ext.critical && !KNOWN_CRITICAL.contains(&oid.as_str()) {
            return Err(EkCertError::UnhandledCriticalExtension {
                subject: subject_of(cert),
                oid,
            });
        }
    }
    if cert.signature_algorithm.algorithm != cert.tbs_certificate.signature.algorithm {
        return Err(EkCertError::Malformed(
            "outer and inner signature algorithms differ".into(),
        ));
    }
    Ok(())
}

/// basicConstraints cA = TRUE, and keyCertSign if keyUsage is present.
fn is_signing_ca(cert: &X509Certificate<'_>) -> bool {
    let ca = matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
    let may_sign = match cert.key_usage() {
        Ok(Some(ku)) => ku.value.key_cert_sign(),
        Ok(None) => true,
        Err(_) => false,
    };
    ca && may_sign
}

/// Whether the certificate's subject public key is the EK's.
fn certifies(cert: &X509Certificate<'_>, ek: &EkPublic) -> bool {
    let spki = cert.public_key();
    match (&ek.key, spki.parsed()) {
        (EkKey::Rsa2048 { modulus, exponent }, Ok(PublicKey::RSA(rsa))) => {
            spki.algorithm.algorithm == OID_PKCS1_RSAENCRYPTION
                && strip_zeros(rsa.modulus) == strip_zeros(modulus)
                && strip_zeros(rsa.exponent) == strip_zeros(&exponent.to_be_bytes())
        }
        (EkKey::EccP256 { x, y }, Ok(PublicKey::EC(point))) => {
            let data = point.data();
            spki.algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY
                && data.len() == 65
                && data.first() == Some(&0x04)
                && data.get(1..33) == Some(x.as_slice())
                && data.get(33..65) == Some(y.as_slice())
        }
        _ => false,
    }
}

fn strip_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    bytes.get(first..).unwrap_or_default()
}

/// Verifies `child`'s signature with `issuer`'s public key.
fn verify_signed_by(
    child: &X509Certificate<'_>,
    issuer: &X509Certificate<'_>,
) -> Result<(), EkCertError> {
    let sig_alg = &child.signature_algorithm.algorithm;
    let spki = issuer.public_key();
    let key = spki.subject_public_key.data.as_ref();
    let unsupported = |what: String| EkCertError::UnsupportedAlgorithm {
        subject: subject_of(child),
        what,
    };
    let algorithm: &'static dyn VerificationAlgorithm =
        if spki.algorithm.algorithm == OID_PKCS1_RSAENCRYPTION {
            if *sig_alg == OID_PKCS1_SHA256WITHRSA {
                &signature::RSA_PKCS1_2048_8192_SHA256
            } else if *sig_alg == OID_PKCS1_SHA384WITHRSA {
                &signature::RSA_PKCS1_2048_8192_SHA384
            } else if *sig_alg == OID_PKCS1_SHA512WITHRSA {
                &signature::RSA_PKCS1_2048_8192_SHA512
            } else {
                return Err(unsupported(format!("RSA signature {sig_alg}")));
            }
        } else if spki.algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
            // The uncompressed point's length names the curve.
            match (key.len(), sig_alg) {
                (65, a) if *a == OID_SIG_ECDSA_WITH_SHA256 => &signature::ECDSA_P256_SHA256_ASN1,
                (65, a) if *a == OID_SIG_ECDSA_WITH_SHA384 => &signature::ECDSA_P256_SHA384_ASN1,
                (97, a) if *a == OID_SIG_ECDSA_WITH_SHA256 => &signature::ECDSA_P384_SHA256_ASN1,
                (97, a) if *a == OID_SIG_ECDSA_WITH_SHA384 => &signature::ECDSA_P384_SHA384_ASN1,
                _ => return Err(unsupported(format!("ECDSA signature {sig_alg}"))),
            }
        } else {
            return Err(unsupported(format!(
                "issuer key type {}",
                spki.algorithm.algorithm
            )));
        };
    UnparsedPublicKey::new(algorithm, key)
        .verify(
            child.tbs_certificate.as_ref(),
            child.signature_value.data.as_ref(),
        )
        .map_err(|_| EkCertError::BadSignature {
            subject: subject_of(child),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundle_needs_certificates() {
        assert!(matches!(
            EkCaBundle::from_pem(b"nothing here"),
            Err(EkCertError::BadBundle(_))
        ));
        let garbage = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            EkCaBundle::from_pem(garbage),
            Err(EkCertError::BadBundle(_))
        ));
    }

    #[test]
    fn strip_zeros_keeps_significant_bytes() {
        assert_eq!(strip_zeros(&[0, 0, 1, 0]), &[1, 0]);
        assert_eq!(strip_zeros(&[0, 0]), &[] as &[u8]);
    }
}
