//! Just enough raw TPM 2.0 command marshalling for the harness to act on the
//! simulator *from outside* the device under test (drift, resets), without
//! going through tss-esapi or tpm2-tools.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const TPM_ST_NO_SESSIONS: u16 = 0x8001;
const TPM_ST_SESSIONS: u16 = 0x8002;
const TPM_CC_STARTUP: u32 = 0x0000_0144;
const TPM_CC_SHUTDOWN: u32 = 0x0000_0145;
const TPM_CC_PCR_EXTEND: u32 = 0x0000_0182;
const TPM_CC_PCR_READ: u32 = 0x0000_017E;
const TPM_CC_GET_RANDOM: u32 = 0x0000_017B;
const TPM_RS_PW: u32 = 0x4000_0009;
const TPM_ALG_SHA256: u16 = 0x000B;
/// TPM_RC_INITIALIZE: Startup when the TPM is already started.
pub(crate) const TPM_RC_INITIALIZE: u32 = 0x0000_0100;

pub(crate) const SU_CLEAR: u16 = 0x0000;
pub(crate) const SU_STATE: u16 = 0x0001;

fn command(tag: u16, code: u32, body: &[u8]) -> Vec<u8> {
    let size = u32::try_from(10 + body.len()).expect("small command");
    let mut out = Vec::with_capacity(10 + body.len());
    out.extend_from_slice(&tag.to_be_bytes());
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Sends one command on a fresh connection (swtpm serves one connection at a
/// time and the TSS swtpm TCTI connects per command, so this interleaves with
/// a device agent's traffic) and returns (response code, response body).
pub(crate) fn transact(port: u16, cmd: &[u8]) -> std::io::Result<(u32, Vec<u8>)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(cmd)?;
    let mut header = [0u8; 10];
    stream.read_exact(&mut header)?;
    let size = u32::from_be_bytes([header[2], header[3], header[4], header[5]]) as usize;
    let rc = u32::from_be_bytes([header[6], header[7], header[8], header[9]]);
    let mut body = vec![0u8; size.saturating_sub(10)];
    stream.read_exact(&mut body)?;
    Ok((rc, body))
}

pub(crate) fn get_random(bytes: u16) -> Vec<u8> {
    command(TPM_ST_NO_SESSIONS, TPM_CC_GET_RANDOM, &bytes.to_be_bytes())
}

pub(crate) fn startup(kind: u16) -> Vec<u8> {
    command(TPM_ST_NO_SESSIONS, TPM_CC_STARTUP, &kind.to_be_bytes())
}

pub(crate) fn shutdown(kind: u16) -> Vec<u8> {
    command(TPM_ST_NO_SESSIONS, TPM_CC_SHUTDOWN, &kind.to_be_bytes())
}

/// TPM2_PCR_Extend of one SHA-256 digest with an empty password session.
pub(crate) fn pcr_extend_sha256(pcr: u32, digest: &[u8; 32]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&pcr.to_be_bytes());
    // Authorization area: one password session with an empty password.
    let mut auth = Vec::new();
    auth.extend_from_slice(&TPM_RS_PW.to_be_bytes());
    auth.extend_from_slice(&0u16.to_be_bytes()); // nonce
    auth.push(0); // session attributes
    auth.extend_from_slice(&0u16.to_be_bytes()); // hmac (password)
    body.extend_from_slice(&u32::try_from(auth.len()).expect("9").to_be_bytes());
    body.extend_from_slice(&auth);
    body.extend_from_slice(&1u32.to_be_bytes()); // TPML_DIGEST_VALUES.count
    body.extend_from_slice(&TPM_ALG_SHA256.to_be_bytes());
    body.extend_from_slice(digest);
    command(TPM_ST_SESSIONS, TPM_CC_PCR_EXTEND, &body)
}

/// TPM2_PCR_Read of one PCR in the SHA-256 bank.
pub(crate) fn pcr_read_sha256(pcr: u32) -> Vec<u8> {
    let mut select = [0u8; 3];
    select[(pcr / 8) as usize] = 1 << (pcr % 8);
    let mut body = Vec::new();
    body.extend_from_slice(&1u32.to_be_bytes());
    body.extend_from_slice(&TPM_ALG_SHA256.to_be_bytes());
    body.push(3);
    body.extend_from_slice(&select);
    command(TPM_ST_NO_SESSIONS, TPM_CC_PCR_READ, &body)
}

/// Extracts the single digest from a TPM2_PCR_Read response body.
pub(crate) fn parse_pcr_read(body: &[u8]) -> Option<[u8; 32]> {
    // pcrUpdateCounter (4) | TPML_PCR_SELECTION: count (4) + per entry hash (2),
    // sizeofSelect (1), select | TPML_DIGEST: count (4), TPM2B size (2), digest
    let mut at = 4;
    let count = u32::from_be_bytes(body.get(at..at + 4)?.try_into().ok()?);
    at += 4;
    for _ in 0..count {
        at += 2;
        let size = *body.get(at)? as usize;
        at += 1 + size;
    }
    let digests = u32::from_be_bytes(body.get(at..at + 4)?.try_into().ok()?);
    at += 4;
    if digests != 1 {
        return None;
    }
    let size = u16::from_be_bytes(body.get(at..at + 2)?.try_into().ok()?) as usize;
    at += 2;
    body.get(at..at + size)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extend_command_has_the_size_it_declares() {
        let cmd = pcr_extend_sha256(16, &[0u8; 32]);
        assert_eq!(cmd.len(), 65);
        assert_eq!(u32::from_be_bytes(cmd[2..6].try_into().unwrap()), 65);
    }
}
