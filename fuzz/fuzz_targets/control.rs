//! Control messages as the agent handles `dev/{dev}/control`:
//! `Signed::open` for the control kind, the gate's `verify_control` (which
//! also checks the subject), then `Gate::on_control` on a gate holding a
//! genuine artifact.
//!
//! Input: a mode byte, then
//! - mode 0: one received message, verified as it is;
//! - mode 1: a sequence of steps, each a big-endian u16 time step (ms) and a
//!   u16-framed control payload that is signed by the trusted key first.
//!
//! Invariants: no panic; `verify_control` accepts exactly what `open`
//! accepts for this device; accepted seqs strictly increase and replays
//! are refused; Revoked is never left; Contained refuses every artifact;
//! every gate event is recordable lineage.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mctc_fuzz::cose::seal;
use mctc_fuzz::fixtures::{self, RECEIVED_MS};
use mctc_fuzz::input::Input;
use mctc_fuzz::journal::Journal;
use mctc_shim::cose::Signed;
use mctc_shim::gate::{GateState, verify_control};
use mctc_shim::messages::{Control, ControlAction};
use mctc_shim::{Error, Gate, MessageKind, RingCrypto};

struct Run {
    gate: Gate,
    journal: Journal,
    last_seq: Option<u64>,
    now: u64,
}

impl Run {
    fn new() -> Run {
        Run {
            gate: fixtures::open_gate(),
            journal: Journal::new(fixtures::device()),
            last_seq: None,
            now: RECEIVED_MS,
        }
    }

    fn receive(&mut self, bytes: &[u8]) {
        let keys = fixtures::keys();
        let device = fixtures::device();
        let opened = Control::open(bytes, &keys, &RingCrypto);
        let verified = verify_control(bytes, &keys, &RingCrypto, &device);
        match (&opened, &verified) {
            (Ok(c), Ok(v)) => assert_eq!(c, v.message()),
            (Ok(c), Err(Error::WrongSubject { .. })) => assert_ne!(c.sub, device),
            (Err(_), Err(_)) => {}
            _ => panic!("Signed::open and verify_control disagree: {opened:?} / {verified:?}"),
        }
        let Ok(control) = verified else {
            return;
        };
        let message = control.message().clone();
        let was_revoked = matches!(self.gate.state(), GateState::Revoked(_));
        match self.gate.on_control(&control, self.now) {
            Ok(events) => {
                assert!(
                    self.last_seq.is_none_or(|last| message.seq > last),
                    "accepted a replay"
                );
                self.last_seq = Some(message.seq);
                self.journal.record(&events, self.now);
                match message.action {
                    ControlAction::Revoke => {
                        assert!(matches!(self.gate.state(), GateState::Revoked(_)));
                    }
                    ControlAction::Contain if !was_revoked => {
                        assert!(matches!(self.gate.state(), GateState::Contained(_)));
                    }
                    _ => {}
                }
                assert_eq!(self.gate.persisted().control_seq, Some(message.seq));
            }
            Err(Error::Replay { seq, last, .. }) => {
                assert_eq!(seq, message.seq);
                assert!(
                    seq <= last && Some(last) == self.last_seq,
                    "refused a fresh control"
                );
            }
            Err(other) => panic!("control refused for an unexpected reason: {other:?}"),
        }
        if was_revoked {
            assert!(
                matches!(self.gate.state(), GateState::Revoked(_)),
                "left Revoked"
            );
        }
        assert_eq!(
            self.gate.persisted().revoked,
            matches!(self.gate.state(), GateState::Revoked(_))
        );
        if matches!(
            self.gate.state(),
            GateState::Contained(_) | GateState::Revoked(_)
        ) {
            assert!(
                self.gate
                    .install(
                        fixtures::verified_artifact(),
                        self.gate.generation(),
                        self.now.max(RECEIVED_MS)
                    )
                    .is_err(),
                "a contained or revoked gate took an artifact"
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
        let bytes = seal(MessageKind::Control, input.chunk());
        run.receive(&bytes);
    }
});
