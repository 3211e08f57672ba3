//! The local API schema (`mctc_shim::api`) through the JSON its users
//! speak: requests are strict (what the agent refuses is proven refused),
//! answers and status read tolerantly and write the documented bytes.

use mctc_shim::api::{
    API_VERSION, AuthorizeAnswer, Cause, CheckpointAnswer, Decision, DenyReason, Explanation,
    GateStatus, LineageHealth, OfflineStatus, Reply, Request, RequestError, Status, StatusMessage,
    TpmHealth,
};
use mctc_shim::lineage::DenyCode;
use mctc_shim::messages::PcrProblem;
use serde_json::json;

fn parse(line: &str) -> Result<Request, serde_json::Error> {
    serde_json::from_str(line)
}

#[test]
fn requests_write_and_read_the_documented_lines() {
    let cases = [
        (
            Request::authorize("capture", Some(1250), Some("EUR"), Some("order-77")),
            r#"{"authorize":{"amount":1250,"currency":"EUR","op":"capture","ref":"order-77"}}"#,
        ),
        (
            Request::authorize("unlock", None, None, None),
            r#"{"authorize":{"op":"unlock"}}"#,
        ),
        (Request::status(), r#"{"status":{}}"#),
        (Request::checkpoint(), r#"{"checkpoint":{}}"#),
    ];
    for (request, line) in cases {
        assert_eq!(serde_json::to_string(&request).unwrap(), line);
        assert_eq!(parse(line).unwrap(), request);
    }
    // Key order and explicit nulls do not matter to the reader.
    assert_eq!(
        parse(r#"{"authorize":{"ref":"r","op":"unlock","amount":null}}"#).unwrap(),
        Request::authorize("unlock", None, None, Some("r"))
    );
}

#[test]
fn requests_outside_the_schema_are_refused() {
    for line in [
        r#"{"authorize":{"op":"unlock","extra":1}}"#,
        r#"{"authorize":{"op":"unlock"},"v":1}"#,
        r#"{"v":1,"status":{}}"#,
        r#"{"status":{"verbose":true}}"#,
        r#"{"status":{},"checkpoint":{}}"#,
        r#"{"authorize":{}}"#,
        r#"{"authorize":{"op":"unlock","amount":-1}}"#,
        r#"{"authorize":{"op":"unlock","amount":"12"}}"#,
        r#"{"launch":{}}"#,
        r#"{"Status":{}}"#,
        r#"["status"]"#,
        r#""status""#,
    ] {
        assert!(parse(line).is_err(), "accepted: {line}");
    }
}

#[test]
fn authorize_fields_are_checked_against_the_wire_rules() {
    let check = |op: &str, currency: Option<&str>, reference: Option<&str>| {
        let Request::Authorize(a) = Request::authorize(op, None, currency, reference) else {
            unreachable!()
        };
        a.check()
    };
    assert_eq!(check("unlock", None, None), Ok(None));
    assert!(
        check("capture", Some("EUR"), Some(&"r".repeat(64)))
            .unwrap()
            .is_some()
    );
    assert_eq!(check("", None, None), Err(RequestError::Op));
    assert_eq!(check("two words", None, None), Err(RequestError::Op));
    assert_eq!(check(&"x".repeat(33), None, None), Err(RequestError::Op));
    assert_eq!(
        check("unlock", Some("eur"), None),
        Err(RequestError::Currency)
    );
    assert_eq!(
        check("unlock", Some("EURO"), None),
        Err(RequestError::Currency)
    );
    assert_eq!(
        check("unlock", None, Some(&"r".repeat(65))),
        Err(RequestError::Reference)
    );
}

#[test]
fn answers_write_the_documented_bytes_and_carry_the_version() {
    let permit = AuthorizeAnswer {
        artifact: Some("3f2a".into()),
        decision: Decision::Permit,
        reason: None,
        seq: Some(4711),
        v: API_VERSION,
    };
    assert_eq!(
        serde_json::to_string(&permit).unwrap(),
        r#"{"artifact":"3f2a","decision":"permit","reason":null,"seq":4711,"v":1}"#
    );
    assert_eq!(
        serde_json::to_string(&AuthorizeAnswer::deny(DenyReason::Timeout)).unwrap(),
        r#"{"artifact":null,"decision":"deny","reason":"timeout","seq":null,"v":1}"#
    );
    assert_eq!(
        serde_json::to_string(&CheckpointAnswer {
            checkpoint: 4712,
            v: API_VERSION
        })
        .unwrap(),
        r#"{"checkpoint":4712,"v":1}"#
    );
}

#[test]
fn a_client_reads_an_answer_or_an_error_and_never_mistakes_one_for_the_other() {
    let error: Reply<AuthorizeAnswer> = serde_json::from_str(r#"{"error":"busy","v":1}"#).unwrap();
    assert_eq!(error.into_result(), Err("busy".to_owned()));
    // An agent of before `v` is still read.
    let old: Reply<AuthorizeAnswer> = serde_json::from_str(
        r#"{"decision":"deny","reason":"out-of-scope","seq":3,"artifact":null}"#,
    )
    .unwrap();
    let old = old.into_result().unwrap();
    assert_eq!(old.reason, Some(DenyReason::Gate(DenyCode::OutOfScope)));
    assert!(!old.permits());
    // An unknown decision or reason is not a permit: it does not parse.
    for line in [
        r#"{"decision":"maybe","reason":null,"seq":1,"artifact":null,"v":1}"#,
        r#"{"decision":"deny","reason":"bored","seq":1,"artifact":null,"v":1}"#,
    ] {
        assert!(
            serde_json::from_str::<AuthorizeAnswer>(line).is_err(),
            "{line}"
        );
    }
}

#[test]
fn every_deny_reason_has_one_name() {
    let mut reasons: Vec<DenyReason> = DenyCode::ALL.iter().map(|c| DenyReason::Gate(*c)).collect();
    reasons.extend([
        DenyReason::LineageUnavailable,
        DenyReason::Timeout,
        DenyReason::AgentStopping,
    ]);
    let mut names = std::collections::BTreeSet::new();
    for reason in reasons {
        assert!(names.insert(reason.name()), "{reason} twice");
        assert_eq!(DenyReason::from_name(reason.name()), Some(reason));
        let json = serde_json::to_string(&reason).unwrap();
        assert_eq!(serde_json::from_str::<DenyReason>(&json).unwrap(), reason);
    }
}

#[expect(
    clippy::unwrap_used,
    reason = "test fixture: a fixture that does not parse fails the test"
)]
fn status() -> Status {
    serde_json::from_value(json!({
        "artifact": {"cti": "00", "exp": 1, "expires_in_ms": 2, "scope": ["unlock"]},
        "connected": true, "detail": null, "device": "d1", "heartbeat_seq": 3,
        "last_attestation": {"ago_ms": 4, "purpose": "fresh-op", "refusal": "stale-nonce", "verdict": "refused"},
        "lineage": {"acked_seq": null, "anomaly": null, "backlog": 0, "error": null,
                    "health": "quota-reached", "last_checkpoint": null, "next_seq": 5,
                    "pruned_through": null, "quota_bytes": 6, "records": 7,
                    "rejected_receipts": 0, "syncs": 8, "used_bytes": 9},
        "online": true, "reason": "artifact-valid", "session": 1, "state": "open",
        "tpm": "ok", "v": 1, "version": "0.1.0", "wall_ms": 10,
        "added_later": "ignored"
    }))
    .unwrap()
}

#[test]
fn the_status_reads_tolerantly_and_writes_its_keys_in_order() {
    let status = status();
    assert_eq!(status.state, GateStatus::Open);
    assert_eq!(status.tpm, TpmHealth::Ok);
    assert_eq!(status.lineage.health, LineageHealth::QuotaReached);
    let bytes = serde_json::to_string(&status).unwrap();
    // Keys in order (as a JSON map sorts them), so the typed status writes
    // what the map-patched one did.
    let sorted = serde_json::to_string(&serde_json::to_value(&status).unwrap()).unwrap();
    assert_eq!(bytes, sorted);
    assert!(!bytes.contains("added_later"));
    for (name, state) in [
        ("open", GateStatus::Open),
        ("closed", GateStatus::Closed),
        ("contained", GateStatus::Contained),
        ("revoked", GateStatus::Revoked),
        ("offline", GateStatus::Offline),
    ] {
        assert_eq!(serde_json::to_value(state).unwrap(), name);
        assert_eq!(state.name(), name);
    }
    assert_eq!(LineageHealth::QuotaReached.name(), "quota-reached");
}

#[test]
fn a_status_topic_payload_is_online_or_offline_and_an_unknown_state_is_neither() {
    let online = serde_json::to_value(status()).unwrap();
    assert!(matches!(
        serde_json::from_value::<StatusMessage>(online.clone()).unwrap(),
        StatusMessage::Online(_)
    ));
    let offline = OfflineStatus::new("d1", "0.1.0", "connection-lost", 11);
    let bytes = serde_json::to_string(&offline).unwrap();
    assert_eq!(
        bytes,
        r#"{"device":"d1","online":false,"reason":"connection-lost","state":"offline","v":1,"version":"0.1.0","wall_ms":11}"#
    );
    assert_eq!(
        serde_json::from_str::<StatusMessage>(&bytes).unwrap(),
        StatusMessage::Offline(offline)
    );
    let mut weird = online;
    weird["state"] = json!("half-open");
    assert!(serde_json::from_value::<StatusMessage>(weird).is_err());
    let mut bad_code = serde_json::to_value(status()).unwrap();
    bad_code["last_attestation"]["verdict"] = json!("approved");
    assert!(serde_json::from_value::<Status>(bad_code).is_err());
}

#[test]
fn gate_states_summarise_as_the_status_documents() {
    use mctc_shim::api::GateSummary;
    use mctc_shim::gate::{CloseReason, ContainedBy, GateState, Reason, RevokedBy};
    use mctc_shim::messages::RefusalCode;

    let reason = || Reason::try_from("stolen").unwrap();
    let cases = [
        (
            GateState::Closed(CloseReason::Refused(RefusalCode::PolicyMismatch)),
            GateStatus::Closed,
            "refused-policy-mismatch",
            None,
        ),
        (
            GateState::Contained(ContainedBy::Control {
                seq: 1,
                reason: reason(),
            }),
            GateStatus::Contained,
            "contained-by-control",
            Some("stolen"),
        ),
        (
            GateState::Contained(ContainedBy::Refusal {
                code: RefusalCode::Contained,
            }),
            GateStatus::Contained,
            "contained-by-refusal",
            Some("contained"),
        ),
        (
            GateState::Revoked(RevokedBy::Control {
                seq: 2,
                reason: reason(),
            }),
            GateStatus::Revoked,
            "revoked-by-control",
            Some("stolen"),
        ),
        (
            GateState::Revoked(RevokedBy::Heartbeat { seq: 9, epoch: 1 }),
            GateStatus::Revoked,
            "revoked-by-heartbeat",
            Some("heartbeat seq 9"),
        ),
        (
            GateState::Revoked(RevokedBy::Refusal),
            GateStatus::Revoked,
            "revoked-by-refusal",
            None,
        ),
        (
            GateState::Revoked(RevokedBy::Persisted),
            GateStatus::Revoked,
            "revoked-persisted",
            None,
        ),
    ];
    for (state, status, reason, detail) in cases {
        let summary = GateSummary::of(&state);
        assert_eq!(
            (
                summary.state,
                summary.reason.as_str(),
                summary.detail.as_deref()
            ),
            (status, reason, detail)
        );
    }
}

#[test]
fn a_closed_status_explains_itself_and_older_or_newer_readers_cope() {
    let mut value = serde_json::to_value(status()).unwrap();
    value["state"] = json!("contained");
    value["why"] = json!({
        "cause": "refused-evidence", "check": "policy-mismatch", "error": null,
        "for_ms": 12, "hint": "ask the fleet manager: `mctc-authority devices show d1`",
        "pcrs": [{"expected": "0011223344556677", "got": "8899aabbccddeeff", "pcr": 14, "problem": "differs"}],
        "since_wall_ms": 13
    });
    let parsed: Status = serde_json::from_value(value.clone()).unwrap();
    let why = parsed.why.as_ref().unwrap();
    assert_eq!(why.cause, Cause::RefusedEvidence);
    assert_eq!(why.pcrs[0].problem, PcrProblem::Differs);
    assert_eq!(
        why.pcrs[0].to_string(),
        "PCR 14 differs (expected 0011223344556677…, got 8899aabbccddeeff…)"
    );
    // Written back byte for byte, keys in order.
    assert_eq!(serde_json::to_value(&parsed).unwrap(), value);
    for cause in Cause::ALL {
        assert_eq!(serde_json::to_value(cause).unwrap(), cause.name());
    }
    // A cause from a newer agent is read as `other`, not as a broken status.
    value["why"]["cause"] = json!("quantum-flux");
    let newer: Status = serde_json::from_value(value).unwrap();
    assert_eq!(newer.why.unwrap().cause, Cause::Other);
    // An open status has no `why` key at all (what older readers saw).
    assert!(!serde_json::to_string(&status()).unwrap().contains("why"));
    let long = "é".repeat(200);
    let cut = Explanation::bounded(&long);
    assert!(cut.len() <= mctc_shim::limits::MAX_EXPLANATION_LEN && long.starts_with(&cut));
}
