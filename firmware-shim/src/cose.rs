//! COSE_Sign1 (RFC 9052) envelopes for everything the authority signs.
//!
//! ```text
//! COSE_Sign1 = #6.18([ protected: bstr .cbor {1: -8, 3: content-type, 4: kid},
//!                      unprotected: {},
//!                      payload: bstr,          ; the message's canonical CBOR
//!                      signature: bstr .size 64 ])
//! ```
//!
//! The content type in the protected header names the message kind, and it
//! is covered by the signature: a validly signed heartbeat presented as an
//! artifact (or any other pair) is rejected with
//! [`EnvelopeError::WrongContentType`]. The key id is the first 8 bytes of
//! `tagged_hash("mctc/v1/key-id", public_key)`, so an authority can rotate
//! keys while devices trust both for a while.

use crate::codec;
use crate::crypto::{Crypto, DOMAIN_KEY_ID, Signer, tagged_hash};
use crate::error::{EnvelopeError, Error, MessageKind};
use crate::limits::MAX_SIGNED_LEN;
use crate::wire::{self, Bstr, Bytes, EmptyMap, Message, Text, wire_map, wire_message};

/// COSE algorithm id of EdDSA (RFC 9053); the only one accepted.
pub const ALG_EDDSA: i64 = -8;
/// CBOR tag of COSE_Sign1.
pub const COSE_SIGN1_TAG: u8 = 18;
/// Length of a key id.
pub const KID_LEN: usize = 8;
/// Longest content type string.
pub const MAX_CONTENT_TYPE_LEN: usize = 64;

/// The content type (COSE header 3) of each signed kind; `None` for kinds
/// that are never signed.
pub const fn content_type(kind: MessageKind) -> Option<&'static str> {
    match kind {
        MessageKind::Artifact => Some("application/vnd.mctc.artifact+cbor"),
        MessageKind::Refusal => Some("application/vnd.mctc.refusal+cbor"),
        MessageKind::Heartbeat => Some("application/vnd.mctc.heartbeat+cbor"),
        MessageKind::Control => Some("application/vnd.mctc.control+cbor"),
        MessageKind::RegistryRecord => Some("application/vnd.mctc.registry+cbor"),
        MessageKind::EnrollResult => Some("application/vnd.mctc.enroll-result+cbor"),
        MessageKind::Receipt => Some("application/vnd.mctc.receipt+cbor"),
        _ => None,
    }
}

/// An authority public key a device or collector trusts, with its key id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthorityKey {
    public: [u8; 32],
    kid: [u8; KID_LEN],
}

impl AuthorityKey {
    /// Trusts the Ed25519 public key `public`.
    pub fn new(crypto: &dyn Crypto, public: [u8; 32]) -> Self {
        let digest = tagged_hash(crypto, DOMAIN_KEY_ID, [&public]);
        let mut kid = [0u8; KID_LEN];
        for (k, d) in kid.iter_mut().zip(digest) {
            *k = d;
        }
        Self { public, kid }
    }

    /// The Ed25519 public key.
    pub const fn public(&self) -> &[u8; 32] {
        &self.public
    }

    /// The key id carried in the protected header.
    pub const fn kid(&self) -> &[u8; KID_LEN] {
        &self.kid
    }
}

impl AsRef<AuthorityKey> for AuthorityKey {
    fn as_ref(&self) -> &AuthorityKey {
        self
    }
}

/// A collector's receipt public key, which a device trusts for lineage
/// receipts only. A separate type from [`AuthorityKey`] so that the role is
/// checked, not only the signature: receipts open only with collector keys
/// ([`crate::receipt::verify_receipt`]) and the authority's kinds only with
/// authority keys ([`Signed::open`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CollectorKey(AuthorityKey);

impl CollectorKey {
    /// Trusts the Ed25519 public key `public` for receipts.
    pub fn new(crypto: &dyn Crypto, public: [u8; 32]) -> Self {
        Self(AuthorityKey::new(crypto, public))
    }

    /// The Ed25519 public key.
    pub const fn public(&self) -> &[u8; 32] {
        self.0.public()
    }

    /// The key id carried in the protected header.
    pub const fn kid(&self) -> &[u8; KID_LEN] {
        self.0.kid()
    }
}

impl AsRef<AuthorityKey> for CollectorKey {
    fn as_ref(&self) -> &AuthorityKey {
        &self.0
    }
}

wire_map! {
    /// The protected header: algorithm, content type, key id.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct ProtectedHeader<'a> {
        /// COSE `alg` (1): must be [`ALG_EDDSA`].
        1 => alg: i64,
        /// COSE `content type` (3): names the message kind.
        3 => content_type: Text<'a, MAX_CONTENT_TYPE_LEN>,
        /// COSE `kid` (4): which authority key signed.
        4 => kid: Bytes<KID_LEN>,
    }
}
wire_message!(ProtectedHeader<'a>, MessageKind::ProtectedHeader);

type Envelope<'a> = (
    Bstr<'a, MAX_SIGNED_LEN>,
    EmptyMap,
    Bstr<'a, MAX_SIGNED_LEN>,
    Bytes<64>,
);

type SigStructure<'a> = (
    &'a str,
    Bstr<'a, MAX_SIGNED_LEN>,
    Bstr<'a, 0>,
    Bstr<'a, MAX_SIGNED_LEN>,
);

fn sig_structure<'a>(protected: &'a [u8], payload: &'a [u8]) -> SigStructure<'a> {
    ("Signature1", Bstr(protected), Bstr(&[]), Bstr(payload))
}

/// A message the authority signs. `sign` and `open` check only the
/// envelope and the encoding; what a message means for a device (subject,
/// replay, nonce) is checked by the verifiers that produce proof tokens
/// ([`crate::artifact::verify_artifact`], [`crate::gate`]).
pub trait Signed<'a>: Message<'a> {
    /// Encodes and signs `self` into `buf`; returns the COSE_Sign1 bytes.
    fn sign<'b>(
        &self,
        signer: &dyn Signer,
        crypto: &dyn Crypto,
        buf: &'b mut [u8],
    ) -> Result<&'b [u8], Error> {
        let mut payload_buf = [0u8; MAX_SIGNED_LEN];
        let payload = self.encode(&mut payload_buf)?;
        seal(Self::KIND, payload, signer, crypto, buf)
    }

    /// Checks the envelope (EdDSA, this kind's content type, a trusted
    /// key, a valid signature) and decodes the payload.
    fn open(bytes: &'a [u8], keys: &[AuthorityKey], crypto: &dyn Crypto) -> Result<Self, Error> {
        let payload = open(bytes, Self::KIND, keys, crypto)?;
        Self::decode(payload)
    }
}

/// Signs an already encoded payload of `kind`.
pub(crate) fn seal<'b>(
    kind: MessageKind,
    payload: &[u8],
    signer: &dyn Signer,
    crypto: &dyn Crypto,
    buf: &'b mut [u8],
) -> Result<&'b [u8], Error> {
    let content_type =
        content_type(kind).ok_or(Error::Envelope(EnvelopeError::WrongContentType {
            expected: kind,
        }))?;
    let key = AuthorityKey::new(crypto, signer.public_key());
    let header = ProtectedHeader {
        alg: ALG_EDDSA,
        content_type: Text(content_type),
        kid: Bytes(key.kid),
    };
    let mut header_buf = [0u8; 2 * MAX_CONTENT_TYPE_LEN];
    let protected = header.encode(&mut header_buf)?;

    let mut to_sign = [0u8; MAX_SIGNED_LEN];
    let len = codec::encode(&sig_structure(protected, payload), &mut to_sign)
        .map_err(|f| wire::encode_error(kind, f))?;
    let message = to_sign.get(..len).ok_or(Error::BufferTooSmall { kind })?;
    let signature = signer.sign(message)?;

    let envelope: Envelope<'_> = (Bstr(protected), EmptyMap, Bstr(payload), Bytes(signature));
    let len = codec::encode_tagged(COSE_SIGN1_TAG, &envelope, buf)
        .map_err(|f| wire::encode_error(kind, f))?;
    let max = kind.max_len();
    if len > max {
        return Err(Error::Oversize { kind, len, max });
    }
    buf.get(..len).ok_or(Error::BufferTooSmall { kind })
}

/// Verifies the envelope of a signed message of `kind`; returns the payload
/// bytes (not yet decoded).
pub(crate) fn open<'a, K: AsRef<AuthorityKey>>(
    bytes: &'a [u8],
    kind: MessageKind,
    keys: &[K],
    crypto: &dyn Crypto,
) -> Result<&'a [u8], Error> {
    wire::check_len(bytes, kind)?;
    let envelope_kind = MessageKind::CoseSign1;
    let envelope: Envelope<'a> = codec::parse_tagged(COSE_SIGN1_TAG, bytes)
        .map_err(|f| wire::decode_error(envelope_kind, f))?
        .ok_or(EnvelopeError::NotTagged)?;
    if !bytes
        .get(1..)
        .is_some_and(|body| codec::is_canonical(&envelope, body))
    {
        return Err(Error::NonCanonical {
            kind: envelope_kind,
        });
    }
    let (Bstr(protected), EmptyMap, Bstr(payload), Bytes(signature)) = envelope;

    let header = ProtectedHeader::decode(protected)?;
    if header.alg != ALG_EDDSA {
        return Err(EnvelopeError::UnsupportedAlg(header.alg).into());
    }
    let key = keys
        .iter()
        .map(AsRef::as_ref)
        .find(|k| k.kid == header.kid.0)
        .ok_or(EnvelopeError::UnknownKey)?;

    let mut to_verify = [0u8; MAX_SIGNED_LEN];
    let len = codec::encode(&sig_structure(protected, payload), &mut to_verify)
        .map_err(|f| wire::encode_error(envelope_kind, f))?;
    let message = to_verify.get(..len).ok_or(Error::BufferTooSmall {
        kind: envelope_kind,
    })?;
    if !crypto.ed25519_verify(&key.public, message, &signature) {
        return Err(EnvelopeError::BadSignature.into());
    }
    // Authenticated from here on: the content type is the signer's word.
    if Some(header.content_type.0) != content_type(kind) {
        return Err(EnvelopeError::WrongContentType { expected: kind }.into());
    }
    Ok(payload)
}
