//! The SQLite store's unit tests.

use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Barrier};

use mctc_attest::ClockInfo;
use mctc_shim::messages::{ControlAction, DeviceStatus};

use super::*;
use crate::model::{Forget, LearnMode, Refusal, Stage, StageState, Verdict, VerifiedFacts};

fn now_at(boot_ms: u64) -> Now {
    Now {
        wall_ms: 1_700_000_000_000 + boot_ms,
        boot_ms,
        boot_id: "boot-a".into(),
    }
}

fn id(s: &str) -> DeviceId {
    DeviceId::new(s).unwrap()
}

fn open(dir: &tempfile::TempDir) -> SqliteStore {
    SqliteStore::open(&dir.path().join("a.db")).unwrap()
}

fn enrolled_device(store: &mut SqliteStore, name: &str, now: &Now) {
    assert!(
        store
            .add_device(
                &NewDevice {
                    id: id(name),
                    class: "c".into(),
                    pinned_ek_sha256: None,
                },
                now,
            )
            .unwrap()
    );
    let pending = pending(name, [1; 16], [0xee; 32], now);
    store.begin_enrollment(&pending).unwrap();
    let taken = store
        .take_enrollment(&id(name), &[1; 16], now)
        .unwrap()
        .unwrap();
    assert_eq!(
        store.commit_enrollment(&taken, now).unwrap(),
        EnrollCommit::Enrolled
    );
}

fn pending(name: &str, request_id: [u8; 16], ek: [u8; 32], now: &Now) -> PendingEnrollment {
    PendingEnrollment {
        device: id(name),
        request_id,
        class: "c".into(),
        first_use: false,
        proof: [9; 32],
        ek_public: vec![1],
        ek_sha256: ek,
        ak_public: vec![2],
        ak_name: vec![3],
        deadline: now.after(1000),
    }
}

fn issue(now: &Now) -> Issue {
    Issue {
        next_nonce: [0x55; 32],
        next_nonce_deadline: now.after(60_000),
        max_outstanding: 8,
    }
}

fn refuse() -> Decision {
    Decision::Refuse {
        refusal: Refusal::BadEvidence,
        detail: String::new(),
        facts: None,
        contain: None,
        pcrs: Vec::new(),
    }
}

#[test]
fn the_file_is_private_and_the_schema_versioned() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    drop(SqliteStore::open(&path).unwrap());
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // Reopening migrates nothing and keeps the data.
    let mut store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.fleet().unwrap(), FleetState::default());
    store
        .conn
        .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    drop(store);
    let err = SqliteStore::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::TooNew { .. }), "{err}");
}

#[test]
fn a_nonce_is_used_once_even_by_racing_connections() {
    let dir = tempfile::tempdir().unwrap();
    let now = now_at(1000);
    let mut store = open(&dir);
    enrolled_device(&mut store, "d1", &now);
    let nonces: Vec<[u8; 32]> = (0..40u8).map(|i| [i; 32]).collect();
    for n in &nonces {
        let grant = store
            .issue_nonce(
                &id("d1"),
                n,
                NoncePurpose::Renew,
                &now.after(60_000),
                64,
                &now,
            )
            .unwrap();
        assert!(matches!(grant, NonceGrant::Issued { .. }), "{grant:?}");
    }
    let barrier = Arc::new(Barrier::new(2));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let path = dir.path().join("a.db");
            let nonces = nonces.clone();
            let barrier = Arc::clone(&barrier);
            let now = now.clone();
            std::thread::spawn(move || {
                let mut store = SqliteStore::open(&path).unwrap();
                barrier.wait();
                let mut valid = 0;
                for n in &nonces {
                    store
                        .attest(&id("d1"), n, &issue(&now), &now, &mut |_, check, _| {
                            if check != NonceCheck::Invalid {
                                valid += 1;
                            }
                            refuse()
                        })
                        .unwrap()
                        .unwrap();
                }
                valid
            })
        })
        .collect();
    let total: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert_eq!(total, nonces.len(), "every nonce valid exactly once");
}

/// A nonce is single use whatever happens to its evidence: an
/// affirmation the store refuses to record (of a contained device) still
/// consumes it, so the same evidence cannot be tried again.
#[test]
fn a_nonce_is_consumed_even_when_the_decision_is_not_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let now = now_at(1000);
    let mut store = open(&dir);
    enrolled_device(&mut store, "d1", &now);
    let d = id("d1");
    store
        .issue_nonce(&d, &[7; 32], NoncePurpose::Renew, &now.after(100), 8, &now)
        .unwrap();
    store
        .change_status(&d, StatusChange::Contain, "test", &now)
        .unwrap();
    let facts = VerifiedFacts {
        clock: ClockInfo {
            clock: 1,
            reset_count: 1,
            restart_count: 0,
            safe: true,
        },
        high_water: ClockInfo {
            clock: 1,
            reset_count: 1,
            restart_count: 0,
            safe: true,
        },
        mask: 1,
        values: vec![[1; 32]],
        digest: [0; 32],
    };
    let err = store
        .attest(&d, &[7; 32], &issue(&now), &now, &mut |_, check, _| {
            assert_eq!(check, NonceCheck::Valid(NoncePurpose::Renew));
            Decision::Affirm {
                facts: facts.clone(),
            }
        })
        .unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    // Nothing of the bogus affirmation was recorded...
    let record = store.device(&d).unwrap().unwrap();
    assert_eq!(record.verified_ms, None);
    assert_eq!(record.artifacts_issued, 0);
    // ...but the nonce is gone: the same evidence is stale.
    let mut seen = None;
    store
        .attest(&d, &[7; 32], &issue(&now), &now, &mut |_, check, _| {
            seen = Some(check);
            refuse()
        })
        .unwrap()
        .unwrap();
    assert_eq!(seen, Some(NonceCheck::Invalid));
}

#[test]
fn nonces_expire_die_with_the_boot_and_are_capped_per_device() {
    let dir = tempfile::tempdir().unwrap();
    let now = now_at(1000);
    let mut store = open(&dir);
    enrolled_device(&mut store, "d1", &now);
    let d1 = id("d1");
    let check_of = |store: &mut SqliteStore, n: [u8; 32], at: &Now| {
        let mut seen = None;
        store
            .attest(&d1, &n, &issue(at), at, &mut |_, check, _| {
                seen = Some(check);
                refuse()
            })
            .unwrap();
        seen.unwrap()
    };
    store
        .issue_nonce(
            &d1,
            &[1; 32],
            NoncePurpose::FreshOp,
            &now.after(500),
            8,
            &now,
        )
        .unwrap();
    assert_eq!(
        check_of(&mut store, [1; 32], &now_at(1500)),
        NonceCheck::Invalid
    );
    store
        .issue_nonce(
            &d1,
            &[2; 32],
            NoncePurpose::FreshOp,
            &now.after(500),
            8,
            &now,
        )
        .unwrap();
    let other_boot = Now {
        boot_id: "boot-b".into(),
        ..now_at(1001)
    };
    assert_eq!(
        check_of(&mut store, [2; 32], &other_boot),
        NonceCheck::Invalid
    );
    store
        .issue_nonce(
            &d1,
            &[3; 32],
            NoncePurpose::FreshOp,
            &now.after(500),
            8,
            &now,
        )
        .unwrap();
    assert_eq!(
        check_of(&mut store, [3; 32], &now_at(1499)),
        NonceCheck::Valid(NoncePurpose::FreshOp)
    );
    // Cap: the oldest go first.
    for i in 10..20u8 {
        store
            .issue_nonce(
                &d1,
                &[i; 32],
                NoncePurpose::Renew,
                &now_at(2000 + u64::from(i)).after(9000),
                3,
                &now_at(2000 + u64::from(i)),
            )
            .unwrap();
    }
    let left: i64 = store
        .conn
        .query_row("SELECT count(*) FROM nonces", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left, 3);
    assert_eq!(
        check_of(&mut store, [19; 32], &now_at(2100)),
        NonceCheck::Valid(NoncePurpose::Renew)
    );
    assert_eq!(
        check_of(&mut store, [10; 32], &now_at(2100)),
        NonceCheck::Invalid
    );
    // Another device's nonce is not this device's, and is not burnt.
    enrolled_device(&mut store, "d2", &now);
    assert_eq!(
        store
            .attest(
                &id("d2"),
                &[18; 32],
                &issue(&now),
                &now_at(2100),
                &mut |_, c, _| {
                    assert_eq!(c, NonceCheck::Invalid);
                    refuse()
                }
            )
            .unwrap()
            .map(|a| a.class),
        Some("c".to_owned())
    );
    assert_eq!(
        check_of(&mut store, [18; 32], &now_at(2100)),
        NonceCheck::Valid(NoncePurpose::Renew)
    );
    // Unknown devices: nothing decided.
    assert!(
        store
            .attest(
                &id("ghost"),
                &[1; 32],
                &issue(&now),
                &now,
                &mut |_, _, _| refuse()
            )
            .unwrap()
            .is_none()
    );
    assert_eq!(store.sweep(&now_at(1_000_000)).unwrap(), 1);
}

#[test]
fn only_enrolled_active_devices_get_nonces() {
    let dir = tempfile::tempdir().unwrap();
    let now = now_at(1);
    let mut store = open(&dir);
    let d = id("d1");
    let grant = |s: &mut SqliteStore| {
        s.issue_nonce(&d, &[7; 32], NoncePurpose::Renew, &now.after(9), 8, &now)
            .unwrap()
    };
    assert_eq!(grant(&mut store), NonceGrant::Unknown);
    store
        .add_device(
            &NewDevice {
                id: d.clone(),
                class: "c".into(),
                pinned_ek_sha256: None,
            },
            &now,
        )
        .unwrap();
    assert_eq!(grant(&mut store), NonceGrant::NotEnrolled);
    let p = pending("d1", [1; 16], [0xee; 32], &now);
    store.begin_enrollment(&p).unwrap();
    store.commit_enrollment(&p, &now).unwrap();
    store
        .change_status(&d, StatusChange::Contain, "test", &now)
        .unwrap();
    assert_eq!(
        grant(&mut store),
        NonceGrant::NotActive(DeviceStatus::Contained)
    );
}

#[test]
fn enrollment_challenges_are_single_use_and_commit_rechecks() {
    let dir = tempfile::tempdir().unwrap();
    let now = now_at(1000);
    let mut store = open(&dir);
    let d = id("d1");
    // Unknown id, not first use: not allowed.
    let p = pending("d1", [1; 16], [0xaa; 32], &now);
    assert_eq!(
        store.commit_enrollment(&p, &now).unwrap(),
        EnrollCommit::NotAllowed
    );
    // First use inserts the device into the challenge's class.
    let tofu = PendingEnrollment {
        first_use: true,
        ..p.clone()
    };
    store.begin_enrollment(&tofu).unwrap();
    assert!(
        store.take_enrollment(&d, &[2; 16], &now).unwrap().is_none(),
        "wrong attempt id"
    );
    let taken = store.take_enrollment(&d, &[1; 16], &now).unwrap().unwrap();
    assert_eq!(taken, tofu);
    assert!(
        store.take_enrollment(&d, &[1; 16], &now).unwrap().is_none(),
        "single use"
    );
    assert_eq!(
        store.commit_enrollment(&taken, &now).unwrap(),
        EnrollCommit::Enrolled
    );
    let record = store.device(&d).unwrap().unwrap();
    assert_eq!(record.enrolled.as_ref().unwrap().ek_sha256, [0xaa; 32]);
    assert_eq!(record.registry_version, 1);
    // Another EK for the id: conflict. The same EK, new AK: re-enrolls.
    let other = pending("d1", [3; 16], [0xbb; 32], &now);
    assert_eq!(
        store.commit_enrollment(&other, &now).unwrap(),
        EnrollCommit::IdentityConflict
    );
    let new_ak = PendingEnrollment {
        ak_public: vec![0x42],
        ..p.clone()
    };
    assert_eq!(
        store.commit_enrollment(&new_ak, &now).unwrap(),
        EnrollCommit::Enrolled
    );
    assert_eq!(store.device(&d).unwrap().unwrap().registry_version, 2);
    // Expired challenges are gone.
    store.begin_enrollment(&p).unwrap();
    assert!(
        store
            .take_enrollment(&d, &[1; 16], &now_at(2000))
            .unwrap()
            .is_none()
    );
    // Revoked ids never enroll again; pinned EKs are enforced.
    store
        .change_status(&d, StatusChange::Revoke, "stolen", &now)
        .unwrap();
    assert_eq!(
        store.commit_enrollment(&p, &now).unwrap(),
        EnrollCommit::Revoked
    );
    store
        .add_device(
            &NewDevice {
                id: id("d2"),
                class: "c".into(),
                pinned_ek_sha256: Some([0xcc; 32]),
            },
            &now,
        )
        .unwrap();
    assert_eq!(
        store
            .commit_enrollment(&pending("d2", [1; 16], [0xaa; 32], &now), &now)
            .unwrap(),
        EnrollCommit::BadEk
    );
}

#[test]
fn status_changes_queue_controls_and_revocations_raise_the_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let now = now_at(1000);
    let mut store = open(&dir);
    enrolled_device(&mut store, "d1", &now);
    let d = id("d1");
    assert_eq!(
        store
            .change_status(&d, StatusChange::Restore, "r", &now)
            .unwrap(),
        StatusOutcome::Refused(DeviceStatus::Active)
    );
    assert_eq!(
        store
            .change_status(&d, StatusChange::Contain, "look", &now)
            .unwrap(),
        StatusOutcome::Changed {
            status: DeviceStatus::Contained,
            control_seq: 1
        }
    );
    assert_eq!(
        store
            .change_status(&d, StatusChange::Contain, "again", &now)
            .unwrap(),
        StatusOutcome::Unchanged(DeviceStatus::Contained)
    );
    assert_eq!(
        store
            .change_status(&id("nobody"), StatusChange::Contain, "x", &now)
            .unwrap(),
        StatusOutcome::NotFound
    );
    let items = store.claim_outbox(10, 5000, &now).unwrap();
    // The device's broker rights (granted when it was added, and still:
    // a contained device must hear its restore), the enrollment's
    // registry record, then the control and its record.
    assert_eq!(items.len(), 4, "{items:?}");
    assert!(matches!(
        &items[0],
        OutboxItem::Broker { grant: true, device, .. } if *device == d
    ));
    assert!(matches!(
        &items[2],
        OutboxItem::Control { seq: 1, action: ControlAction::Contain, reason, .. } if reason == "look"
    ));
    match &items[3] {
        OutboxItem::Registry { record, .. } => {
            assert_eq!(record.status, DeviceStatus::Contained);
            assert_eq!(record.version, 2);
        }
        other => panic!("{other:?}"),
    }
    // Claimed rows are invisible to others until the claim lapses.
    assert!(store.claim_outbox(10, 5000, &now).unwrap().is_empty());
    assert_eq!(
        store.claim_outbox(10, 5000, &now_at(6000)).unwrap().len(),
        4
    );
    store
        .ack_outbox(&items.iter().map(OutboxItem::id).collect::<Vec<_>>())
        .unwrap();
    assert!(
        store
            .claim_outbox(10, 5000, &now_at(99_000))
            .unwrap()
            .is_empty()
    );

    for i in 0..20 {
        let name = format!("r{i}");
        store
            .add_device(
                &NewDevice {
                    id: id(&name),
                    class: "c".into(),
                    pinned_ek_sha256: None,
                },
                &now,
            )
            .unwrap();
        store
            .change_status(&id(&name), StatusChange::Revoke, "gone", &now)
            .unwrap();
    }
    // Each revoked device: granted when added; after its revocation's
    // control, its rights taken.
    let items = store.claim_outbox(100, 5000, &now_at(99_000)).unwrap();
    let r0: Vec<&OutboxItem> = items
        .iter()
        .filter(|i| match i {
            OutboxItem::Broker { device, .. } | OutboxItem::Control { device, .. } => {
                *device == id("r0")
            }
            _ => false,
        })
        .collect();
    assert!(
        matches!(
            r0.as_slice(),
            [
                OutboxItem::Broker { grant: false, .. },
                OutboxItem::Control {
                    action: ControlAction::Revoke,
                    ..
                },
                OutboxItem::Broker { grant: false, .. },
            ]
        ),
        "the rights follow the current status (revoked): {r0:?}"
    );
    assert_eq!(
        store
            .change_status(&id("r0"), StatusChange::Revoke, "again", &now)
            .unwrap(),
        StatusOutcome::Unchanged(DeviceStatus::Revoked)
    );
    assert_eq!(
        store
            .change_status(&id("r0"), StatusChange::Restore, "no", &now)
            .unwrap(),
        StatusOutcome::Refused(DeviceStatus::Revoked)
    );
    let hb = store.heartbeat("me", 1000, 16, &now).unwrap().unwrap();
    assert_eq!(hb.epoch, 20);
    assert_eq!(
        hb.since_epoch, 4,
        "only the 16-entry limit raises since_epoch"
    );
    assert_eq!(hb.revoked.len(), 16);
    assert_eq!(hb.revoked[0], id("r19"));
    assert_eq!(hb.revoked[15], id("r4"));
}

#[test]
fn heartbeat_seq_strictly_increases_across_connections_and_the_lease_moves() {
    let dir = tempfile::tempdir().unwrap();
    let now = now_at(1000);
    let mut a = open(&dir);
    let mut b = open(&dir);
    let first = a.heartbeat("a", 1500, 16, &now).unwrap().unwrap();
    assert_eq!(first.seq, 1);
    assert_eq!(first.since_epoch, 0);
    assert!(first.revoked.is_empty());
    assert!(
        b.heartbeat("b", 1500, 16, &now_at(2000)).unwrap().is_none(),
        "a holds the lease"
    );
    assert_eq!(
        a.heartbeat("a", 1500, 16, &now_at(2000))
            .unwrap()
            .unwrap()
            .seq,
        2
    );
    // a dies: b takes over when the lease lapses.
    assert_eq!(
        b.heartbeat("b", 1500, 16, &now_at(3500))
            .unwrap()
            .unwrap()
            .seq,
        3
    );
    assert!(a.heartbeat("a", 1500, 16, &now_at(3600)).unwrap().is_none());
    // A clean stop hands over at once.
    b.release_lease("b").unwrap();
    assert_eq!(
        a.heartbeat("a", 1500, 16, &now_at(3700))
            .unwrap()
            .unwrap()
            .seq,
        4
    );
    drop((a, b));
    // The high-water mark survives a restart (and a reboot).
    let mut c = open(&dir);
    let other_boot = Now {
        boot_id: "boot-b".into(),
        ..now_at(5)
    };
    assert_eq!(
        c.heartbeat("c", 1500, 16, &other_boot)
            .unwrap()
            .unwrap()
            .seq,
        5
    );
    assert_eq!(c.fleet().unwrap().hb_seq, 5);
}

#[test]
fn drift_contains_in_the_same_transaction_and_affirmations_store_facts() {
    let dir = tempfile::tempdir().unwrap();
    let now = now_at(1000);
    let mut store = open(&dir);
    enrolled_device(&mut store, "d1", &now);
    let d = id("d1");
    let facts = VerifiedFacts {
        clock: ClockInfo {
            clock: 77,
            reset_count: 3,
            restart_count: 1,
            safe: true,
        },
        high_water: ClockInfo {
            clock: 77,
            reset_count: 3,
            restart_count: 1,
            safe: true,
        },
        mask: 0b101,
        values: vec![[1; 32], [2; 32]],
        digest: [0; 32],
    };
    store
        .issue_nonce(&d, &[1; 32], NoncePurpose::Renew, &now.after(100), 8, &now)
        .unwrap();
    let affirmed = store
        .attest(&d, &[1; 32], &issue(&now), &now, &mut |_, check, _| {
            assert_eq!(check, NonceCheck::Valid(NoncePurpose::Renew));
            Decision::Affirm {
                facts: facts.clone(),
            }
        })
        .unwrap()
        .unwrap();
    assert_eq!(affirmed.status, DeviceStatus::Active);
    let record = store.device(&d).unwrap().unwrap();
    assert_eq!(record.last_clock, Some(facts.clock));
    assert_eq!(record.last_pcrs.as_ref().unwrap().values, facts.values);
    assert_eq!(record.verdict, Some(Verdict::Affirmed));
    assert_eq!(record.artifacts_issued, 1);
    // The next nonce rides in the artifact and is now outstanding.
    let mut next = None;
    store
        .attest(&d, &[0x55; 32], &issue(&now), &now, &mut |_, check, _| {
            next = Some(check);
            Decision::Refuse {
                refusal: Refusal::PolicyMismatch,
                detail: "drift".into(),
                facts: Some(facts.clone()),
                contain: Some("pcr drift: PCR 2".into()),
                pcrs: vec![mctc_shim::messages::PcrFinding {
                    pcr: 2,
                    problem: mctc_shim::messages::PcrProblem::Differs,
                    expected: Some(mctc_shim::wire::Bytes([0xaa; 8])),
                    got: Some(mctc_shim::wire::Bytes([0xbb; 8])),
                }],
            }
        })
        .unwrap();
    assert_eq!(next, Some(NonceCheck::Valid(NoncePurpose::Renew)));
    let record = store.device(&d).unwrap().unwrap();
    assert_eq!(record.status, DeviceStatus::Contained);
    assert_eq!(record.reason.as_deref(), Some("pcr drift: PCR 2"));
    assert_eq!(record.refusal, Some(Refusal::PolicyMismatch));
    // What the refusal was about is kept for `devices show`.
    let detail = record.refusal_detail.as_ref().unwrap();
    assert_eq!(detail.words, "drift");
    assert_eq!(detail.since_ms, now.wall_ms);
    assert_eq!(detail.pcrs.len(), 1);
    assert_eq!(detail.pcrs[0].pcr, 2);
    assert_eq!(detail.pcrs[0].expected.as_deref(), Some("aaaaaaaaaaaaaaaa"));
    assert_eq!(detail.pcrs[0].got.as_deref(), Some("bbbbbbbbbbbbbbbb"));
    assert_eq!(record.control_seq, 1);
    let items = store.claim_outbox(10, 1, &now).unwrap();
    assert!(items.iter().any(|i| matches!(
        i,
        OutboxItem::Control {
            action: ControlAction::Contain,
            ..
        }
    )));
}

#[test]
fn learning_adds_unless_told_to_replace_and_forget_removes() {
    let dir = tempfile::tempdir().unwrap();
    let now = now_at(1);
    let mut store = open(&dir);
    let learned = |store: &mut SqliteStore| store.baseline("c").unwrap().learned;
    let seen = |store: &mut SqliteStore| store.baseline("c").unwrap();
    let first = seen(&mut store);
    let learn = |store: &mut SqliteStore,
                 seen: &ClassBaseline,
                 values: &[(u8, [u8; 32])],
                 from: &str,
                 mode: LearnMode| {
        store
            .learn(seen, "c", values, &id(from), mode, &now)
            .unwrap()
    };
    assert!(learn(
        &mut store,
        &first,
        &[(0, [1; 32]), (7, [2; 32])],
        "d1",
        LearnMode::Add
    ));
    // A change judged against what the class accepted before another
    // change stores nothing.
    assert!(!learn(
        &mut store,
        &first,
        &[(7, [8; 32])],
        "late",
        LearnMode::Replace
    ));
    assert_eq!(learned(&mut store).len(), 2);
    // Added: PCR 7 now accepts both values; a value known already keeps
    // the device it was first learned from.
    let now_seen = seen(&mut store);
    assert!(learn(
        &mut store,
        &now_seen,
        &[(0, [1; 32]), (7, [3; 32])],
        "d2",
        LearnMode::Add
    ));
    let after_add = learned(&mut store);
    assert_eq!(after_add.len(), 3);
    assert_eq!(after_add[0].from, "d1");
    assert_eq!(
        after_add.iter().filter(|l| l.pcr == 7).count(),
        2,
        "{after_add:?}"
    );
    // Replaced: only the new values of those PCRs are left.
    let now_seen = seen(&mut store);
    assert!(
        store
            .learn(
                &now_seen,
                "c",
                &[(7, [4; 32])],
                &id("d3"),
                LearnMode::Replace,
                &now
            )
            .unwrap()
    );
    let after_replace = learned(&mut store);
    assert_eq!(after_replace.len(), 2);
    assert_eq!(
        (after_replace[1].pcr, after_replace[1].digest),
        (7, [4; 32])
    );
    assert!(store.baseline("other").unwrap().learned.is_empty());

    let one = Forget::Digest {
        pcr: 7,
        digest: [4; 32],
    };
    let before_forget = seen(&mut store);
    assert_eq!(store.forget(&before_forget, "c", &one).unwrap(), Some(1));
    assert_eq!(store.forget(&before_forget, "c", &one).unwrap(), None);
    let now_seen = seen(&mut store);
    assert_eq!(store.forget(&now_seen, "c", &one).unwrap(), Some(0));
    assert_eq!(
        store
            .forget(&now_seen, "c", &Forget::LearnedFrom("d1".into()))
            .unwrap(),
        Some(1)
    );
    assert!(learned(&mut store).is_empty());
}

fn staged_facts() -> VerifiedFacts {
    let clock = ClockInfo {
        clock: 5,
        reset_count: 1,
        restart_count: 0,
        safe: true,
    };
    VerifiedFacts {
        clock,
        high_water: clock,
        mask: 1,
        values: vec![[9; 32]],
        digest: [0; 32],
    }
}

/// Decides one piece of `name`'s evidence with `decision`, returning
/// whether the device was in the active stage's share when it was judged.
fn decide_staged(
    store: &mut SqliteStore,
    name: &str,
    nonce: u8,
    decision: Decision,
    now: &Now,
) -> (bool, Attested) {
    let d = id(name);
    store
        .issue_nonce(
            &d,
            &[nonce; 32],
            NoncePurpose::Renew,
            &now.after(100),
            8,
            now,
        )
        .unwrap();
    let mut staged = false;
    let attested = store
        .attest(
            &d,
            &[nonce; 32],
            &issue(now),
            now,
            &mut |rec, _, baseline| {
                staged = baseline.staged(rec.id.as_str()).is_some();
                decision.clone()
            },
        )
        .unwrap()
        .unwrap();
    (staged, attested)
}

/// The store's change methods, judged against the class's current baseline.
fn fresh_start_stage(
    store: &mut SqliteStore,
    new: &NewStage,
    now: &Now,
) -> Result<Option<Stage>, StoreError> {
    let seen = store.baseline(&new.class).unwrap();
    store.start_stage(&seen, new, now)
}

fn fresh_promote_stage(
    store: &mut SqliteStore,
    class: &str,
    promotion: Promotion,
    now: &Now,
) -> Result<Option<Stage>, StoreError> {
    let seen = store.baseline(class).unwrap();
    store.promote_stage(&seen, class, promotion, now)
}

fn fresh_roll_back_stage(
    store: &mut SqliteStore,
    class: &str,
    reason: &str,
    now: &Now,
) -> Result<Option<Stage>, StoreError> {
    let seen = store.baseline(class).unwrap();
    store.roll_back_stage(&seen, class, reason, now)
}

#[test]
fn a_stage_stops_itself_after_k_refusals_of_verified_evidence_in_its_share() {
    let dir = tempfile::tempdir().unwrap();
    let now = now_at(1000);
    let mut store = open(&dir);
    for name in ["d1", "d2", "d3"] {
        enrolled_device(&mut store, name, &now);
    }
    let new = NewStage {
        class: "c".into(),
        from: id("d1"),
        values: vec![(0, [9; 32])],
        share: 100,
        stop_after: 2,
    };
    let stage = fresh_start_stage(&mut store, &new, &now).unwrap().unwrap();
    assert_eq!((stage.state, stage.failures), (StageState::Active, 0));
    assert_eq!(stage.values, vec![(0, [9; 32])]);
    assert_eq!(
        fresh_start_stage(&mut store, &new, &now).unwrap(),
        None,
        "one at a time"
    );

    let drift = Decision::Refuse {
        refusal: Refusal::PolicyMismatch,
        detail: "drift".into(),
        facts: Some(staged_facts()),
        contain: Some("pcr drift (stage 1): PCR 0".into()),
        pcrs: Vec::new(),
    };
    // A refusal before the quote verified says nothing about the values.
    let (staged, a) = decide_staged(&mut store, "d1", 1, refuse(), &now);
    assert!(staged);
    assert!(a.stage_stopped.is_none());
    assert_eq!(store.baseline("c").unwrap().stage.unwrap().failures, 0);

    let (staged, a) = decide_staged(&mut store, "d1", 2, drift.clone(), &now);
    assert!(staged);
    assert!(a.stage_stopped.is_none());
    assert_eq!(a.status, DeviceStatus::Contained);
    assert_eq!(store.baseline("c").unwrap().stage.unwrap().failures, 1);

    let (staged, a) = decide_staged(&mut store, "d2", 3, drift, &now);
    assert!(staged);
    let stopped = a.stage_stopped.expect("the second refusal stops the stage");
    assert_eq!((stopped.state, stopped.failures), (StageState::Stopped, 2));
    assert!(stopped.end_reason.unwrap().contains("stop after 2"));

    // Stopped: the share is judged by the class's own values again, and
    // nothing was learned.
    let (staged, _) = decide_staged(&mut store, "d3", 4, refuse(), &now);
    assert!(!staged);
    let baseline = store.baseline("c").unwrap();
    assert!(baseline.learned.is_empty());
    assert_eq!(baseline.stage.unwrap().state, StageState::Stopped);
    assert_eq!(
        fresh_promote_stage(&mut store, "c", Promotion::Finish, &now).unwrap(),
        None,
        "nothing active to promote"
    );
}

#[test]
fn a_stage_widens_never_narrows_and_is_promoted_or_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let now = now_at(1000);
    let mut store = open(&dir);
    let new = NewStage {
        class: "c".into(),
        from: id("d1"),
        values: vec![(7, [2; 32]), (0, [1; 32])],
        share: 20,
        stop_after: 3,
    };
    fresh_start_stage(&mut store, &new, &now).unwrap().unwrap();
    let widened = fresh_promote_stage(&mut store, "c", Promotion::Widen(50), &now)
        .unwrap()
        .unwrap();
    assert_eq!((widened.share, widened.state), (50, StageState::Active));
    let kept = fresh_promote_stage(&mut store, "c", Promotion::Widen(10), &now)
        .unwrap()
        .unwrap();
    assert_eq!(kept.share, 50);
    // Judged against the stage before it was widened: nothing changes.
    let stale = ClassBaseline {
        stage: Some(Stage {
            share: 20,
            ..kept.clone()
        }),
        ..store.baseline("c").unwrap()
    };
    assert_eq!(
        store.roll_back_stage(&stale, "c", "stale", &now).unwrap(),
        None
    );
    let done = fresh_promote_stage(&mut store, "c", Promotion::Finish, &now)
        .unwrap()
        .unwrap();
    assert_eq!(done.state, StageState::Promoted);
    let learned = store.baseline("c").unwrap().learned;
    assert_eq!(
        learned
            .iter()
            .map(|l| (l.pcr, l.digest, l.from.as_str()))
            .collect::<Vec<_>>(),
        vec![(0, [1; 32], "d1"), (7, [2; 32], "d1")]
    );

    // A new stage may start once none is active; rolling it back learns
    // nothing.
    let again = NewStage {
        values: vec![(0, [5; 32]), (7, [2; 32])],
        ..new
    };
    let second = fresh_start_stage(&mut store, &again, &now)
        .unwrap()
        .unwrap();
    let back = fresh_roll_back_stage(&mut store, "c", "bad build", &now)
        .unwrap()
        .unwrap();
    assert_eq!(back.id, second.id);
    assert_eq!(back.state, StageState::RolledBack);
    assert_eq!(back.end_reason.as_deref(), Some("bad build"));
    assert_eq!(
        fresh_roll_back_stage(&mut store, "c", "x", &now).unwrap(),
        None
    );
    assert_eq!(store.baseline("c").unwrap().learned, learned);
}

#[test]
fn the_latest_control_of_each_device_can_be_announced_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    let now = now_at(1000);
    enrolled_device(&mut store, "d1", &now);
    enrolled_device(&mut store, "quiet", &now);
    let d = id("d1");
    let drain = |store: &mut SqliteStore, at: u64| {
        let items = store.claim_outbox(100, 5000, &now_at(at)).unwrap();
        store
            .ack_outbox(&items.iter().map(OutboxItem::id).collect::<Vec<_>>())
            .unwrap();
        items
    };
    drain(&mut store, 1000);
    // Nothing was ever sent to either device: nothing to announce.
    assert_eq!(store.requeue_latest_controls(&now).unwrap(), 0);

    let steps = [
        (StatusChange::Contain, ControlAction::Contain, 1),
        (StatusChange::Restore, ControlAction::Restore, 2),
        (StatusChange::Revoke, ControlAction::Revoke, 3),
    ];
    for (i, (change, action, seq)) in steps.into_iter().enumerate() {
        let at = 2000 + 1000 * i as u64;
        store.change_status(&d, change, "why", &now_at(at)).unwrap();
        drain(&mut store, at);
        assert_eq!(store.requeue_latest_controls(&now_at(at)).unwrap(), 1);
        let again = drain(&mut store, at);
        assert!(
            matches!(
                again.as_slice(),
                [OutboxItem::Control { seq: s, action: a, .. }] if *s == seq && *a == action
            ),
            "{again:?}"
        );
    }
}

/// A restore moves every counter a device sees to the floor (above all
/// that was issued), drops single-use state, and a clock behind an earlier
/// restore is refused; revocations from before it stay listed and the
/// heartbeat's `since_epoch` stays truthful across the jump in epochs.
#[test]
fn a_restore_advances_every_device_visible_counter_past_the_backup() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    let now = now_at(1000);
    enrolled_device(&mut store, "d1", &now);
    enrolled_device(&mut store, "r1", &now);
    store
        .issue_nonce(
            &id("d1"),
            &[7; 32],
            mctc_shim::messages::NoncePurpose::Renew,
            &Deadline {
                boot_id: "boot-a".into(),
                boot_ms: 99_000,
            },
            4,
            &now,
        )
        .unwrap();
    store
        .change_status(&id("r1"), StatusChange::Revoke, "gone", &now)
        .unwrap();
    store
        .change_status(&id("d1"), StatusChange::Contain, "look", &now)
        .unwrap();
    let before = store.heartbeat("me", 1000, 16, &now).unwrap().unwrap();
    assert_eq!((before.epoch, before.since_epoch), (1, 0));

    let floor = 1_800_000_000_000_000;
    let advanced = {
        let tx = store.conn.transaction().unwrap();
        let a = restore::advance_past(&tx, floor, now.wall_ms).unwrap();
        tx.commit().unwrap();
        a
    };
    assert_eq!(advanced.floor, floor);
    assert_eq!(advanced.devices, 2);
    assert!(advanced.backup_max < floor);
    assert!(advanced.dropped_single_use >= 1, "{advanced:?}");
    let nonces: i64 = store
        .conn
        .query_row("SELECT count(*) FROM nonces", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        nonces, 0,
        "a nonce consumed after the backup is not reusable"
    );
    for name in ["d1", "r1"] {
        let d = store.device(&id(name)).unwrap().unwrap();
        assert_eq!(d.control_seq, floor, "{name}");
        assert_eq!(d.registry_version, floor, "{name}");
    }
    // The next numbers are above the floor.
    let hb = store.heartbeat("me", 1000, 16, &now).unwrap().unwrap();
    assert_eq!(hb.seq, floor + 1);
    assert_eq!(hb.epoch, floor);
    assert_eq!(
        hb.revoked,
        vec![id("r1")],
        "pre-restore revocations still heard"
    );
    assert_eq!(hb.since_epoch, 0, "every revocation is listed");
    match store
        .change_status(&id("d1"), StatusChange::Restore, "ok", &now)
        .unwrap()
    {
        StatusOutcome::Changed { control_seq, .. } => assert_eq!(control_seq, floor + 1),
        other => panic!("{other:?}"),
    }
    for i in 0..17 {
        let name = format!("x{i}");
        enrolled_device(&mut store, &name, &now);
        store
            .change_status(&id(&name), StatusChange::Revoke, "gone", &now)
            .unwrap();
    }
    let hb = store.heartbeat("me", 1000, 16, &now).unwrap().unwrap();
    assert_eq!(hb.epoch, floor + 17);
    assert_eq!(
        hb.since_epoch,
        floor + 1,
        "the list covers exactly the newest 16 epochs, across the jump"
    );
    // The same backup restored again with a clock behind this one: refused.
    let tx = store.conn.transaction().unwrap();
    assert!(matches!(
        restore::advance_past(&tx, floor, now.wall_ms),
        Err(restore::AdvanceError::ClockBehind { .. })
    ));
}
