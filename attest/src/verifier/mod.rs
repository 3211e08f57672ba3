//! The software verifier of TPM evidence: pure Rust and ring, no TPM and no
//! tss-esapi types, so the authority and the collector can use it anywhere.
//!
//! - [`AkPublic`] / [`EkPublic`]: checked decoding of `TPM2B_PUBLIC`.
//! - [`make_credential`]: TPM2_MakeCredential for the enrollment challenge.
//! - [`verify_quote`]: every check on a TPM2_Quote, and a typed verdict.
//! - [`EkPolicy`]: EK certificate validation or an EK allow-list.
//! - [`ReferenceValues`]: which PCR values a device class may show.

mod attest;
mod credential;
mod ek_cert;
mod public_key;
mod quote;
mod reference;

pub use attest::{Attest, QuoteInfo, RawPcrSelection, Signature};
pub use credential::{Credential, CredentialError, MAX_CREDENTIAL_SECRET, make_credential};
pub use ek_cert::{EkCaBundle, EkCertError, EkPolicy, EkTrust, verify_ek_certificate};
pub use public_key::{AkKind, AkPublic, EkKind, EkPublic, PublicKeyError, public_key_fingerprint};
pub use quote::{
    Continuity, QuoteError, QuoteExpectation, SignedQuote, VerifiedQuote, verify_quote,
    verify_signed_quote,
};
pub use reference::{PcrMismatch, ReferenceError, ReferenceValues};
