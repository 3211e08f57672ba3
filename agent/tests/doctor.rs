#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failure stops the test loudly"
)]
//! `mctc-agent check-config` and `doctor` against the real parts: the
//! harness's PKI, Mosquitto and swtpm. Each check's FAIL path (wrong key
//! mode, CN mismatch, expired certificate, key of another certificate, TPM
//! unreachable, broker unreachable) and the all-ok path: the report must
//! pass only when the device really can work.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{Device, Fleet, Output, run};

fn check(device: &Device, command: &str) -> Output {
    run(
        "mctc-agent",
        &[command, "--config", device.config.to_str().unwrap()],
    )
}

/// The report's lines starting with `FAIL`.
fn failures(out: &Output) -> Vec<&str> {
    out.stdout
        .lines()
        .filter(|l| l.starts_with("FAIL"))
        .collect()
}

/// Replaces `key = "…"` in the device's configuration.
fn set(device: &Device, key: &str, value: &str) {
    let text = std::fs::read_to_string(&device.config).unwrap();
    let mut found = false;
    let text: Vec<String> = text
        .lines()
        .map(|line| {
            if !found && line.starts_with(&format!("{key} = ")) {
                found = true;
                format!("{key} = \"{value}\"")
            } else {
                line.to_owned()
            }
        })
        .collect();
    assert!(found, "{key} not in the configuration");
    std::fs::write(&device.config, text.join("\n")).unwrap();
}

#[test]
fn a_working_device_passes_and_each_broken_part_fails_its_line() {
    let mut fleet = Fleet::new();
    fleet.start_authority();
    let mut device = fleet.device("doctor-1", "locker");
    device.bring_up();

    // All ok, offline and online.
    let out = check(&device, "check-config");
    assert_eq!(out.code, 0, "{out:?}");
    assert!(failures(&out).is_empty(), "{}", out.stdout);
    for line in [
        "ok   client certificate CN = doctor-1",
        "ok   client key matches the certificate",
        "ok   client certificate chains to the CA",
        "ok   enrolled",
    ] {
        assert!(out.stdout.contains(line), "{line}:\n{}", out.stdout);
    }
    // While the agent runs, the doctor leaves the TPM alone (opening it
    // would flush the agent's AK) and asks the agent.
    let out = check(&device, "doctor");
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout
            .contains("ok   TPM in use by the running agent, which reports it ok (gate open)"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("ok   broker mqtts://"),
        "{}",
        out.stdout
    );
    device.stop();
    let out = check(&device, "doctor");
    assert_eq!(out.code, 0, "{out:?}");
    for line in [
        "ok   attestation key loads",
        "ok   the TPM's AK is the enrolled one",
        "ok   broker mqtts://",
    ] {
        assert!(out.stdout.contains(line), "{line}:\n{}", out.stdout);
    }
    let original = std::fs::read_to_string(&device.config).unwrap();
    let config = device.config.clone();
    let restore = || std::fs::write(&config, &original).unwrap();

    // The client key readable by others.
    let key = fleet.broker.identity("doctor-1").unwrap();
    set(&device, "key", key.key.to_str().unwrap());
    set(&device, "cert", key.cert.to_str().unwrap());
    assert_eq!(
        check(&device, "check-config").code,
        0,
        "a fresh pair passes"
    );
    std::fs::set_permissions(&key.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = check(&device, "check-config");
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        failures(&out)
            .iter()
            .any(|l| l.contains("mode 644") && l.contains("chmod 600")),
        "{}",
        out.stdout
    );
    restore();

    // A certificate for another identity.
    let other = fleet.broker.identity("doctor-2").unwrap();
    set(&device, "cert", other.cert.to_str().unwrap());
    set(&device, "key", other.key.to_str().unwrap());
    let out = check(&device, "check-config");
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(
        failures(&out),
        [
            "FAIL client certificate CN is \"doctor-2\", not \"doctor-1\" — issue a certificate with CN=doctor-1 (the broker maps the CN to the identity it authorizes)"
        ],
        "{}",
        out.stdout
    );
    // This device's certificate with another certificate's key.
    restore();
    set(&device, "key", other.key.to_str().unwrap());
    let out = check(&device, "check-config");
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        failures(&out)
            .iter()
            .any(|l| l.contains("client key does not match the certificate")),
        "{}",
        out.stdout
    );
    restore();

    // An expired certificate.
    let expired = fleet.broker.pki().expired_client("doctor-1").unwrap();
    set(&device, "cert", expired.cert.to_str().unwrap());
    set(&device, "key", expired.key.to_str().unwrap());
    let out = check(&device, "check-config");
    assert_eq!(out.code, 1, "{out:?}");
    let failed = failures(&out);
    assert_eq!(failed.len(), 1, "{}", out.stdout);
    assert!(
        failed[0].starts_with("FAIL client certificate expired on "),
        "{}",
        out.stdout
    );
    restore();

    // The TPM away (a port nobody serves) and the broker away: offline
    // checks still pass, the doctor fails exactly those lines.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    set(
        &device,
        "tcti",
        &format!("swtpm:host=127.0.0.1,port={port}"),
    );
    set(&device, "url", &format!("mqtts://127.0.0.1:{port}"));
    assert_eq!(check(&device, "check-config").code, 0);
    let out = check(&device, "doctor");
    assert_eq!(out.code, 1, "{out:?}");
    let failed = failures(&out);
    assert_eq!(failed.len(), 2, "{}", out.stdout);
    assert!(failed[0].starts_with("FAIL TPM swtpm:"), "{}", out.stdout);
    assert!(
        failed[1].starts_with(&format!("FAIL broker mqtts://127.0.0.1:{port}")),
        "{}",
        out.stdout
    );
    restore();
    let out = check(&device, "doctor");
    assert_eq!(out.code, 0, "back: {out:?}");
}

#[test]
fn a_configuration_that_does_not_load_fails_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, "device_id = \"x\"\n").unwrap();
    let out = run(
        "mctc-agent",
        &["check-config", "--config", path.to_str().unwrap()],
    );
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(out.stdout.lines().count(), 1, "{out:?}");
    assert!(out.stdout.starts_with("FAIL configuration "), "{out:?}");
}
