//! The agent's gate socket: `mctc_agent::socket::parse_request`, the
//! parser of every line a local client writes to the socket (the shim's
//! `api::Request` schema, then `api::Authorize::check`).
//!
//! Input: one request line.
//!
//! Invariants: no panic; an authorize request that parses has an op of
//! 1–32 printable ASCII characters without spaces, and its decision (here:
//! a deny, as on a closed gate) is always a recordable lineage record: the
//! agent writes the record before it answers, so a request whose record
//! could not be written would fail the whole lineage.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mctc_agent::socket::{Request, parse_request};
use mctc_fuzz::fixtures::{self, BOOT};
use mctc_shim::RingCrypto;
use mctc_shim::lineage::{Body, ChainHead, Decision, DenyCode, Stamp, VerdictCode};
use mctc_shim::wire::{Text, Token};

fuzz_target!(|data: &[u8]| {
    let Ok(Request::Authorize(request)) = parse_request(data) else {
        return;
    };
    let op = request.op.as_str();
    assert!(!op.is_empty() && op.len() <= 32);
    assert!(op.bytes().all(|b| (0x21..=0x7e).contains(&b)));
    let body = Body::Decision(Decision {
        op: Token(op),
        amount: request.amount,
        currency: request.currency,
        reference: request.reference.as_deref().map(Text),
        verdict: VerdictCode::Deny,
        deny: Some(DenyCode::Closed),
        cti: None,
    });
    let stamp = Stamp {
        boot: BOOT,
        mono_ms: 1,
        wall_ms: None,
    };
    let mut buf = [0u8; 2048];
    ChainHead::genesis(fixtures::device())
        .append(&RingCrypto, stamp, body, &mut buf)
        .expect("a parsed request's decision is recordable");
});
