//! Who provokes each fault in `cargo xtask test`: one owner per fault,
//! either a row of the fault matrix ([`super::table::MATRIX`]) or one
//! end-to-end test. A fault provoked by both costs a fleet, a fault window
//! and a recovery twice per run and proves nothing more; the owner keeps
//! every assertion either had.
//!
//! The tests of this module make a future duplicate visible: every row
//! has exactly one entry here, every test named here exists, and an
//! end-to-end test (`agent/tests/`, `tests/tests/`) that calls a harness
//! function injecting a fault owned by someone else fails
//! `no_end_to_end_test_provokes_a_fault_it_does_not_own` — fold its
//! assertions into the owner, or list it under [`INJECTIONS`] with what it
//! proves that the owner cannot.

/// Who provokes a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// The matrix row with the same fault name.
    Chaos,
    /// An end-to-end test: `file` from the workspace root, `test` its
    /// function.
    Test {
        file: &'static str,
        test: &'static str,
    },
}

#[derive(Debug, Clone, Copy)]
pub struct Fault {
    pub fault: &'static str,
    pub owner: Owner,
}

const fn chaos(fault: &'static str) -> Fault {
    Fault {
        fault,
        owner: Owner::Chaos,
    }
}

const fn test(fault: &'static str, file: &'static str, test: &'static str) -> Fault {
    Fault {
        fault,
        owner: Owner::Test { file, test },
    }
}

/// Every fault `cargo xtask test` provokes against a running gate, and its
/// one owner.
pub const FAULTS: &[Fault] = &[
    // The matrix, in its order.
    chaos("config file with bad values, or none"),
    chaos("garbage and oversized payloads on every topic"),
    chaos("stolen certificates join the services' share groups"),
    chaos("gate socket flooded by many clients"),
    chaos("broker killed > hb_ms, restarted"),
    chaos("broker unreachable > hb_ms (SIGSTOP)"),
    chaos("authority killed, restarted"),
    chaos("collector down long (backlog, quota)"),
    chaos("forged lineage acks (no receipt key), collector down"),
    chaos("replayed heartbeat"),
    chaos("heartbeat signed by another key"),
    chaos("control message replayed"),
    chaos("wall clock jumped forward 3 h"),
    chaos("wall clock jumped back 3 h"),
    chaos("impostor authority: bad artifacts"),
    chaos("agent SIGKILL during bursts"),
    chaos("agent SIGSTOP > ttl, SIGCONT"),
    chaos("state dir read-only (chattr +i)"),
    chaos("disk full (4 MiB tmpfs)"),
    chaos("swtpm killed > hb_ms, back power-cycled"),
    chaos("swtpm reset (resetCount+1)"),
    chaos("swtpm restart (restartCount+1)"),
    chaos("swtpm process restarted, state kept"),
    chaos("PCR extended from outside"),
    chaos("measured file changed"),
    chaos("renewal answered after a drift close"),
    // The end-to-end tests'.
    test(
        "swtpm hung (SIGSTOP), then answering again",
        "agent/tests/fail_closed.rs",
        "a_hung_tpm_closes_the_gate_until_it_answers_again_then_a_new_attestation_reopens_it",
    ),
    test(
        "authority silent past a short artifact's deadline",
        "agent/tests/fail_closed.rs",
        "a_short_artifact_closes_the_gate_at_its_deadline_when_the_authority_goes_silent",
    ),
    test(
        "device revoked; marker carried across restarts",
        "agent/tests/fail_closed.rs",
        "a_revoked_device_stays_revoked_across_restarts",
    ),
    test(
        "forged artifact while open (foreign identity, stolen service key)",
        "agent/tests/fail_closed.rs",
        "forged_artifacts_are_stopped_by_the_broker_acl_or_rejected_by_the_agent",
    ),
    test(
        "agent SIGTERM",
        "agent/tests/fail_closed.rs",
        "sigterm_leaves_the_offline_status_retained",
    ),
    test(
        "torn final lineage record",
        "agent/tests/lineage.rs",
        "a_torn_final_record_is_cut_and_the_chain_continues",
    ),
    test(
        "corrupted lineage record in an older segment",
        "agent/tests/lineage.rs",
        "a_corrupted_middle_record_is_reported_and_the_gate_stays_closed",
    ),
    test(
        "receipts by another key, for another device, for a record not held",
        "agent/tests/receipts.rs",
        "receipts_by_another_key_for_another_device_or_a_record_the_collector_does_not_hold_change_nothing",
    ),
    test(
        "bundle cut or thinned below its receipt",
        "agent/tests/receipts.rs",
        "bundles_cut_or_thinned_below_their_receipt_fail_and_the_collectors_export_verifies",
    ),
    test(
        "damaged or foreign receipt file in the state directory",
        "agent/tests/receipts.rs",
        "the_latest_receipt_survives_a_restart_and_a_damaged_one_is_ignored",
    ),
    test(
        "device floods its own lineage topic",
        "tests/tests/collector_flood.rs",
        "a_device_flooding_its_lineage_topic_cannot_knock_the_collector_off_or_stall_others",
    ),
    test(
        "agent restarted behind the collector's head",
        "tests/tests/lineage_delivery.rs",
        "a_restart_behind_the_collectors_head_still_drains_the_backlog",
    ),
];

/// A harness call that injects a fault, the faults it injects, and the
/// end-to-end test functions (`file::function`) that may call it anyway,
/// each with what it proves that the owner cannot.
#[derive(Debug, Clone, Copy)]
pub struct Injection {
    pub call: &'static str,
    pub faults: &'static [&'static str],
    pub allowed: &'static [(&'static str, &'static str)],
}

/// How a test would provoke the faults whose owners it must leave them to.
pub const INJECTIONS: &[Injection] = &[
    Injection {
        call: ".extend_pcr(",
        faults: &["PCR extended from outside"],
        allowed: &[(
            "tests/tests/harness_swtpm.rs::extend_changes_the_pcr_and_reset_clears_it",
            "the harness's own swtpm check: no agent, no gate",
        )],
    },
    Injection {
        call: "swtpm.reset()",
        faults: &["swtpm reset (resetCount+1)"],
        allowed: &[],
    },
    Injection {
        call: "swtpm.restart()",
        faults: &["swtpm restart (restartCount+1)"],
        allowed: &[],
    },
    Injection {
        call: "swtpm.start_again()",
        faults: &["swtpm process restarted, state kept"],
        allowed: &[(
            "agent/tests/tpm_errors.rs::a_hung_a_vanished_and_a_stopped_tpm_take_three_different_paths",
            "the agent's TPM platform alone, no gate: the error class of each failure",
        )],
    },
    Injection {
        call: "swtpm.kill()",
        faults: &["swtpm killed > hb_ms, back power-cycled"],
        allowed: &[(
            "agent/tests/tpm_errors.rs::a_hung_a_vanished_and_a_stopped_tpm_take_three_different_paths",
            "the agent's TPM platform alone, no gate: the error class of each failure",
        )],
    },
    Injection {
        call: "swtpm.pause()",
        faults: &["swtpm hung (SIGSTOP), then answering again"],
        allowed: &[(
            "agent/tests/tpm_errors.rs::a_hung_a_vanished_and_a_stopped_tpm_take_three_different_paths",
            "the agent's TPM platform alone, no gate: the error class of each failure",
        )],
    },
    Injection {
        call: "kill_authority()",
        faults: &["authority killed, restarted"],
        allowed: &[
            (
                "tests/tests/backup_restore.rs::a_restored_authority_never_reuses_a_sequence_number_a_device_has_seen",
                "a crashed instance's unexpired heartbeat lease alone refuses a restore (nobody has the file open); the gate's recovery is the row's",
            ),
            (
                "tests/tests/observability.rs::service_status_is_retained_with_a_last_will_and_devices_cannot_forge_it",
                "no agent, no gate: the broker publishing the authority's Last Will on its status topic",
            ),
        ],
    },
    Injection {
        call: "silence_authority()",
        faults: &["authority silent past a short artifact's deadline"],
        allowed: &[],
    },
    Injection {
        call: "broker.kill()",
        faults: &["broker killed > hb_ms, restarted"],
        allowed: &[],
    },
    Injection {
        call: "kill_collector()",
        faults: &[
            "collector down long (backlog, quota)",
            "forged lineage acks (no receipt key), collector down",
        ],
        allowed: &[(
            "agent/tests/receipts.rs::the_latest_receipt_survives_a_restart_and_a_damaged_one_is_ignored",
            "the collector stopped so that no new receipt replaces the persisted one; no quota, no deny",
        )],
    },
    // A test that waits for the quota provokes the collector-down fault,
    // whether it killed the collector or never started it.
    Injection {
        call: "\"quota-reached\"",
        faults: &[
            "collector down long (backlog, quota)",
            "forged lineage acks (no receipt key), collector down",
        ],
        allowed: &[],
    },
    Injection {
        call: "device.kill()",
        faults: &["agent SIGKILL during bursts"],
        allowed: &[
            (
                "agent/tests/lineage.rs::a_torn_final_record_is_cut_and_the_chain_continues",
                "the kill only stops the agent so that a torn frame can be appended by hand",
            ),
            (
                "tests/tests/lineage_delivery.rs::a_restart_behind_the_collectors_head_still_drains_the_backlog",
                "the kill leaves the agent behind the collector's head, the fault it owns",
            ),
        ],
    },
    Injection {
        call: "b\"garbage\"",
        faults: &["garbage and oversized payloads on every topic"],
        allowed: &[],
    },
];

/// Where the end-to-end tests live, from the workspace root.
pub const END_TO_END: &[&str] = &["agent/tests", "tests/tests"];

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::chaos::table::MATRIX;

    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("xtask sits in the workspace root")
            .to_owned()
    }

    fn owner_of(fault: &str) -> Option<Owner> {
        FAULTS.iter().find(|f| f.fault == fault).map(|f| f.owner)
    }

    /// `file::function` → the function's text with its doc comment and
    /// attributes, for every top-level function of every end-to-end test
    /// file (helpers included: a helper that injects a fault is named by
    /// its own name).
    fn functions() -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for dir in END_TO_END {
            let mut files: Vec<PathBuf> = Vec::new();
            let mut pending = vec![root().join(dir)];
            while let Some(dir) = pending.pop() {
                for entry in std::fs::read_dir(&dir).expect("an end-to-end test directory") {
                    let path = entry.expect("a directory entry").path();
                    if path.is_dir() {
                        pending.push(path);
                    } else if path.extension().is_some_and(|e| e == "rs") {
                        files.push(path);
                    }
                }
            }
            for path in files {
                let text = std::fs::read_to_string(&path).expect("a test file");
                let file = path
                    .strip_prefix(root())
                    .expect("under the root")
                    .display()
                    .to_string();
                split(&file, &text, &mut out);
            }
        }
        out
    }

    /// Splits `text` into its top-level functions (a doc comment or an
    /// attribute at the start of a line goes with the item after it).
    fn split(file: &str, text: &str, out: &mut BTreeMap<String, String>) {
        let mut current = format!("{file}::(top)");
        let mut preamble = String::new();
        for line in text.lines() {
            if line.starts_with("///") || line.starts_with("#[") {
                preamble.push_str(line);
                preamble.push('\n');
                continue;
            }
            let item = ["pub fn ", "fn ", "async fn ", "pub async fn "]
                .iter()
                .find_map(|p| line.strip_prefix(p));
            if let Some(rest) = item {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                current = format!("{file}::{name}");
            }
            let body: &mut String = out.entry(current.clone()).or_default();
            body.push_str(&std::mem::take(&mut preamble));
            body.push_str(line);
            body.push('\n');
        }
    }

    /// Every end-to-end function calling an injection it neither owns nor
    /// is allowed.
    fn violations(functions: &BTreeMap<String, String>) -> Vec<String> {
        let mut found = Vec::new();
        for injection in INJECTIONS {
            for (name, body) in functions {
                if !body.contains(injection.call) {
                    continue;
                }
                let owns = injection.faults.iter().any(|fault| {
                    matches!(
                        owner_of(fault),
                        Some(Owner::Test { file, test }) if *name == format!("{file}::{test}")
                    )
                });
                let allowed = injection.allowed.iter().any(|(test, _)| test == name);
                if !owns && !allowed {
                    found.push(format!(
                        "{name} calls `{}`, which provokes {:?}, owned by {:?}: fold its assertions into the owner, or list it in chaos/owners.rs with what it proves that the owner cannot",
                        injection.call,
                        injection.faults,
                        injection
                            .faults
                            .iter()
                            .map(|f| owner_of(f))
                            .collect::<Vec<_>>()
                    ));
                }
            }
        }
        found
    }

    #[test]
    fn every_row_of_the_matrix_owns_its_fault_and_only_rows_are_chaos_owned() {
        for scenario in MATRIX {
            let entries = FAULTS.iter().filter(|f| f.fault == scenario.fault).count();
            assert_eq!(entries, 1, "row `{}`: {entries} entries", scenario.fault);
            assert_eq!(owner_of(scenario.fault), Some(Owner::Chaos));
        }
        for fault in FAULTS.iter().filter(|f| f.owner == Owner::Chaos) {
            assert!(
                MATRIX.iter().any(|s| s.fault == fault.fault),
                "`{}` is owned by the matrix, which has no such row",
                fault.fault
            );
        }
    }

    #[test]
    fn each_fault_has_one_owner() {
        let mut names: Vec<&str> = FAULTS.iter().map(|f| f.fault).collect();
        names.sort_unstable();
        let count = names.len();
        names.dedup();
        assert_eq!(names.len(), count, "a fault listed twice");
    }

    /// An owning test exists and its doc comment says it owns its fault
    /// here.
    #[test]
    fn every_owning_test_exists_and_says_so() {
        let functions = functions();
        for fault in FAULTS {
            if let Owner::Test { file, test } = fault.owner {
                let key = format!("{file}::{test}");
                let body = functions
                    .get(&key)
                    .unwrap_or_else(|| panic!("`{}`: no test {key}", fault.fault));
                assert!(
                    body.contains("chaos/owners.rs"),
                    "{key}: its doc comment names the fault it owns (`chaos/owners.rs`)"
                );
            }
        }
    }

    #[test]
    fn no_end_to_end_test_provokes_a_fault_it_does_not_own() {
        for injection in INJECTIONS {
            for fault in injection.faults {
                assert!(owner_of(fault).is_some(), "`{fault}` has no owner");
            }
        }
        let found = violations(&functions());
        assert!(found.is_empty(), "{}", found.join("\n"));
    }

    /// An exception that no longer calls its injection is removed, so the
    /// list only says what is true.
    #[test]
    fn every_exception_still_calls_its_injection() {
        let functions = functions();
        for injection in INJECTIONS {
            for (test, why) in injection.allowed {
                assert!(!why.is_empty());
                assert!(
                    functions
                        .get(*test)
                        .is_some_and(|body| body.contains(injection.call)),
                    "{test} no longer calls `{}`: remove its exception",
                    injection.call
                );
            }
        }
    }

    /// The scan itself: a new test that kills the authority is a
    /// duplicate of the row that owns the fault; its owner may.
    #[test]
    fn the_scan_sees_a_duplicate_and_lets_the_owner_be() {
        let mut functions = BTreeMap::new();
        split(
            "agent/tests/new.rs",
            "/// Doc.\n#[test]\nfn authority_gone() {\n    fleet.kill_authority();\n}\n\nfn helper() {}\n",
            &mut functions,
        );
        assert!(functions["agent/tests/new.rs::authority_gone"].starts_with("/// Doc.\n#[test]\n"));
        let found = violations(&functions);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("authority killed, restarted"),
            "{}",
            found[0]
        );

        let mut owner = BTreeMap::new();
        split(
            "agent/tests/fail_closed.rs",
            "#[test]\nfn a_short_artifact_closes_the_gate_at_its_deadline_when_the_authority_goes_silent() {\n    fleet.silence_authority();\n}\n",
            &mut owner,
        );
        assert!(violations(&owner).is_empty());
    }
}
