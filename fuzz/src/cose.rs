//! Wraps arbitrary payload bytes in a correctly signed COSE_Sign1 envelope
//! (the layout of `firmware-shim/README.md`, "Signed messages"). The shim
//! only signs payloads it encoded itself; the fuzzer needs signatures over
//! payloads it made up, so that mutations reach the claim and subject
//! checks behind the signature instead of dying at it.

use mctc_shim::cose::{AuthorityKey, content_type};
use mctc_shim::{MessageKind, RingCrypto, Signer};

/// CBOR major types used here.
const BSTR: u8 = 2;
const TSTR: u8 = 3;

fn put_head(out: &mut Vec<u8>, major: u8, len: usize) {
    let m = major << 5;
    // Shortest form, as the canonical encoding requires.
    match len {
        0..=23 => out.push(m | len as u8),
        24..=0xff => out.extend_from_slice(&[m | 24, len as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(m | 26);
            out.extend_from_slice(&(len as u32).to_be_bytes());
        }
    }
}

fn put_bstr(out: &mut Vec<u8>, bytes: &[u8]) {
    put_head(out, BSTR, bytes.len());
    out.extend_from_slice(bytes);
}

/// The protected header `{1: -8, 3: content type, 4: kid}` of `kind`.
fn protected(kind: MessageKind, kid: &[u8]) -> Vec<u8> {
    let content = content_type(kind).unwrap_or("application/octet-stream");
    let mut out = vec![0xa3, 0x01, 0x27, 0x03];
    put_head(&mut out, TSTR, content.len());
    out.extend_from_slice(content.as_bytes());
    out.push(0x04);
    put_bstr(&mut out, kid);
    out
}

/// `payload` signed by `signer` as a message of `kind`.
pub fn seal_with(kind: MessageKind, payload: &[u8], signer: &dyn Signer) -> Vec<u8> {
    let key = AuthorityKey::new(&RingCrypto, signer.public_key());
    let protected = protected(kind, key.kid());

    let mut to_sign = vec![0x84];
    put_head(&mut to_sign, TSTR, b"Signature1".len());
    to_sign.extend_from_slice(b"Signature1");
    put_bstr(&mut to_sign, &protected);
    put_bstr(&mut to_sign, &[]);
    put_bstr(&mut to_sign, payload);
    let signature = signer
        .sign(&to_sign)
        .expect("ring signs any message with a valid key");

    let mut out = vec![0xd2, 0x84];
    put_bstr(&mut out, &protected);
    out.push(0xa0);
    put_bstr(&mut out, payload);
    put_bstr(&mut out, &signature);
    out
}

/// `payload` signed by the fixed authority key as a message of `kind`.
pub fn seal(kind: MessageKind, payload: &[u8]) -> Vec<u8> {
    seal_with(kind, payload, &crate::fixtures::signer())
}

#[cfg(test)]
mod tests {
    use mctc_shim::Message;

    use super::*;
    use crate::fixtures;

    #[test]
    fn sealing_an_encoded_message_gives_the_shims_own_envelope() {
        let claims = fixtures::claims();
        let mut buf = [0u8; 2048];
        let payload = claims.encode(&mut buf).unwrap();
        assert_eq!(
            seal(MessageKind::Artifact, payload),
            fixtures::sign(&claims)
        );
        let hb = fixtures::heartbeat(101, &[]);
        let payload = hb.encode(&mut buf).unwrap();
        assert_eq!(seal(MessageKind::Heartbeat, payload), fixtures::sign(&hb));
    }
}
