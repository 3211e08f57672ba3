//! The fleet-manager CLI as operators and scripts use it: exit codes (0 ok,
//! 1 refused or not found, 2 usage or configuration), one-line errors on
//! stderr, stable JSON, private key files.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failure stops the test loudly"
)]

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;
use serde_json::json;

fn one_line_error(out: &Output, code: i32, needle: &str) {
    assert_eq!(out.code, code, "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
    assert!(out.stderr.starts_with("mctc-authority: "), "{out:?}");
    assert!(out.stderr.contains(needle), "{needle:?} not in {out:?}");
    assert!(!out.stderr.contains("panicked"), "{out:?}");
}

#[test]
fn keygen_writes_a_private_key_and_never_overwrites_it() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("k");
    let out = cli(&["keygen", "--out", out_dir.to_str().unwrap(), "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let json = out.json();
    let public = json["public_key"].as_str().unwrap();
    assert_eq!(public.len(), 64);
    assert!(json["fingerprint"].as_str().unwrap().starts_with("SHA256:"));
    let key = out_dir.join("authority.key");
    assert_eq!(json["key"], key.to_str().unwrap());
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let pem = std::fs::read(out_dir.join("authority.pub")).unwrap();
    assert_eq!(
        hex::encode(mctc_service::keys::parse_public_key(&pem).unwrap()),
        public
    );
    let human = cli(&["keygen", "--out", out_dir.to_str().unwrap()]);
    one_line_error(&human, 1, "refusing to overwrite");
    assert_eq!(std::fs::read(out_dir.join("authority.pub")).unwrap(), pem);
}

#[test]
fn usage_and_configuration_errors_exit_2_with_one_line() {
    let fleet = Fleet::new();
    one_line_error(&cli(&[]), 2, "command is required");
    one_line_error(&cli(&["devices", "frobnicate"]), 2, "frobnicate");
    one_line_error(&fleet.cli(&["devices", "add", "locker-1"]), 2, "--class");
    one_line_error(
        &fleet.cli(&["devices", "add", "mctc-authority", "--class", "locker"]),
        2,
        "invalid device id",
    );
    one_line_error(
        &fleet.cli(&["devices", "add", "Locker", "--class", "locker"]),
        2,
        "invalid device id",
    );
    one_line_error(
        &fleet.cli(&["devices", "add", "l1", "--class", "vending"]),
        2,
        "class `vending` is not in the policy",
    );
    one_line_error(
        &fleet.cli(&[
            "devices",
            "add",
            "l1",
            "--class",
            "locker",
            "--ek-sha256",
            "xyz",
        ]),
        2,
        "--ek-sha256",
    );
    one_line_error(
        &fleet.cli(&["devices", "contain", "l1", "--reason", &"r".repeat(65)]),
        2,
        "--reason",
    );
    one_line_error(
        &cli(&["devices", "list", "--config", "/nonexistent/authority.toml"]),
        2,
        "/nonexistent/authority.toml",
    );
    let bad = fleet.dir.path().join("bad.toml");
    std::fs::write(&bad, "authority_id = \"x\"\n[broker\n").unwrap();
    one_line_error(
        &cli(&["devices", "list", "--config", bad.to_str().unwrap()]),
        2,
        "bad.toml",
    );
    one_line_error(
        &cli(&["run", "--config", bad.to_str().unwrap()]),
        2,
        "bad.toml",
    );
    let help = cli(&["--help"]);
    assert_eq!(help.code, 0);
    assert!(help.stdout.contains("devices"), "{help:?}");
}

#[test]
fn device_lifecycle_from_the_cli_with_stable_json() {
    let fleet = Fleet::new();
    let empty = fleet.cli(&["devices", "list", "--json"]);
    assert_eq!(empty.code, 0, "{empty:?}");
    assert_eq!(empty.json(), json!([]));

    let add = fleet.cli(&[
        "devices",
        "add",
        "locker-1",
        "--class",
        "locker",
        "--ek-sha256",
        &"AB".repeat(32),
        "--json",
    ]);
    assert_eq!(add.code, 0, "{add:?}");
    assert_eq!(
        add.json(),
        json!({"device": "locker-1", "class": "locker", "status": "active", "changed": true})
    );
    one_line_error(
        &fleet.cli(&["devices", "add", "locker-1", "--class", "locker"]),
        1,
        "already registered",
    );
    fleet.add("pos-1", "kiosk", &[]);

    let list = fleet.cli(&["devices", "list", "--json"]).json();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    let first = &list[0];
    let keys: Vec<&str> = first
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "added_at",
            "ak_sha256",
            "artifacts_issued",
            "class",
            "control_seq",
            "ek_sha256",
            "enrolled",
            "enrolled_at",
            "id",
            "last_attested_at",
            "last_refusal",
            "last_verdict",
            "reason",
            "status"
        ]
    );
    assert_eq!(first["id"], "locker-1");
    assert_eq!(
        first["ek_sha256"],
        "ab".repeat(32),
        "the pin, until enrolled"
    );
    assert_eq!(first["enrolled"], false);
    let human = fleet.cli(&["devices", "list"]);
    assert_eq!(human.code, 0);
    assert!(human.stdout.contains("locker-1") && human.stdout.contains("pos-1"));

    one_line_error(
        &fleet.cli(&["devices", "show", "nobody"]),
        1,
        "device nobody is not registered",
    );
    one_line_error(
        &fleet.cli(&["devices", "contain", "nobody", "--reason", "x"]),
        1,
        "not registered",
    );

    // contain → contained (again: unchanged) → restore → active (again: refused)
    let contain = fleet.cli(&[
        "devices", "contain", "locker-1", "--reason", "audit", "--json",
    ]);
    assert_eq!(
        contain.json(),
        json!({"device": "locker-1", "status": "contained", "changed": true})
    );
    let again = fleet.cli(&[
        "devices", "contain", "locker-1", "--reason", "audit", "--json",
    ]);
    assert_eq!(again.code, 0);
    assert_eq!(again.json()["changed"], false);
    let shown = fleet.cli(&["devices", "show", "locker-1", "--json"]).json();
    assert_eq!(shown["status"], "contained");
    assert_eq!(shown["reason"], "audit");
    assert_eq!(shown["control_seq"], 1);
    assert_eq!(shown["last_pcrs"], serde_json::Value::Null);
    let restore = fleet.cli(&["devices", "restore", "locker-1", "--json"]);
    assert_eq!(restore.json()["status"], "active");
    one_line_error(
        &fleet.cli(&["devices", "restore", "locker-1"]),
        1,
        "cannot restore locker-1: it is active",
    );

    // Nothing verified yet: nothing to learn.
    one_line_error(
        &fleet.cli(&["policy", "learn", "locker-1", "--yes"]),
        1,
        "no verified PCR values",
    );
    // Baseline changes that cannot apply say why, on one line.
    let zero = "00".repeat(32);
    one_line_error(
        &fleet.cli(&[
            "policy", "forget", "locker", "--pcr", "7", "--digest", &zero,
        ]),
        1,
        "class locker has no learned value",
    );
    one_line_error(
        &fleet.cli(&[
            "policy", "forget", "locker", "--pcr", "3", "--digest", &zero,
        ]),
        2,
        "not one of class locker's PCRs",
    );
    one_line_error(&fleet.cli(&["policy", "forget", "locker"]), 2, "--from");
    one_line_error(
        &fleet.cli(&["policy", "forget", "nope", "--from", "locker-1"]),
        2,
        "class `nope` is not in the policy",
    );
    one_line_error(
        &fleet.cli(&[
            "policy",
            "stage",
            "locker",
            "--from",
            "locker-1",
            "--share",
            "0",
            "--stop-after",
            "1",
        ]),
        2,
        "--share",
    );
    one_line_error(
        &fleet.cli(&["policy", "promote", "locker", "--yes"]),
        1,
        "class locker has no active stage",
    );
    one_line_error(
        &fleet.cli(&["policy", "rollback", "locker", "--yes"]),
        1,
        "class locker has no active stage",
    );
    let policy = fleet.cli(&["policy", "show", "--json"]).json();
    let names: Vec<&str> = policy["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["kiosk", "locker", "tofu"]);
    let locker = &policy["classes"][1];
    assert_eq!(locker["pcrs"], json!([0, 7]));
    assert_eq!(locker["missing"], json!([]));
    assert_eq!(
        locker["reference"]["0"][0],
        json!({"digest": ZERO, "source": "file"})
    );
    assert_eq!(
        locker["scope"][1],
        json!({"op": "capture", "max_amount": 2500, "currency": "EUR", "fresh_attestation": true})
    );
    assert_eq!(policy["classes"][2]["allow_first_use"], true);
    let human = fleet.cli(&["policy", "show"]);
    assert!(human.stdout.contains("no baseline"), "{human:?}");
}
