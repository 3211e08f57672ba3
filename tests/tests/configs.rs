//! Every file in configs/ is a working example: the daemons' own parsers
//! accept the TOML examples, and Mosquitto starts with the broker config and
//! ACL (paths pointed at a throw-away PKI). A new file there needs a case
//! here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failure stops the test loudly"
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

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

fn check_mosquitto_conf(conf: &Path, acl: &Path) {
    mctc_tests::require_program("mosquitto", "mosquitto").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pki = mctc_tests::Pki::new(&dir.path().join("pki")).unwrap();
    let server = pki.server("mctc-broker").unwrap();
    let port = mctc_tests::free_port();
    let text = std::fs::read_to_string(conf).unwrap();
    let mut rewritten = String::new();
    if rustix::process::geteuid().is_root() {
        rewritten.push_str("user root\n");
    }
    for line in text.lines() {
        let key = line.split_whitespace().next().unwrap_or("");
        let replaced = match key {
            "acl_file" => format!("acl_file {}", acl.display()),
            "cafile" => format!("cafile {}", server.ca.display()),
            "certfile" => format!("certfile {}", server.cert.display()),
            "keyfile" => format!("keyfile {}", server.key.display()),
            "persistence_location" => format!("persistence_location {}/", dir.path().display()),
            "listener" => format!("listener {port} 127.0.0.1"),
            "log_dest" => format!("log_dest file {}", dir.path().join("log").display()),
            _ => line.to_owned(),
        };
        rewritten.push_str(&replaced);
        rewritten.push('\n');
    }
    let test_conf = dir.path().join("mosquitto.conf");
    std::fs::write(&test_conf, rewritten).unwrap();
    let mut child = Command::new("mosquitto")
        .arg("-c")
        .arg(&test_conf)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let up = mctc_tests::wait_until(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let exited = child.try_wait().unwrap();
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    assert!(
        up.is_some() && exited.is_none(),
        "mosquitto did not start with {}: {}\n{}",
        conf.display(),
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(dir.path().join("log")).unwrap_or_default()
    );
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
            "mosquitto/mosquitto.conf" => {
                check_mosquitto_conf(&path, &dir.join("mosquitto/mctc.acl"));
            }
            // Loaded verbatim by every broker the harness starts, and by the
            // mosquitto.conf check above.
            "mosquitto/mctc.acl" => {}
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
