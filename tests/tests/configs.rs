//! Every file in configs/ is a working example: the daemons' own parsers
//! accept the TOML examples, and Mosquitto starts with the broker config and
//! its dynamic-security roles (paths pointed at a throw-away PKI). A new
//! file there needs a case here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failure stops the test loudly"
)]

use std::path::{Path, PathBuf};

fn configs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// Mosquitto starts from the shipped broker configuration and its
/// dynamic-security file (the harness's broker is exactly that, with paths
/// and port replaced), and a service identity can use it.
fn check_broker_config() {
    let broker = mctc_tests::Broker::start().unwrap_or_else(|e| panic!("mosquitto: {e}"));
    let monitor = mctc_tests::fleet::MqttClient::try_connect(
        &broker,
        "mctc-monitor",
        "configs-check",
        &["mctc/v1/fleet/heartbeat"],
    );
    assert!(monitor.is_ok(), "{monitor:?}\n{}", broker.log());
}

#[test]
fn every_file_in_configs_parses() {
    let dir = configs();
    let mut checked = Vec::new();
    for path in files(&dir) {
        let name = path
            .strip_prefix(&dir)
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        match name.as_str() {
            "agent.toml" => {
                mctc_agent::config::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            "authority.toml" => {
                mctc_authority::config::Config::load(&path)
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            "policy.toml" => {
                mctc_authority::policy::Policy::load(&path)
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            "collector.toml" => {
                mctc_collector::config::Config::load(&path)
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            "mosquitto/mosquitto.conf" => check_broker_config(),
            // Every broker the harness starts loads it verbatim
            // (tests/tests/broker_smoke.rs checks what it allows); here,
            // that it is the plugin's JSON with the roles the services use.
            "mosquitto/dynamic-security.json" => {
                let json: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
                for role in ["mctc-authority", "mctc-collector", "mctc-monitor", "mctc-device"] {
                    assert!(
                        json["roles"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .any(|r| r["rolename"] == role),
                        "{name}: no role {role}"
                    );
                }
            }
            other => panic!("configs/{other} has no check: add one here"),
        }
        checked.push(name);
    }
    assert_eq!(checked.len(), 6, "{checked:?}");
}

#[test]
fn a_bad_value_in_an_example_is_caught() {
    let text = std::fs::read_to_string(configs().join("agent.toml")).unwrap();
    let broken = text.replace("drift_interval_ms = 250", "drift_interval_ms = \"soon\"");
    assert_ne!(text, broken);
    let err = mctc_agent::config::parse(&broken).unwrap_err();
    assert!(err.to_string().contains("drift_interval_ms"), "{err}");
}
