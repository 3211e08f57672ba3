#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failure stops the test loudly"
)]
//! `check-config` and `doctor` of the fleet services against the harness's
//! real Mosquitto and PKI: the all-ok path, and the failures only these
//! services have (a policy that does not cover a class's PCR selection, a
//! signing key others can read, a certificate of another identity, a
//! broker that is not there). The agent's checks are in
//! `agent/tests/doctor.rs`.

use std::os::unix::fs::PermissionsExt;

use mctc_tests::fleet::{Fleet, MEASURED_PCR, Output, run, test_policy, uncovered_class};

fn check(binary: &str, command: &str, config: &str) -> Output {
    run(binary, &[command, "--config", config])
}

fn failures(out: &Output) -> Vec<&str> {
    out.stdout
        .lines()
        .filter(|l| l.starts_with("FAIL"))
        .collect()
}

fn replace_in(path: &str, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{from} not in {path}");
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

#[test]
fn the_authority_checks_its_files_and_that_the_policy_covers_each_class() {
    // Class `uncovered` quotes PCR 16, which has no allowed value.
    let uncovered = uncovered_class("uncovered", 16);
    let mut fleet = Fleet::with_policy(&(test_policy() + &uncovered));
    let config = fleet.config();
    // Before the first start: no database yet is a warning, not a failure.
    let out = check("mctc-authority", "check-config", &config);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("warn database"), "{}", out.stdout);
    fleet.start_authority();

    let out = check("mctc-authority", "check-config", &config);
    assert_eq!(out.code, 0, "{out:?}");
    for line in [
        "ok   client certificate CN = mctc-authority",
        "ok   signing key loads",
        "ok   policy ",
        "ok   database ",
    ] {
        assert!(out.stdout.contains(line), "{line}:\n{}", out.stdout);
    }
    assert!(out.stdout.contains("at schema version"), "{}", out.stdout);

    let out = check("mctc-authority", "doctor", &config);
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(
        failures(&out),
        [format!(
            "FAIL class uncovered: PCR 16 of its selection 0,7,{MEASURED_PCR},16 has no allowed value: every device of the class is refused (policy-mismatch) — add [classes.uncovered.reference] values, or learn them from a known-good device (mctc-authority policy learn)"
        )],
        "{}",
        out.stdout
    );
    for line in [
        format!("ok   class locker: policy covers its PCR selection 0,7,{MEASURED_PCR}"),
        "ok   broker mqtts://".to_owned(),
    ] {
        assert!(out.stdout.contains(&line), "{line}:\n{}", out.stdout);
    }

    // The signing key readable by everyone.
    let text = std::fs::read_to_string(&config).unwrap();
    let key = text
        .lines()
        .find_map(|l| l.strip_prefix("signing_key = \""))
        .unwrap()
        .trim_end_matches('"')
        .to_owned();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = check("mctc-authority", "check-config", &config);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        failures(&out)
            .iter()
            .any(|l| l.starts_with("FAIL signing key") && l.contains("chmod 600")),
        "{}",
        out.stdout
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

    // No broker there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    replace_in(
        &config,
        &fleet.broker.url(),
        &format!("mqtts://127.0.0.1:{port}"),
    );
    let out = check("mctc-authority", "doctor", &config);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        failures(&out)
            .iter()
            .any(|l| l.starts_with(&format!("FAIL broker mqtts://127.0.0.1:{port}"))),
        "{}",
        out.stdout
    );
}

#[test]
fn the_collector_checks_its_identity_keys_and_broker() {
    let fleet = Fleet::new();
    let config = fleet.collector_config();
    let out = check("mctc-collector", "doctor", &config);
    assert_eq!(out.code, 0, "{out:?}");
    for line in [
        "ok   client certificate CN = mctc-collector",
        "ok   receipt key loads",
        "ok   authority public key",
        "ok   broker mqtts://",
    ] {
        assert!(out.stdout.contains(line), "{line}:\n{}", out.stdout);
    }

    // The authority's certificate in the collector's configuration.
    let authority = fleet.broker.identity("mctc-authority").unwrap();
    let text = std::fs::read_to_string(&config).unwrap();
    let cert = text
        .lines()
        .find_map(|l| l.strip_prefix("cert = \""))
        .unwrap()
        .trim_end_matches('"')
        .to_owned();
    let key = text
        .lines()
        .find_map(|l| l.strip_prefix("key = \""))
        .unwrap()
        .trim_end_matches('"')
        .to_owned();
    replace_in(&config, &cert, authority.cert.to_str().unwrap());
    replace_in(&config, &key, authority.key.to_str().unwrap());
    let out = check("mctc-collector", "check-config", &config);
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(
        failures(&out),
        [
            "FAIL client certificate CN is \"mctc-authority\", not \"mctc-collector\" — issue a certificate with CN=mctc-collector (the broker maps the CN to the identity it authorizes)"
        ],
        "{}",
        out.stdout
    );
}
