#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failure stops the test loudly"
)]
//! The gate: every transition and every deny, driven by real signed and
//! verified inputs.

mod common;

use common::*;
use mctc_shim::artifact::{Claims, Currency};
use mctc_shim::error::ArtifactError;
use mctc_shim::gate::{
    CloseReason, ContainedBy, DEFAULT_MAX_FRESH_AGE_MS, Decision, GateError, Persisted, RevokedBy,
    verify_control, verify_heartbeat, verify_refusal,
};
use mctc_shim::lineage::{Body, ChainHead, DenyCode, DriftKind, Stamp};
use mctc_shim::messages::{ControlAction, Heartbeat, RefusalCode};
use mctc_shim::wire::{Bytes, List};
use mctc_shim::{
    Error, Gate, GateConfig, GateEvent, GateState, MessageKind, OpRequest, RingCrypto, Verdict,
};

const R: u64 = RECEIVED_MS;
const TTL: u64 = TTL_MS as u64;
const HB: u64 = HB_MS as u64;

fn gate() -> Gate {
    Gate::new(
        GateConfig {
            device: device(),
            max_fresh_age_ms: DEFAULT_MAX_FRESH_AGE_MS,
        },
        Persisted::default(),
    )
}

fn open_gate() -> Gate {
    let mut g = gate();
    g.install(verified(&claims(), R), g.generation(), R)
        .unwrap();
    g
}

fn eur() -> Option<Currency> {
    Currency::new("EUR")
}

fn capture(amount: u64) -> OpRequest<'static> {
    OpRequest {
        op: "capture",
        amount: Some(amount),
        currency: eur(),
    }
}

fn hb(g: &mut Gate, h: &Heartbeat, now: u64) -> Result<Vec<GateEvent>, Error> {
    let v = verify_heartbeat(&sign(h), &keys(), &RingCrypto).unwrap();
    g.on_heartbeat(&v, now).map(|e| e.as_slice().to_vec())
}

fn ctl(g: &mut Gate, seq: u64, action: ControlAction, now: u64) -> Result<Vec<GateEvent>, Error> {
    let bytes = sign(&control(seq, action));
    let v = verify_control(&bytes, &keys(), &RingCrypto, &device()).unwrap();
    g.on_control(&v, now).map(|e| e.as_slice().to_vec())
}

fn refuse(g: &mut Gate, code: RefusalCode, contained: bool, now: u64) -> Vec<GateEvent> {
    let bytes = sign(&refusal(code, contained));
    let v = verify_refusal(&bytes, &keys(), &RingCrypto, &device(), &NONCE).unwrap();
    g.on_refusal(&v, now).as_slice().to_vec()
}

fn deny(d: &Decision) -> Option<DenyCode> {
    match d.verdict {
        Verdict::Deny(code) => Some(code),
        _ => None,
    }
}

#[test]
fn the_gate_starts_closed_and_denies() {
    let mut g = gate();
    assert_eq!(g.state(), &GateState::Closed(CloseReason::Startup));
    assert_eq!(g.next_deadline(), None);
    let d = g.decide(&capture(1), 5);
    assert_eq!(deny(&d), Some(DenyCode::Closed));
    assert_eq!(d.cti, None);
    assert!(d.events.is_empty());
}

#[test]
fn a_verified_artifact_opens_the_gate_and_permits_in_scope() {
    let mut g = gate();
    let events = g
        .install(verified(&claims(), R), g.generation(), R + 5)
        .unwrap();
    assert_eq!(
        events.as_slice(),
        [GateEvent::Opened {
            cti: [0xc7; 16],
            deadline_ms: R + TTL
        }]
    );
    // The heartbeat window (30 s) ends before the artifact (60 s).
    assert_eq!(g.next_deadline(), Some(R + HB));
    let d = g.decide(&capture(500), R + 10);
    assert_eq!(d.verdict, Verdict::Permit);
    assert!(d.is_permit());
    assert_eq!(d.cti, Some([0xc7; 16]));
    assert_eq!(g.artifact().unwrap().pcr_digest(), &[0xd1; 32]);
    assert_eq!(g.artifact().unwrap().boot(), BOOT);
}

#[test]
fn the_gate_closes_at_the_artifact_deadline_and_one_second_past_it() {
    let mut g = open_gate();
    // Keep the heartbeat alive past the artifact's deadline.
    hb(&mut g, &heartbeat(101), R + 20_000).unwrap();
    hb(&mut g, &heartbeat(102), R + 45_000).unwrap();
    assert_eq!(g.next_deadline(), Some(R + TTL));
    assert!(g.decide(&capture(1), R + TTL - 1).is_permit());

    let mut at_deadline = g.clone();
    let d = at_deadline.decide(&capture(1), R + TTL);
    assert_eq!(deny(&d), Some(DenyCode::Closed));
    assert_eq!(
        d.events.as_slice(),
        [GateEvent::Closed(CloseReason::ArtifactExpired)]
    );

    let d = g.decide(&capture(1), R + TTL + 1_000);
    assert_eq!(deny(&d), Some(DenyCode::Closed));
    assert_eq!(
        d.events.as_slice(),
        [GateEvent::Closed(CloseReason::ArtifactExpired)]
    );
    assert_eq!(g.state(), &GateState::Closed(CloseReason::ArtifactExpired));
    assert_eq!(g.next_deadline(), None);
}

#[test]
fn a_heartbeat_gap_of_hb_ms_plus_one_closes_the_gate() {
    let mut g = open_gate();
    let t = R + 10_000;
    assert!(hb(&mut g, &heartbeat(101), t).unwrap().is_empty());
    assert_eq!(g.next_deadline(), Some(t + HB));
    assert!(g.decide(&capture(1), t + HB - 1).is_permit());
    let d = g.decide(&capture(1), t + HB + 1);
    assert_eq!(deny(&d), Some(DenyCode::Closed));
    assert_eq!(
        d.events.as_slice(),
        [GateEvent::Closed(CloseReason::HeartbeatLapsed)]
    );
}

#[test]
fn a_late_heartbeat_does_not_reopen_a_lapsed_gate() {
    let mut g = open_gate();
    let events = hb(&mut g, &heartbeat(101), R + HB + 1).unwrap();
    assert_eq!(events, [GateEvent::Closed(CloseReason::HeartbeatLapsed)]);
    assert_eq!(g.state(), &GateState::Closed(CloseReason::HeartbeatLapsed));
}

#[test]
fn the_tick_closes_without_a_request() {
    let mut g = open_gate();
    assert!(g.tick(R + HB - 1).is_empty());
    assert_eq!(
        g.tick(R + HB).as_slice(),
        [GateEvent::Closed(CloseReason::HeartbeatLapsed)]
    );
    assert!(g.tick(R + HB + 5).is_empty());
}

#[test]
fn a_replayed_heartbeat_is_rejected_and_extends_nothing() {
    let mut g = open_gate();
    hb(&mut g, &heartbeat(101), R + 10_000).unwrap();
    assert_eq!(
        hb(&mut g, &heartbeat(101), R + 20_000),
        Err(Error::Replay {
            kind: MessageKind::Heartbeat,
            seq: 101,
            last: 101
        })
    );
    // The artifact's hb_seq (100) is the floor: older heartbeats are stale.
    let mut fresh = open_gate();
    assert_eq!(
        hb(&mut fresh, &heartbeat(100), R + 1),
        Err(Error::Replay {
            kind: MessageKind::Heartbeat,
            seq: 100,
            last: 100
        })
    );
    // The window still counts from the last accepted heartbeat.
    assert_eq!(g.next_deadline(), Some(R + 10_000 + HB));
}

#[test]
fn the_heartbeat_window_is_the_smaller_of_artifact_and_heartbeat() {
    let mut g = open_gate();
    let mut h = heartbeat(101);
    h.hb_ms = 5_000;
    hb(&mut g, &h, R + 1_000).unwrap();
    assert_eq!(g.next_deadline(), Some(R + 6_000));
    let mut h = heartbeat(102);
    h.hb_ms = 600_000;
    hb(&mut g, &h, R + 2_000).unwrap();
    assert_eq!(g.next_deadline(), Some(R + 2_000 + HB));
}

#[test]
fn revocation_in_a_heartbeat_revokes_open_and_closed_gates() {
    for mut g in [open_gate(), gate()] {
        let mut h = heartbeat(101);
        h.revoked = List::from_slice(&[other_device(), device()]).unwrap();
        let events = hb(&mut g, &h, R + 1).unwrap();
        assert_eq!(
            events,
            [GateEvent::Revoked(RevokedBy::Heartbeat {
                seq: 101,
                epoch: 5
            })]
        );
        assert_eq!(deny(&g.decide(&capture(1), R + 2)), Some(DenyCode::Revoked));
        assert!(g.persisted().revoked);
    }
}

#[test]
fn revocation_of_another_device_changes_nothing() {
    let mut g = open_gate();
    let mut h = heartbeat(101);
    h.revoked = List::from_slice(&[other_device()]).unwrap();
    assert!(hb(&mut g, &h, R + 1).unwrap().is_empty());
    assert!(g.decide(&capture(1), R + 2).is_permit());
}

#[test]
fn a_revocation_gap_closes_until_reattestation() {
    // The artifact says epoch 5. A heartbeat covering epochs 6..=8 only
    // leaves epoch 6 unknown to the device.
    let mut g = open_gate();
    let mut h = heartbeat(101);
    h.since_epoch = 6;
    h.epoch = 8;
    assert_eq!(
        hb(&mut g, &h, R + 1).unwrap(),
        [GateEvent::Closed(CloseReason::RevocationGap)]
    );

    // Contiguous coverage moves the known epoch forward.
    let mut g = open_gate();
    for (seq, since, epoch) in [(101, 5, 8), (102, 7, 9), (103, 9, 9)] {
        let mut h = heartbeat(seq);
        h.since_epoch = since;
        h.epoch = epoch;
        assert!(hb(&mut g, &h, R + seq).unwrap().is_empty(), "seq {seq}");
    }
    assert!(g.decide(&capture(1), R + 200).is_permit());
}

#[test]
fn revoked_stays_revoked_even_with_a_fresh_artifact() {
    let mut g = open_gate();
    let events = ctl(&mut g, 1, ControlAction::Revoke, R + 1).unwrap();
    assert!(
        matches!(&events[..], [GateEvent::Revoked(RevokedBy::Control { seq: 1, reason })] if reason == "ticket 4711")
    );
    let mut c = claims();
    c.cti = Bytes([0xee; 16]);
    assert_eq!(
        g.install(verified(&c, R + 2), g.generation(), R + 2),
        Err(Error::Gate(GateError::Revoked))
    );
    // Restore does not undo a revocation.
    assert!(
        ctl(&mut g, 2, ControlAction::Restore, R + 3)
            .unwrap()
            .is_empty()
    );
    assert!(matches!(g.state(), GateState::Revoked(_)));
    assert_eq!(deny(&g.decide(&capture(1), R + 4)), Some(DenyCode::Revoked));

    // And across a restart.
    let persisted = g.persisted();
    assert_eq!(
        persisted,
        Persisted {
            revoked: true,
            control_seq: Some(2)
        }
    );
    let mut restarted = Gate::new(
        GateConfig {
            device: device(),
            max_fresh_age_ms: DEFAULT_MAX_FRESH_AGE_MS,
        },
        persisted,
    );
    assert_eq!(restarted.state(), &GateState::Revoked(RevokedBy::Persisted));
    assert_eq!(
        restarted.install(verified(&claims(), R), restarted.generation(), R),
        Err(Error::Gate(GateError::Revoked))
    );
}

#[test]
fn contain_blocks_artifacts_until_restore_then_a_new_artifact_reopens() {
    let mut g = open_gate();
    let events = ctl(&mut g, 1, ControlAction::Contain, R + 1).unwrap();
    assert!(matches!(
        &events[..],
        [GateEvent::Contained(ContainedBy::Control { seq: 1, .. })]
    ));
    assert_eq!(
        deny(&g.decide(&capture(1), R + 2)),
        Some(DenyCode::Contained)
    );
    assert_eq!(
        g.install(verified(&claims(), R + 3), g.generation(), R + 3),
        Err(Error::Gate(GateError::Contained))
    );
    // A second contain changes nothing.
    assert!(
        ctl(&mut g, 2, ControlAction::Contain, R + 4)
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        ctl(&mut g, 3, ControlAction::Restore, R + 5).unwrap(),
        [GateEvent::Restored { control_seq: 3 }]
    );
    assert_eq!(g.state(), &GateState::Closed(CloseReason::Restored));
    assert_eq!(deny(&g.decide(&capture(1), R + 6)), Some(DenyCode::Closed));
    let events = g
        .install(verified(&claims(), R + 7), g.generation(), R + 7)
        .unwrap();
    assert!(matches!(events.as_slice(), [GateEvent::Opened { .. }]));
    assert!(g.decide(&capture(1), R + 8).is_permit());
}

#[test]
fn restore_without_containment_does_nothing() {
    let mut g = open_gate();
    assert!(
        ctl(&mut g, 1, ControlAction::Restore, R + 1)
            .unwrap()
            .is_empty()
    );
    assert!(g.decide(&capture(1), R + 2).is_permit());
}

#[test]
fn control_replays_are_rejected_including_across_restarts() {
    let mut g = gate();
    ctl(&mut g, 5, ControlAction::Contain, 1).unwrap();
    for seq in [5, 4] {
        assert_eq!(
            ctl(&mut g, seq, ControlAction::Restore, 2),
            Err(Error::Replay {
                kind: MessageKind::Control,
                seq,
                last: 5
            })
        );
    }
    assert!(matches!(g.state(), GateState::Contained(_)));
    let mut restarted = Gate::new(
        GateConfig {
            device: device(),
            max_fresh_age_ms: DEFAULT_MAX_FRESH_AGE_MS,
        },
        Persisted {
            revoked: false,
            control_seq: Some(7),
        },
    );
    assert_eq!(
        ctl(&mut restarted, 7, ControlAction::Revoke, 1),
        Err(Error::Replay {
            kind: MessageKind::Control,
            seq: 7,
            last: 7
        })
    );
    assert!(matches!(restarted.state(), GateState::Closed(_)));
}

#[test]
fn controls_and_refusals_for_another_device_or_nonce_do_not_verify() {
    let mut c = control(1, ControlAction::Revoke);
    c.sub = other_device();
    let bytes = sign(&c);
    assert_eq!(
        verify_control(&bytes, &keys(), &RingCrypto, &device()),
        Err(Error::WrongSubject {
            kind: MessageKind::Control
        })
    );
    let bytes = sign(&refusal(RefusalCode::Revoked, false));
    assert_eq!(
        verify_refusal(&bytes, &keys(), &RingCrypto, &device(), &[0; 32]),
        Err(ArtifactError::NonceMismatch.into())
    );
    assert_eq!(
        verify_refusal(&bytes, &keys(), &RingCrypto, &other_device(), &NONCE),
        Err(Error::WrongSubject {
            kind: MessageKind::Refusal
        })
    );
}

#[test]
fn refusals_close_contain_or_revoke() {
    let mut g = open_gate();
    assert_eq!(
        refuse(&mut g, RefusalCode::PolicyMismatch, false, R + 1),
        [GateEvent::Closed(CloseReason::Refused(
            RefusalCode::PolicyMismatch
        ))]
    );
    assert_eq!(
        refuse(&mut g, RefusalCode::Contained, true, R + 2),
        [GateEvent::Contained(ContainedBy::Refusal {
            code: RefusalCode::Contained
        })]
    );
    assert_eq!(
        refuse(&mut g, RefusalCode::Revoked, false, R + 3),
        [GateEvent::Revoked(RevokedBy::Refusal)]
    );
    assert!(refuse(&mut g, RefusalCode::BadEvidence, false, R + 4).is_empty());
}

#[test]
fn out_of_scope_over_limit_and_malformed_requests_are_denied() {
    let mut g = open_gate();
    let cases = [
        (
            OpRequest {
                op: "dispense",
                amount: None,
                currency: None,
            },
            Some(DenyCode::OutOfScope),
        ),
        (
            OpRequest {
                op: "CAPTURE",
                amount: Some(1),
                currency: eur(),
            },
            Some(DenyCode::OutOfScope),
        ),
        (capture(10_001), Some(DenyCode::OverLimit)),
        (capture(10_000), None),
        (
            OpRequest {
                op: "capture",
                amount: None,
                currency: eur(),
            },
            Some(DenyCode::AmountRequired),
        ),
        (
            OpRequest {
                op: "capture",
                amount: Some(1),
                currency: Currency::new("USD"),
            },
            Some(DenyCode::CurrencyMismatch),
        ),
        (
            OpRequest {
                op: "capture",
                amount: Some(1),
                currency: None,
            },
            Some(DenyCode::CurrencyMismatch),
        ),
        (
            OpRequest {
                op: "unlock",
                amount: None,
                currency: None,
            },
            None,
        ),
        (
            OpRequest {
                op: "unlock",
                amount: Some(u64::MAX),
                currency: Currency::new("USD"),
            },
            None,
        ),
    ];
    for (request, expected) in cases {
        let d = g.decide(&request, R + 1);
        assert_eq!(deny(&d), expected, "{request:?}");
        if expected.is_none() {
            assert_eq!(d.verdict, Verdict::Permit);
        }
    }
}

fn fresh_claims() -> Claims<'static> {
    let mut c = claims();
    c.cti = Bytes([0xf0; 16]);
    c.nonce = Bytes([0x33; 32]);
    c
}

#[test]
fn an_operation_demanding_fresh_attestation_needs_one_and_then_permits() {
    let mut g = open_gate();
    let refund = OpRequest {
        op: "refund",
        amount: Some(100),
        currency: eur(),
    };
    let d = g.decide(&refund, R + 1);
    assert_eq!(d.verdict, Verdict::NeedsFreshAttestation);
    assert_eq!(d.cti, Some([0xc7; 16]));

    let fresh = verified(&fresh_claims(), R + 100);
    let d = g.decide_fresh(&refund, fresh.clone(), g.generation(), R + 200);
    assert_eq!(d.verdict, Verdict::Permit);
    assert_eq!(d.cti, Some([0xf0; 16]));
    // One fresh attestation, one operation.
    let d = g.decide_fresh(&refund, fresh.clone(), g.generation(), R + 210);
    assert_eq!(deny(&d), Some(DenyCode::FreshAttestationInvalid));
    let mut second = fresh_claims();
    second.cti = Bytes([0xf1; 16]);
    assert!(
        g.decide_fresh(&refund, verified(&second, R + 215), g.generation(), R + 220)
            .is_permit()
    );

    // Limits of the gate's artifact still apply.
    let big = OpRequest {
        amount: Some(5_001),
        ..refund
    };
    assert_eq!(
        deny(&g.decide_fresh(&big, fresh.clone(), g.generation(), R + 300)),
        Some(DenyCode::OverLimit)
    );
    // A fresh artifact that does not authorize the operation.
    let mut narrow = fresh_claims();
    narrow.cti = Bytes([0xf3; 16]);
    narrow.scope = List::from_slice(&narrow.scope[..1]).unwrap();
    let d = g.decide_fresh(&refund, verified(&narrow, R + 300), g.generation(), R + 300);
    assert_eq!(deny(&d), Some(DenyCode::FreshAttestationInvalid));
    // A fresh artifact from another boot.
    let mut reboot = fresh_claims();
    reboot.cti = Bytes([0xf4; 16]);
    reboot.boot.reset += 1;
    let bytes = sign(&reboot);
    let dev = device();
    let k = keys();
    let ctx = mctc_shim::VerifyContext {
        nonce: &[0x33; 32],
        boot: reboot.boot,
        received_ms: R + 300,
        ..context(&dev, &k)
    };
    let other_boot = mctc_shim::verify_artifact(&bytes, &ctx, &RingCrypto).unwrap();
    let d = g.decide_fresh(&refund, other_boot, g.generation(), R + 300);
    assert_eq!(deny(&d), Some(DenyCode::FreshAttestationInvalid));
    // Too old (time only moves forward: the gate closes if it goes back).
    let mut old = fresh_claims();
    old.cti = Bytes([0xf2; 16]);
    let old = verified(&old, R + 100);
    let mut probe = g.clone();
    assert!(
        probe
            .decide_fresh(
                &refund,
                old.clone(),
                probe.generation(),
                R + 100 + DEFAULT_MAX_FRESH_AGE_MS
            )
            .is_permit()
    );
    let d = g.decide_fresh(
        &refund,
        old,
        g.generation(),
        R + 100 + DEFAULT_MAX_FRESH_AGE_MS + 1,
    );
    assert_eq!(deny(&d), Some(DenyCode::FreshAttestationInvalid));
    assert!(d.events.is_empty());
    // Not while closed.
    let d = g.decide_fresh(&refund, fresh, g.generation(), R + HB + 1);
    assert_eq!(deny(&d), Some(DenyCode::Closed));
    assert_eq!(
        d.events.as_slice(),
        [GateEvent::Closed(CloseReason::HeartbeatLapsed)]
    );
}

#[test]
fn renewal_replaces_the_artifact_and_extends_deadlines() {
    let mut g = open_gate();
    let mut c = claims();
    c.cti = Bytes([0xaa; 16]);
    c.hb_seq = 150;
    let events = g
        .install(verified(&c, R + 20_000), g.generation(), R + 20_001)
        .unwrap();
    assert_eq!(
        events.as_slice(),
        [GateEvent::Renewed {
            cti: [0xaa; 16],
            deadline_ms: R + 20_000 + TTL,
            exp: IAT + 3600
        }]
    );
    assert_eq!(g.next_deadline(), Some(R + 20_000 + HB));
    assert_eq!(g.heartbeat_seq(), Some(150));
    assert_eq!(g.decide(&capture(1), R + 20_002).cti, Some([0xaa; 16]));
}

#[test]
fn an_artifact_past_its_deadline_or_from_the_future_is_not_installed() {
    let mut g = gate();
    assert_eq!(
        g.install(verified(&claims(), R), g.generation(), R + TTL),
        Err(ArtifactError::Expired.into())
    );
    assert_eq!(g.state(), &GateState::Closed(CloseReason::Startup));
    // A new gate: `now` going back would be a clock regression, which
    // voids the evidence before the receipt time is looked at.
    let mut g = gate();
    assert_eq!(
        g.install(verified(&claims(), R + 10), g.generation(), R),
        Err(GateError::ReceivedInFuture.into())
    );
    assert_eq!(g.state(), &GateState::Closed(CloseReason::Startup));
}

#[test]
fn an_artifact_for_another_device_is_not_installed() {
    let mut c = claims();
    c.sub = other_device();
    let mut g = gate();
    assert_eq!(
        g.install(verified(&c, R), g.generation(), R),
        Err(Error::WrongSubject {
            kind: MessageKind::Artifact
        })
    );
}

#[test]
fn drift_and_agent_reasons_close_the_gate() {
    let mut g = open_gate();
    assert_eq!(
        g.drift(DriftKind::Pcr, R + 1).as_slice(),
        [GateEvent::Closed(CloseReason::Drift(DriftKind::Pcr))]
    );
    assert_eq!(deny(&g.decide(&capture(1), R + 2)), Some(DenyCode::Closed));
    // Already closed: nothing more to record.
    assert!(g.drift(DriftKind::Boot, R + 3).is_empty());

    let mut g = open_gate();
    assert_eq!(
        g.close_at(CloseReason::LineageUnavailable, R + 1)
            .as_slice(),
        [GateEvent::Closed(CloseReason::LineageUnavailable)]
    );
}

#[test]
fn time_going_backwards_closes_the_gate() {
    let mut g = open_gate();
    assert!(g.decide(&capture(1), R + 100).is_permit());
    let d = g.decide(&capture(1), R + 50);
    assert_eq!(deny(&d), Some(DenyCode::Closed));
    assert_eq!(
        d.events.as_slice(),
        [GateEvent::Closed(CloseReason::ClockRegression)]
    );
}

#[test]
fn every_event_becomes_a_lineage_record() {
    let events = [
        GateEvent::Opened {
            cti: [1; 16],
            deadline_ms: 9,
        },
        GateEvent::Renewed {
            cti: [1; 16],
            deadline_ms: 9,
            exp: 10,
        },
        GateEvent::Closed(CloseReason::Drift(DriftKind::File)),
        GateEvent::Closed(CloseReason::Refused(RefusalCode::StaleNonce)),
        GateEvent::Contained(ContainedBy::Control {
            seq: 3,
            reason: "fraud".try_into().unwrap(),
        }),
        GateEvent::Contained(ContainedBy::Refusal {
            code: RefusalCode::Contained,
        }),
        GateEvent::Restored { control_seq: 4 },
        GateEvent::Revoked(RevokedBy::Heartbeat { seq: 9, epoch: 2 }),
        GateEvent::Revoked(RevokedBy::Persisted),
    ];
    let mut chain = ChainHead::genesis(device());
    let stamp = Stamp {
        boot: BOOT,
        mono_ms: 1,
        wall_ms: None,
    };
    for event in &events {
        let mut buf = [0u8; 512];
        let body = event.body();
        let appended = chain.append(&RingCrypto, stamp, body, &mut buf).unwrap();
        let decoded =
            <mctc_shim::lineage::Record<'_> as mctc_shim::Message<'_>>::decode(appended.bytes)
                .unwrap();
        assert_eq!(decoded.body, body, "{event:?}");
    }
    let d = open_gate().decide(&capture(7), R + 1);
    let body = d.body(&capture(7), Some("order-1"));
    let Body::Decision(decision) = body else {
        panic!("not a decision body")
    };
    assert_eq!(decision.op.as_str(), "capture");
    assert_eq!(decision.amount, Some(7));
    assert_eq!(decision.cti, Some(Bytes([0xc7; 16])));
    assert_eq!(decision.reference.unwrap().as_str(), "order-1");
}

// Issue 13: a close for any cause but expiry voids evidence quoted before
// it. Each case: the gate is open, a renewal is quoted (its generation
// taken) at R + 10, the cause closes the gate at R + 20, the answer to the
// renewal arrives at R + 30 and must not reopen; an artifact answering
// evidence quoted after the close does.

/// The renewal's answer (a new cti, received at `at`).
fn renewal(at: u64) -> mctc_shim::VerifiedArtifact {
    let mut c = claims();
    c.cti = Bytes([0x5e; 16]);
    verified(&c, at)
}

fn stale_answer_is_refused(close: impl FnOnce(&mut Gate), expect: GateState) {
    let mut g = open_gate();
    let quoted_in = g.generation();
    close(&mut g);
    assert_eq!(g.state(), &expect);
    assert_ne!(
        g.generation(),
        quoted_in,
        "the close voids earlier evidence"
    );
    let refused = g.install(renewal(R + 30), quoted_in, R + 30);
    let expected_error = match expect {
        GateState::Contained(_) => GateError::Contained,
        GateState::Revoked(_) => GateError::Revoked,
        _ => GateError::StaleEvidence,
    };
    assert_eq!(refused, Err(Error::Gate(expected_error)));
    assert_eq!(g.state(), &expect, "refused: nothing changed");
    assert_eq!(
        deny(&g.decide(&capture(1), R + 31)),
        Some(deny_code_of(&expect))
    );
    if matches!(expect, GateState::Closed(_)) {
        // Recovery: evidence quoted after the close.
        let now = g.generation();
        let events = g.install(renewal(R + 40), now, R + 40).unwrap();
        assert!(matches!(events.as_slice(), [GateEvent::Opened { .. }]));
        assert!(g.decide(&capture(1), R + 41).is_permit());
    }
}

fn deny_code_of(state: &GateState) -> DenyCode {
    match state {
        GateState::Contained(_) => DenyCode::Contained,
        GateState::Revoked(_) => DenyCode::Revoked,
        _ => DenyCode::Closed,
    }
}

#[test]
fn pcr_drift_voids_evidence_quoted_before_it() {
    stale_answer_is_refused(
        |g| {
            g.drift(DriftKind::Pcr, R + 20);
        },
        GateState::Closed(CloseReason::Drift(DriftKind::Pcr)),
    );
}

#[test]
fn boot_counter_drift_voids_evidence_quoted_before_it() {
    stale_answer_is_refused(
        |g| {
            g.drift(DriftKind::Boot, R + 20);
        },
        GateState::Closed(CloseReason::Drift(DriftKind::Boot)),
    );
}

#[test]
fn a_measured_file_change_voids_evidence_quoted_before_it() {
    stale_answer_is_refused(
        |g| {
            g.drift(DriftKind::File, R + 20);
        },
        GateState::Closed(CloseReason::Drift(DriftKind::File)),
    );
}

#[test]
fn tpm_loss_voids_evidence_quoted_before_it() {
    stale_answer_is_refused(
        |g| {
            g.close_at(CloseReason::AttestationFailed, R + 20);
        },
        GateState::Closed(CloseReason::AttestationFailed),
    );
}

#[test]
fn a_revocation_gap_voids_evidence_quoted_before_it() {
    stale_answer_is_refused(
        |g| {
            let mut h = heartbeat(101);
            h.since_epoch = 6;
            h.epoch = 8;
            hb(g, &h, R + 20).unwrap();
        },
        GateState::Closed(CloseReason::RevocationGap),
    );
}

#[test]
fn a_clock_regression_voids_evidence_quoted_before_it() {
    stale_answer_is_refused(
        |g| {
            assert!(g.decide(&capture(1), R + 100).is_permit());
            g.tick(R + 20);
        },
        GateState::Closed(CloseReason::ClockRegression),
    );
}

#[test]
fn a_refusal_voids_evidence_quoted_before_it() {
    stale_answer_is_refused(
        |g| {
            refuse(g, RefusalCode::PolicyMismatch, false, R + 20);
        },
        GateState::Closed(CloseReason::Refused(RefusalCode::PolicyMismatch)),
    );
}

#[test]
fn lineage_loss_voids_evidence_quoted_before_it() {
    stale_answer_is_refused(
        |g| {
            g.close_at(CloseReason::LineageUnavailable, R + 20);
        },
        GateState::Closed(CloseReason::LineageUnavailable),
    );
}

#[test]
fn shutdown_voids_evidence_quoted_before_it() {
    stale_answer_is_refused(
        |g| {
            g.close_at(CloseReason::Shutdown, R + 20);
        },
        GateState::Closed(CloseReason::Shutdown),
    );
}

#[test]
fn containment_voids_evidence_quoted_before_it_even_after_restore() {
    stale_answer_is_refused(
        |g| {
            ctl(g, 1, ControlAction::Contain, R + 20).unwrap();
            ctl(g, 2, ControlAction::Restore, R + 21).unwrap();
        },
        GateState::Closed(CloseReason::Restored),
    );
    stale_answer_is_refused(
        |g| {
            refuse(g, RefusalCode::Contained, true, R + 20);
        },
        GateState::Contained(ContainedBy::Refusal {
            code: RefusalCode::Contained,
        }),
    );
}

#[test]
fn revocation_voids_evidence_quoted_before_it() {
    stale_answer_is_refused(
        |g| {
            ctl(g, 1, ControlAction::Revoke, R + 20).unwrap();
        },
        GateState::Revoked(RevokedBy::Control {
            seq: 1,
            reason: "ticket 4711".try_into().unwrap(),
        }),
    );
}

#[test]
fn a_cause_found_while_already_closed_still_voids_evidence() {
    // Closed by expiry with a renewal out; then the file changes. The
    // renewal's answer must not open a gate on the changed platform.
    let mut g = open_gate();
    g.tick(R + TTL + HB);
    assert!(matches!(g.state(), GateState::Closed(_)));
    let quoted_in = g.generation();
    assert!(g.drift(DriftKind::File, R + TTL + HB + 1).is_empty());
    assert_eq!(
        g.install(renewal(R + TTL + HB + 2), quoted_in, R + TTL + HB + 2),
        Err(Error::Gate(GateError::StaleEvidence))
    );
}

#[test]
fn expiry_and_heartbeat_lapse_keep_evidence_quoted_before_them() {
    // The platform did not change: the renewal's answer reopens.
    let mut g = open_gate();
    let quoted_in = g.generation();
    hb(&mut g, &heartbeat(101), R + 20_000).unwrap();
    hb(&mut g, &heartbeat(102), R + 45_000).unwrap();
    g.tick(R + TTL);
    assert_eq!(g.state(), &GateState::Closed(CloseReason::ArtifactExpired));
    assert_eq!(g.generation(), quoted_in);
    assert!(
        g.install(renewal(R + TTL + 1), quoted_in, R + TTL + 1)
            .is_ok()
    );

    let mut g = open_gate();
    let quoted_in = g.generation();
    g.tick(R + HB);
    assert_eq!(g.state(), &GateState::Closed(CloseReason::HeartbeatLapsed));
    assert_eq!(g.generation(), quoted_in);
    assert!(
        g.install(renewal(R + HB + 1), quoted_in, R + HB + 1)
            .is_ok()
    );
}

#[test]
fn a_fresh_artifact_quoted_before_a_close_permits_nothing_after_reopening() {
    let refund = OpRequest {
        op: "refund",
        amount: Some(100),
        currency: eur(),
    };
    let mut g = open_gate();
    let fresh_quoted_in = g.generation();
    g.drift(DriftKind::Pcr, R + 20);
    let now = g.generation();
    g.install(renewal(R + 30), now, R + 30).unwrap();
    let fresh = verified(&fresh_claims(), R + 40);
    let d = g.decide_fresh(&refund, fresh.clone(), fresh_quoted_in, R + 41);
    assert_eq!(deny(&d), Some(DenyCode::FreshAttestationInvalid));
    assert!(g.decide_fresh(&refund, fresh, now, R + 42).is_permit());
}
