//! Fleet heartbeats as the agent handles `fleet/heartbeat`:
//! `Signed::open` for the heartbeat kind, the gate's `verify_heartbeat`,
//! then `Gate::on_heartbeat` on a gate holding a genuine artifact.
//!
//! Input: a mode byte, then
//! - mode 0: one received message, verified as it is;
//! - mode 1: a sequence of steps, each a big-endian u16 time step (ms) and a
//!   u16-framed heartbeat payload that is signed by the trusted key first,
//!   so the gate sees a run of authentic heartbeats.
//!
//! Invariants: no panic; `open` and `verify_heartbeat` agree; accepted
//! heartbeat seqs strictly increase from the artifact's baseline and a
//! replay is refused; a heartbeat naming the device revokes it and Revoked
//! is never left; every gate event is recordable lineage.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mctc_fuzz::cose::seal;
use mctc_fuzz::fixtures::{self, ARTIFACT_HB_SEQ, RECEIVED_MS};
use mctc_fuzz::input::Input;
use mctc_fuzz::journal::Journal;
use mctc_shim::cose::Signed;
use mctc_shim::gate::{GateState, verify_heartbeat};
use mctc_shim::messages::Heartbeat;
use mctc_shim::{Error, Gate, MessageKind, RingCrypto};

struct Run {
    gate: Gate,
    journal: Journal,
    last_seq: u64,
    now: u64,
}

impl Run {
    fn new() -> Run {
        Run {
            gate: fixtures::open_gate(),
            journal: Journal::new(fixtures::device()),
            last_seq: ARTIFACT_HB_SEQ,
            now: RECEIVED_MS,
        }
    }

    fn receive(&mut self, bytes: &[u8]) {
        let keys = fixtures::keys();
        let opened = Heartbeat::open(bytes, &keys, &RingCrypto);
        let verified = verify_heartbeat(bytes, &keys, &RingCrypto);
        assert_eq!(
            opened.as_ref().ok(),
            verified.as_ref().ok().map(|v| v.message()),
            "Signed::open and verify_heartbeat disagree"
        );
        let Ok(hb) = verified else {
            return;
        };
        let was_revoked = matches!(self.gate.state(), GateState::Revoked(_));
        match self.gate.on_heartbeat(&hb, self.now) {
            Ok(events) => {
                assert!(hb.message().seq > self.last_seq, "accepted a replay");
                self.last_seq = hb.message().seq;
                self.journal.record(&events, self.now);
                if hb.message().revoked.contains(&fixtures::device()) {
                    assert!(matches!(self.gate.state(), GateState::Revoked(_)));
                }
            }
            Err(Error::Replay { seq, last, .. }) => {
                assert_eq!(seq, hb.message().seq);
                assert!(
                    seq <= last && last == self.last_seq,
                    "refused a fresh heartbeat"
                );
            }
            Err(other) => panic!("heartbeat refused for an unexpected reason: {other:?}"),
        }
        if was_revoked {
            assert!(
                matches!(self.gate.state(), GateState::Revoked(_)),
                "left Revoked"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mut run = Run::new();
    if input.u8() & 1 == 0 {
        run.receive(input.rest());
        return;
    }
    while !input.is_empty() {
        run.now += u64::from(input.u16());
        let bytes = seal(MessageKind::Heartbeat, input.chunk());
        run.receive(&bytes);
    }
});
