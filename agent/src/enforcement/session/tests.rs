//! The session core without a runtime: inputs in, actions out, time given
//! by the test. (The executor's tests, on paused tokio time, are in
//! `enforcement/tests.rs`.)

use mctc_shim::gate::{CloseReason, GateEvent, GateState};
use mctc_shim::messages::{Heartbeat, Nonce, NonceRequest};
use mctc_shim::tpm::PcrSelection;
use mctc_shim::wire::{Bytes, List, Message, Version};
use mctc_shim::{AuthorityKey, DeviceId, RingCrypto, RingSigner, Signed, Signer};

use super::*;
use crate::platform::{PlatformOp, TpmClass};

const T0: u64 = 1_000_000;

fn at(now_ms: u64) -> At {
    At {
        now_ms,
        wall_ms: None,
        wall_display_ms: 1_700_000_000_000,
        boot: BootCounters::default(),
    }
}

fn settings() -> Settings {
    Settings {
        issuer: "fleet-authority".into(),
        answer_timeout_ms: 2_000,
        retry_min_ms: 1_000,
        retry_max_ms: 8_000,
        status_interval_ms: 3_600_000,
        fresh_timeout_ms: 15_000,
        max_fresh_age_ms: 10_000,
        pcrs: mctc_shim::tpm::PcrSelection::sha256(1),
        version: "test",
        watchdog: None,
        enrolled: true,
        cert_not_after_ms: None,
    }
}

struct Authority {
    signer: RingSigner,
    device: DeviceId,
}

impl Authority {
    fn new() -> Authority {
        Authority {
            signer: RingSigner::from_seed(&[9; 32]).unwrap(),
            device: DeviceId::new("d1").unwrap(),
        }
    }

    fn core(&self) -> Core {
        Core::new(
            settings(),
            self.device.clone(),
            vec![AuthorityKey::new(&RingCrypto, self.signer.public_key())],
            false,
            None,
            true,
        )
    }

    fn nonce(&self, nonce: [u8; 32], purpose: NoncePurpose) -> Vec<u8> {
        self.nonce_over(nonce, purpose, 1)
    }

    /// A nonce asking for the PCRs in `mask`.
    fn nonce_over(&self, nonce: [u8; 32], purpose: NoncePurpose, mask: u32) -> Vec<u8> {
        let mut buf = [0u8; 256];
        Nonce {
            v: Version::CURRENT,
            nonce: Bytes(nonce),
            purpose,
            expires_in_ms: 10_000,
            pcr_alg: mctc_shim::tpm::TPM_ALG_SHA256,
            pcr_mask: mask,
        }
        .encode(&mut buf)
        .unwrap()
        .to_vec()
    }

    fn artifact(&self, nonce: [u8; 32], next_nonce: [u8; 32], ttl_ms: u32) -> Vec<u8> {
        crate::enforcement::fixtures::artifact(
            &self.signer,
            &self.device,
            [0xa1; 16],
            nonce,
            next_nonce,
            ttl_ms,
        )
    }

    fn heartbeat_revoking(&self, seq: u64) -> Vec<u8> {
        let mut revoked = List::new();
        revoked.push(self.device.clone()).unwrap();
        let mut buf = [0u8; 2048];
        Heartbeat {
            v: Version::CURRENT,
            seq,
            epoch: 0,
            since_epoch: 0,
            iat: 1,
            hb_ms: 30_000,
            revoked,
        }
        .sign(&self.signer, &RingCrypto, &mut buf)
        .unwrap()
        .to_vec()
    }
}

fn quote_of(nonce: [u8; 32]) -> Quote {
    Quote {
        attest: nonce.to_vec(),
        signature: vec![1],
        pcr_values: vec![[0; 32]],
        boot: BootCounters::default(),
    }
}

fn never_gone(_: Ticket) -> bool {
    false
}

/// The publishes among `actions`: (topic suffix, round).
fn publishes(actions: &[Action]) -> Vec<(String, Which)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Publish { topic, round, .. } => {
                Some((topic.rsplit_once("/d1/").unwrap().1.to_owned(), *round))
            }
            _ => None,
        })
        .collect()
}

fn quotes(actions: &[Action]) -> Vec<(u64, [u8; 32])> {
    selections(actions)
        .into_iter()
        .map(|(round, nonce, _)| (round, nonce))
        .collect()
}

fn selections(actions: &[Action]) -> Vec<(u64, [u8; 32], PcrSelection)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Quote {
                round,
                nonce,
                selection,
            } => Some((*round, *nonce, *selection)),
            _ => None,
        })
        .collect()
}

/// Connects and runs the first round to an open gate (ttl `ttl_ms`);
/// returns the core and the renewal's `next_nonce`.
fn opened(authority: &Authority, ttl_ms: u32) -> Core {
    let mut core = authority.core();
    assert!(
        core.start(at(T0)).is_empty(),
        "nothing happens before a connection"
    );
    let actions = core.on_connected(at(T0), 1);
    assert!(
        matches!(actions.as_slice(), [Action::Status]),
        "{actions:?}"
    );
    // The renewal is due at start: it asks for a nonce.
    let actions = core.tick(at(T0), &never_gone);
    assert_eq!(
        publishes(&actions),
        [("nonce/req".to_owned(), Which::Renewal)]
    );
    let Action::Publish { payload, .. } = &actions[0] else {
        unreachable!()
    };
    assert_eq!(
        NonceRequest::decode(payload).unwrap().purpose,
        NoncePurpose::Renew
    );
    // The nonce: quote it.
    let nonce = authority.nonce([1; 32], NoncePurpose::Renew);
    let actions = core.on_message(at(T0 + 10), Inbound::Nonce, &nonce, T0 + 10);
    let [(round, quoted)] = quotes(&actions)[..] else {
        panic!("{actions:?}")
    };
    assert_eq!(quoted, [1; 32]);
    // The quote: evidence.
    let actions = core.on_quote(at(T0 + 20), round, Ok(quote_of(quoted)));
    assert!(matches!(actions[0], Action::Boot(_)), "{actions:?}");
    assert_eq!(
        publishes(&actions),
        [("evidence".to_owned(), Which::Renewal)]
    );
    // The artifact: open, recorded, the drift check gets its baseline.
    let artifact = authority.artifact(quoted, [2; 32], ttl_ms);
    let actions = core.on_message(at(T0 + 30), Inbound::Artifact, &artifact, T0 + 30);
    assert!(
        matches!(core.gate().state(), GateState::Open(_)),
        "{:?}",
        core.gate().state()
    );
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::Record(Entry::Gate(GateEvent::Opened { .. })))),
        "{actions:?}"
    );
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::Baseline(Some(_)))),
        "{actions:?}"
    );
    core
}

#[test]
fn a_round_runs_from_nonce_request_to_open_gate_as_actions() {
    let authority = Authority::new();
    let mut core = opened(&authority, 10_000);
    // A permit is an answer for the ticket, with its record and deadline.
    let request = AuthorizeRequest {
        op: "unlock".into(),
        amount: None,
        currency: None,
        reference: None,
    };
    let actions = core.authorize(at(T0 + 40), 7, request);
    let [
        Action::Answer {
            ticket: 7,
            permit: true,
            valid_until_ms: Some(deadline),
            ..
        },
    ] = actions.as_slice()
    else {
        panic!("{actions:?}")
    };
    assert_eq!(*deadline, T0 + 30 + 10_000, "ttl counted from receipt");
}

#[test]
fn the_gate_closes_at_its_deadline_on_a_tick_and_the_renewal_is_kept() {
    let authority = Authority::new();
    let mut core = opened(&authority, 10_000);
    let deadline = T0 + 30 + 10_000;
    let actions = core.tick(at(deadline - 1), &never_gone);
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::Record(Entry::Gate(GateEvent::Closed(_))))),
        "{actions:?}"
    );
    let actions = core.tick(at(deadline), &never_gone);
    assert!(
        actions.iter().any(|a| matches!(
            a,
            Action::Record(Entry::Gate(GateEvent::Closed(CloseReason::ArtifactExpired)))
        )),
        "{actions:?}"
    );
    assert!(
        actions.iter().any(|a| matches!(a, Action::Baseline(None))),
        "{actions:?}"
    );
}

#[test]
fn a_refused_publish_fails_the_round_and_the_next_one_comes_after_the_backoff() {
    let authority = Authority::new();
    let mut core = authority.core();
    core.start(at(T0));
    core.on_connected(at(T0), 1);
    let actions = core.tick(at(T0), &never_gone);
    assert_eq!(publishes(&actions).len(), 1);
    // The outbox refused it.
    assert!(core.publish_failed(at(T0), Which::Renewal).is_empty());
    let retry_at = core.next_wake().unwrap();
    assert!(
        (T0 + 800..=T0 + 1_200).contains(&retry_at),
        "retry at +{}",
        retry_at - T0
    );
    assert!(publishes(&core.tick(at(retry_at - 1), &never_gone)).is_empty());
    assert_eq!(
        publishes(&core.tick(at(retry_at), &never_gone)),
        [("nonce/req".to_owned(), Which::Renewal)]
    );
}

#[test]
fn a_transient_quote_error_quotes_the_same_nonce_again_and_a_fatal_one_closes() {
    let authority = Authority::new();
    let mut core = opened(&authority, 40_000);
    // The renewal is due at half-life ±10 % with next_nonce: it quotes.
    let renew_at = core.next_wake().unwrap();
    let actions = core.tick(at(renew_at), &never_gone);
    let [(round, nonce)] = quotes(&actions)[..] else {
        panic!("{actions:?}")
    };
    assert_eq!(nonce, [2; 32], "next_nonce");
    let busy = PlatformError::Tpm {
        op: PlatformOp::Quote,
        source: mctc_attest::Error::PcrsUnstable { attempts: 3 },
    };
    assert_eq!(busy.class(), TpmClass::Retry);
    let actions = core.on_quote(at(renew_at + 5), round, Err(busy));
    assert!(publishes(&actions).is_empty(), "{actions:?}");
    assert!(matches!(core.gate().state(), GateState::Open(_)));
    let retry_at = core.next_wake().unwrap();
    let actions = core.tick(at(retry_at), &never_gone);
    let [(round, again)] = quotes(&actions)[..] else {
        panic!("{actions:?}")
    };
    assert_eq!(again, nonce, "the same nonce, no new request");
    // This time the TPM is gone: closed at once, evidence void.
    let gone = PlatformError::Tpm {
        op: PlatformOp::Quote,
        source: mctc_attest::Error::WorkerStopped,
    };
    let actions = core.on_quote(at(retry_at + 5), round, Err(gone));
    assert_eq!(
        core.gate().state(),
        &GateState::Closed(CloseReason::AttestationFailed)
    );
    assert!(
        actions.iter().any(|a| matches!(
            a,
            Action::Record(Entry::Gate(GateEvent::Closed(
                CloseReason::AttestationFailed
            )))
        )),
        "{actions:?}"
    );
    assert!(
        core.next_wake().unwrap() >= retry_at + 5 + 8_000,
        "the next round waits retry_max_ms"
    );
}

#[test]
fn a_revoking_heartbeat_asks_for_the_marker_and_nothing_reopens() {
    let authority = Authority::new();
    let mut core = opened(&authority, 600_000);
    let heartbeat = authority.heartbeat_revoking(1);
    let actions = core.on_message(at(T0 + 100), Inbound::Heartbeat, &heartbeat, T0 + 100);
    assert!(matches!(core.gate().state(), GateState::Revoked(_)));
    let marker = actions.iter().find_map(|a| match a {
        Action::Persist(StateWrite::Revoked(marker)) => Some(marker),
        _ => None,
    });
    let marker = marker.unwrap_or_else(|| panic!("no marker written: {actions:?}"));
    assert_eq!(marker.source, "heartbeat");
    assert_eq!(marker.wall_ms, 1_700_000_000_000, "wall time from At");
    // Its write failing is reported, and changes nothing else.
    let error = crate::AgentError::Startup("disk gone".into());
    let actions = core.on_persisted(&StateWrite::Revoked(marker.clone()), Err(error));
    assert!(
        matches!(actions.as_slice(), [Action::Status]),
        "{actions:?}"
    );
    assert_eq!(core.persist_error(), Some("disk gone"));
    assert!(matches!(core.gate().state(), GateState::Revoked(_)));
    // No round starts any more, whatever time passes.
    for later in [T0 + 1_000, T0 + 100_000, T0 + 10_000_000] {
        let actions = core.tick(at(later), &never_gone);
        assert!(publishes(&actions).is_empty(), "{actions:?}");
    }
}

#[test]
fn a_fresh_request_whose_client_left_is_denied_on_the_next_tick() {
    let authority = Authority::new();
    let mut core = opened(&authority, 600_000);
    let request = AuthorizeRequest {
        op: "refund".into(),
        amount: None,
        currency: None,
        reference: None,
    };
    // Needs its own round: recorded, queued, a fresh nonce asked for; no
    // answer yet.
    let actions = core.authorize(at(T0 + 50), 1, request);
    assert!(
        !actions.iter().any(|a| matches!(a, Action::Answer { .. })),
        "{actions:?}"
    );
    assert_eq!(
        publishes(&actions),
        [("nonce/req".to_owned(), Which::Fresh)]
    );
    // The client is still there: nothing to answer.
    let actions = core.tick(at(T0 + 60), &never_gone);
    assert!(!actions.iter().any(|a| matches!(a, Action::Answer { .. })));
    // It left (the socket timed out): denied, the round dropped.
    let actions = core.tick(at(T0 + 70), &|ticket| ticket == 1);
    let answers: Vec<_> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Answer {
                ticket,
                permit,
                reason,
                ..
            } => Some((*ticket, *permit, *reason)),
            _ => None,
        })
        .collect();
    assert_eq!(
        answers,
        [(1, false, Some(DenyCode::FreshAttestationInvalid))]
    );
}

#[test]
fn a_fresh_round_whose_quote_was_busy_retries_its_nonce_and_permits_on_its_artifact() {
    let authority = Authority::new();
    let mut core = opened(&authority, 600_000);
    let request = AuthorizeRequest {
        op: "refund".into(),
        amount: None,
        currency: None,
        reference: None,
    };
    let actions = core.authorize(at(T0 + 50), 3, request);
    assert_eq!(
        publishes(&actions),
        [("nonce/req".to_owned(), Which::Fresh)]
    );
    let nonce = authority.nonce([0x55; 32], NoncePurpose::FreshOp);
    let actions = core.on_message(at(T0 + 60), Inbound::Nonce, &nonce, T0 + 60);
    let [(round, quoted)] = quotes(&actions)[..] else {
        panic!("{actions:?}")
    };
    let busy = PlatformError::Timeout {
        op: PlatformOp::Quote,
        within: QUOTE_TIMEOUT,
    };
    let actions = core.on_quote(at(T0 + 70), round, Err(busy));
    assert!(actions.is_empty(), "no answer, no publish: {actions:?}");
    // The retry quotes the same nonce; the request is still waiting.
    let retry_at = core.next_wake().unwrap();
    assert!(retry_at <= T0 + 70 + 1_200, "retry at +{}", retry_at - T0);
    let actions = core.tick(at(retry_at), &never_gone);
    let [(round, again)] = quotes(&actions)[..] else {
        panic!("{actions:?}")
    };
    assert_eq!(again, quoted);
    let actions = core.on_quote(at(retry_at + 5), round, Ok(quote_of(again)));
    assert_eq!(publishes(&actions), [("evidence".to_owned(), Which::Fresh)]);
    let artifact = authority.artifact(again, [0x56; 32], 600_000);
    let actions = core.on_message(
        at(retry_at + 20),
        Inbound::Artifact,
        &artifact,
        retry_at + 20,
    );
    let answers: Vec<_> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Answer { ticket, permit, .. } => Some((*ticket, *permit)),
            _ => None,
        })
        .collect();
    assert_eq!(answers, [(3, true)], "{actions:?}");
}

/// The authority's selection wins over `attestation.pcrs`: the quote and
/// the evidence cover exactly the PCRs the nonce names (here 3 and 14
/// while the configuration says 0), and a renewal by `next_nonce` quotes
/// the installed artifact's selection (the authority chose it from the
/// same policy).
#[test]
fn the_device_quotes_the_selection_the_authority_names() {
    let authority = Authority::new();
    let mut core = authority.core();
    core.on_connected(at(T0), 1);
    let actions = core.tick(at(T0), &never_gone);
    assert_eq!(
        publishes(&actions),
        [("nonce/req".to_owned(), Which::Renewal)]
    );
    let asked = (1 << 3) | (1 << 14);
    let nonce = authority.nonce_over([1; 32], NoncePurpose::Renew, asked);
    let actions = core.on_message(at(T0 + 10), Inbound::Nonce, &nonce, T0 + 10);
    let [(round, quoted, selection)] = selections(&actions)[..] else {
        panic!("{actions:?}")
    };
    assert_eq!(selection, PcrSelection::sha256(asked));
    assert_ne!(selection, settings().pcrs, "the test needs a disagreement");
    assert_eq!(core.authority_selection(), Some(selection));
    let quote = Quote {
        pcr_values: vec![[3; 32], [14; 32]],
        ..quote_of(quoted)
    };
    let actions = core.on_quote(at(T0 + 20), round, Ok(quote));
    let evidence = actions
        .iter()
        .find_map(|a| match a {
            Action::Publish { topic, payload, .. } if topic.ends_with("/evidence") => {
                Some(payload.clone())
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("{actions:?}"));
    let evidence = mctc_shim::messages::Evidence::decode(&evidence).unwrap();
    assert_eq!(evidence.pcr_selection(), PcrSelection::sha256(asked));
    assert_eq!(evidence.pcr_values.len(), 2);

    // The artifact (its selection: PCR 0) opens the gate; the renewal by
    // its next_nonce quotes that selection.
    let artifact = authority.artifact(quoted, [2; 32], 10_000);
    core.on_message(at(T0 + 30), Inbound::Artifact, &artifact, T0 + 30);
    assert!(matches!(core.gate().state(), GateState::Open(_)));
    // Renewal at half life, ±10 %.
    let actions = core.tick(at(T0 + 30 + 5_600), &never_gone);
    let renewal = selections(&actions);
    assert!(
        renewal
            .iter()
            .any(|(_, n, s)| *n == [2; 32] && *s == PcrSelection::sha256(1)),
        "{actions:?}"
    );
}

/// A nonce naming no PCR (or one past 23) is dropped: nothing is quoted,
/// and the round ends without an answer like any lost nonce.
#[test]
fn a_nonce_with_an_empty_or_out_of_range_selection_is_not_quoted() {
    let authority = Authority::new();
    for bad in [0u8, 0x1a] {
        let mut core = authority.core();
        core.on_connected(at(T0), 1);
        core.tick(at(T0), &never_gone);
        // Canonical CBOR ends with key 5 and the mask (1 = 0x01): make it
        // 0 (no PCR), or a 4-byte head 0x1a with 1 << 24 after it.
        let mut nonce = authority.nonce_over([1; 32], NoncePurpose::Renew, 1);
        assert_eq!(nonce[nonce.len() - 2..], [0x05, 0x01]);
        nonce.pop();
        nonce.push(bad);
        if bad == 0x1a {
            nonce.extend_from_slice(&(1u32 << 24).to_be_bytes());
        }
        assert!(Nonce::decode(&nonce).is_err());
        let actions = core.on_message(at(T0 + 10), Inbound::Nonce, &nonce, T0 + 10);
        assert!(selections(&actions).is_empty(), "{actions:?}");
        assert_eq!(core.authority_selection(), None);
        // The round still waits, and then fails like an unanswered one.
        let actions = core.tick(at(T0 + 10 + 2_000), &never_gone);
        assert!(selections(&actions).is_empty(), "{actions:?}");
    }
}

// --- why a gate is not open (the status's `why`) ---

/// Connects a core built from `settings` and runs a renewal round up to
/// the published evidence; returns the nonce the authority must answer.
fn evidence_out(authority: &Authority, core: &mut Core) -> [u8; 32] {
    core.start(at(T0));
    core.on_connected(at(T0), 1);
    core.tick(at(T0), &never_gone);
    let nonce = authority.nonce([1; 32], NoncePurpose::Renew);
    let actions = core.on_message(at(T0 + 10), Inbound::Nonce, &nonce, T0 + 10);
    let [(round, quoted)] = quotes(&actions)[..] else {
        panic!("{actions:?}")
    };
    core.on_quote(at(T0 + 20), round, Ok(quote_of(quoted)));
    quoted
}

fn core_with(authority: &Authority, settings: Settings) -> Core {
    Core::new(
        settings,
        authority.device.clone(),
        vec![AuthorityKey::new(
            &RingCrypto,
            authority.signer.public_key(),
        )],
        false,
        None,
        true,
    )
}

fn signed_refusal(
    authority: &Authority,
    nonce: [u8; 32],
    reason: RefusalCode,
    contained: bool,
    pcrs: &[mctc_shim::messages::PcrFinding],
) -> Vec<u8> {
    let mut buf = [0u8; 2048];
    mctc_shim::messages::Refusal {
        v: Version::CURRENT,
        sub: authority.device.clone(),
        nonce: Bytes(nonce),
        reason,
        contained,
        iat: 1,
        pcrs: (!pcrs.is_empty()).then(|| List::from_slice(pcrs).unwrap()),
    }
    .sign(&authority.signer, &RingCrypto, &mut buf)
    .unwrap()
    .to_vec()
}

fn unlock() -> AuthorizeRequest {
    AuthorizeRequest {
        op: "unlock".into(),
        amount: None,
        currency: None,
        reference: None,
    }
}

/// The gate denies `unlock` now (the deny behind every explanation).
fn denies(core: &mut Core, now: u64) -> bool {
    let actions = core.authorize(at(now), 99, unlock());
    matches!(
        actions.as_slice(),
        [Action::Answer {
            permit: false,
            reason: Some(_),
            ..
        }]
    )
}

#[test]
fn an_open_gate_needs_no_explanation_and_reopening_forgets_the_old_one() {
    let authority = Authority::new();
    let mut core = opened(&authority, 10_000);
    assert_eq!(core.why(), None);
    // Expiry while the authority is silent: explained as such, since the
    // deadline.
    let deadline = T0 + 30 + 10_000;
    core.tick(at(deadline), &never_gone);
    let why = core.why().unwrap();
    assert_eq!(why.cause, mctc_shim::api::Cause::ArtifactExpired);
    assert_eq!(why.since_ms, deadline);
    assert_eq!(why.render(deadline + 2_500).for_ms, 2_500);
    assert!(denies(&mut core, deadline + 1));
}

#[test]
fn a_never_enrolled_device_is_explained_as_not_enrolled_with_the_enroll_hint() {
    let authority = Authority::new();
    let mut core = core_with(
        &authority,
        Settings {
            enrolled: false,
            ..settings()
        },
    );
    core.start(at(T0));
    core.on_connected(at(T0), 1);
    let why = core.why().unwrap();
    assert_eq!(why.cause, mctc_shim::api::Cause::NotEnrolled);
    assert!(why.hint.contains("mctc-agent enroll"), "{}", why.hint);
    assert_eq!((why.since_ms, why.since_wall_ms), (T0, 1_700_000_000_000));
    assert!(denies(&mut core, T0 + 1));
    // Whatever else goes wrong, not being enrolled is what to fix first.
    core.on_disconnected("connection refused");
    assert_eq!(
        core.why().unwrap().cause,
        mctc_shim::api::Cause::NotEnrolled
    );
}

#[test]
fn an_artifact_from_another_issuer_is_explained_by_the_issuer_check() {
    // The agent expects `mctc-authority`; the authority signs as
    // `fleet-authority` (the mismatched example configs).
    let authority = Authority::new();
    let mut core = core_with(
        &authority,
        Settings {
            issuer: "mctc-authority".into(),
            ..settings()
        },
    );
    let nonce = evidence_out(&authority, &mut core);
    let artifact = authority.artifact(nonce, [2; 32], 10_000);
    core.on_message(at(T0 + 30), Inbound::Artifact, &artifact, T0 + 30);
    assert!(matches!(core.gate().state(), GateState::Closed(_)));
    let why = core.why().unwrap();
    assert_eq!(why.cause, mctc_shim::api::Cause::ArtifactRejected);
    assert_eq!(why.check.as_deref(), Some("issuer"));
    assert!(why.hint.contains("issuer"), "{}", why.hint);
    assert!(why.error.is_some());
    assert!(denies(&mut core, T0 + 31));
}

#[test]
fn a_refusal_naming_pcr_14_is_explained_with_the_pcr_and_a_hint() {
    let authority = Authority::new();
    let mut core = authority.core();
    let nonce = evidence_out(&authority, &mut core);
    let finding = mctc_shim::messages::PcrFinding {
        pcr: 14,
        problem: mctc_shim::messages::PcrProblem::Differs,
        expected: Some(Bytes([0xab; 8])),
        got: Some(Bytes([0xcd; 8])),
    };
    let refusal = signed_refusal(
        &authority,
        nonce,
        RefusalCode::PolicyMismatch,
        true,
        &[finding],
    );
    core.on_message(at(T0 + 30), Inbound::Artifact, &refusal, T0 + 30);
    assert!(matches!(core.gate().state(), GateState::Contained(_)));
    let why = core.why().unwrap();
    assert_eq!(why.cause, mctc_shim::api::Cause::Contained);
    assert_eq!(why.check.as_deref(), Some("policy-mismatch"));
    assert_eq!(why.pcrs.len(), 1);
    assert_eq!(why.pcrs[0].pcr, 14);
    assert_eq!(why.pcrs[0].expected.as_deref(), Some("abababababababab"));
    assert_eq!(why.pcrs[0].got.as_deref(), Some("cdcdcdcdcdcdcdcd"));
    assert!(why.hint.contains("PCR 14"), "{}", why.hint);
    assert!(
        why.hint.contains("mctc-authority devices show d1"),
        "{}",
        why.hint
    );
    assert_eq!(why.since_ms, T0 + 30);
    assert!(denies(&mut core, T0 + 31));
}

#[test]
fn a_refusal_without_containment_is_refused_evidence_and_a_lost_broker_is_named() {
    let authority = Authority::new();
    let mut core = authority.core();
    let nonce = evidence_out(&authority, &mut core);
    let refusal = signed_refusal(&authority, nonce, RefusalCode::BadEvidence, false, &[]);
    core.on_message(at(T0 + 30), Inbound::Artifact, &refusal, T0 + 30);
    let why = core.why().unwrap();
    assert_eq!(why.cause, mctc_shim::api::Cause::RefusedEvidence);
    assert_eq!(why.check.as_deref(), Some("bad-evidence"));
    assert!(denies(&mut core, T0 + 31));

    // Closed for want of an artifact while the broker is away: the broker
    // is what stands in the way, with its error.
    let authority = Authority::new();
    let mut core = opened(&authority, 10_000);
    core.on_disconnected("TLS: certificate expired");
    core.tick(at(T0 + 30 + 10_000), &never_gone);
    let why = core.why().unwrap();
    assert_eq!(why.cause, mctc_shim::api::Cause::BrokerUnreachable);
    assert_eq!(why.error.as_deref(), Some("TLS: certificate expired"));
    assert!(denies(&mut core, T0 + 30 + 10_001));
}

#[test]
fn an_expired_device_certificate_is_named_when_the_broker_is_away() {
    let authority = Authority::new();
    // at() reads 1_700_000_000_000 on the wall clock; the certificate ran
    // out a second before.
    let mut core = core_with(
        &authority,
        Settings {
            cert_not_after_ms: Some(1_699_999_999_000),
            ..settings()
        },
    );
    core.start(at(T0));
    core.on_disconnected("TLS alert: certificate expired");
    let why = core.why().unwrap();
    assert_eq!(why.cause, mctc_shim::api::Cause::CertificateExpired);
    assert_eq!(why.check.as_deref(), Some("certificate"));
    assert!(
        why.error.as_deref().unwrap().contains("1699999999"),
        "{:?}",
        why.error
    );
    assert!(why.hint.contains("certificate"), "{}", why.hint);
    assert!(denies(&mut core, T0 + 1));
    // A valid certificate: the broker's own error is what is shown.
    let mut core = core_with(
        &authority,
        Settings {
            cert_not_after_ms: Some(1_800_000_000_000),
            ..settings()
        },
    );
    core.start(at(T0));
    core.on_disconnected("connection refused");
    let why = core.why().unwrap();
    assert_eq!(why.cause, mctc_shim::api::Cause::BrokerUnreachable);
    assert_eq!(why.error.as_deref(), Some("connection refused"));
}
