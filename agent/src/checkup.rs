//! `mctc-agent check-config` (offline, fast: usable as systemd
//! `ExecStartPre=`) and `mctc-agent doctor` (the same, then the TPM, the
//! enrolled AK and the broker). One line per check; the report type and
//! the broker/certificate checks are `mctc_service::checkup`, shared with
//! the authority and the collector.
//!
//! Neither command creates anything: not the state directory, not a key.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use mctc_service::checkup::{self, Report};

use crate::config::{self, Validated};
use crate::state::StateDir;

/// How long the doctor waits for the TPM to answer.
const TPM_TIMEOUT: Duration = Duration::from_secs(5);

/// The offline checks; `None` config = it did not load (already reported).
pub fn check_config(path: &Path) -> (Report, Option<Validated>) {
    let mut report = Report::new();
    let config = match config::load(path) {
        Ok(config) => config,
        Err(e) => {
            report.fail(
                format!("configuration {}: {e}", path.display()),
                "fix the file (configs/agent.toml documents every key)",
            );
            return (report, None);
        }
    };
    report.ok(format!(
        "configuration {} parses and validates (device {})",
        path.display(),
        config.device
    ));
    checkup::broker_files(&mut report, &config.raw.broker, config.device.as_str());
    match config::authority_keys(&config) {
        Ok(keys) => report.ok(format!("authority public keys load ({})", keys.len())),
        Err(e) => report.fail(
            format!("authority public keys: {e}"),
            "install the authority's public key(s) named in [authority] public_keys",
        ),
    }
    match config::collector_keys(&config) {
        Ok(keys) => report.ok(format!("collector receipt keys load ({})", keys.len())),
        Err(e) => report.fail(
            format!("collector receipt keys: {e}"),
            "install the collector's receipt key named in [collector] receipt_keys",
        ),
    }
    for file in &config.raw.measured.files {
        checkup::readable_file(&mut report, "measured file", file);
    }
    if let Some(group) = &config.raw.gate.group {
        match crate::socket::resolve_group(group) {
            Ok(gid) => report.ok(format!("gate group {group} (gid {gid})")),
            Err(e) => report.fail(
                format!("gate group: {e}"),
                "create the group (the mctc package's sysusers.d does) or fix gate.group",
            ),
        }
    }
    state_dir(&mut report, &config);
    (report, Some(config))
}

fn state_dir(report: &mut Report, config: &Validated) {
    let dir = config.state_dir();
    let shown = dir.display();
    let meta = match std::fs::metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            report.warn(
                format!("state directory {shown} does not exist yet"),
                "it is created on first use; the package's tmpfiles.d creates it owned by mctc",
            );
            return;
        }
        Err(e) => {
            report.fail(
                format!("state directory {shown}: {e}"),
                "make it reachable by the service user",
            );
            return;
        }
    };
    let euid = rustix::process::geteuid().as_raw();
    if euid == 0 && meta.uid() != 0 {
        report.warn(
            format!(
                "state directory {shown} is owned by uid {}; checked as root",
                meta.uid()
            ),
            "run check-config as the service user (sudo -u mctc …) to check what it can access",
        );
    } else if meta.uid() != euid {
        report.fail(
            format!(
                "state directory {shown} is owned by uid {}, the service runs as uid {euid}",
                meta.uid()
            ),
            format!("chown -R {euid} {shown}"),
        );
        return;
    }
    if meta.mode() & 0o077 != 0 {
        report.warn(
            format!(
                "state directory {shown} has mode {:o}",
                meta.mode() & 0o7777
            ),
            format!("chmod 700 {shown}"),
        );
    } else {
        report.ok(format!("state directory {shown} private (mode 700)"));
    }
    match StateDir::open(dir).and_then(|s| Ok((s.enrollment()?, s.is_revoked()?))) {
        // A warning, not a failure: a revoked agent still starts (closed
        // for good) so that the fleet sees its status.
        Ok((_, true)) => report.warn(
            "device is revoked (persisted): the gate stays closed",
            "only re-provisioning clears it: mctc-agent enroll --reprovision after the fleet manager restores the device",
        ),
        Ok((Some(e), false)) => report.ok(format!("enrolled (AK name {}…)", short(&e.ak_name))),
        Ok((None, false)) => report.warn(
            "not enrolled: the gate stays closed",
            "run mctc-agent enroll as the service user",
        ),
        Err(e) => report.fail(format!("state: {e}"), "inspect the state directory"),
    }
}

fn short(hex: &str) -> &str {
    hex.get(..16).unwrap_or(hex)
}

/// `check_config`, then the TPM (reachable, the AK blob loads, it is the
/// enrolled AK) and the broker (TLS handshake and CONNACK as this device).
pub async fn doctor(path: &Path) -> Report {
    let (mut report, config) = check_config(path);
    let Some(config) = config else {
        return report;
    };
    tpm(&mut report, &config).await;
    let client_id = format!("{}-doctor", config.device);
    checkup::broker_connect(&mut report, &config.raw.broker, &client_id).await;
    report
}

/// The TPM checks, unless the agent is running: without a resource
/// manager (swtpm, `/dev/tpm0`) opening the TPM flushes the transient
/// objects of every other user, the running agent's AK included, so then
/// the running agent is asked how its TPM is instead.
async fn tpm(report: &mut Report, config: &Validated) {
    if !config.state_dir().exists() {
        report.fail(
            "TPM: not checked, there is no state directory (no attestation key)",
            "run mctc-agent enroll as the service user",
        );
        return;
    }
    // Root must not create the lock file (or anything the TPM layer keeps)
    // in the service user's directory: the daemon could not open it.
    if crate::state::refuse_root_on_foreign_state(config.state_dir(), "doctor").is_err() {
        report.warn(
            "TPM and attestation key not checked: run as root, the state directory is the service user's",
            "run the doctor as the service user: sudo -u mctc mctc-agent doctor",
        );
        return;
    }
    let state = match StateDir::open(config.state_dir()) {
        Ok(state) => state,
        Err(e) => {
            report.fail(format!("state: {e}"), "inspect the state directory");
            return;
        }
    };
    let _lock = match state.lock() {
        Ok(lock) => lock,
        Err(crate::AgentError::Locked(_)) => {
            running_agent_tpm(report, config);
            return;
        }
        Err(e) => {
            report.fail(format!("state: {e}"), "inspect the state directory");
            return;
        }
    };
    tpm_unshared(report, config).await;
}

fn running_agent_tpm(report: &mut Report, config: &Validated) {
    use mctc_shim::api::{Reply, Request, Status, TpmHealth};
    let socket = &config.raw.gate.socket;
    let answer =
        crate::socket::request::<Reply<Status>>(socket, &Request::status(), Duration::from_secs(5))
            .ok()
            .and_then(|reply| reply.into_result().ok());
    match answer {
        Some(status) if status.tpm == TpmHealth::Ok => report.ok(format!(
            "TPM in use by the running agent, which reports it ok (gate {})",
            status.state
        )),
        Some(_) => report.fail(
            "TPM: the running agent reports it unavailable (the gate stays closed)",
            "check the TPM device and the agent's journal",
        ),
        None => report.fail(
            format!(
                "TPM: the agent is running but its gate socket {} does not answer",
                socket.display()
            ),
            "check the agent's journal (journalctl -u mctc-agent)",
        ),
    }
}

async fn tpm_unshared(report: &mut Report, config: &Validated) {
    let tpm_config = config.tpm_config();
    let blob = tpm_config.state_dir.join("attestation-key.blob");
    let what = format!("TPM {}", config.raw.tpm.tcti);
    let tpm =
        match tokio::time::timeout(TPM_TIMEOUT, mctc_attest::device::Tpm::open(tpm_config)).await {
            Ok(Ok(tpm)) => tpm,
            Ok(Err(e)) => {
                report.fail(
                    format!("{what}: {e}"),
                    "is the TPM present (/dev/tpmrm0) and the service user in group tss?",
                );
                return;
            }
            Err(_) => {
                report.fail(
                    format!("{what}: no answer within {} s", TPM_TIMEOUT.as_secs()),
                    "is the TPM (or swtpm) running?",
                );
                return;
            }
        };
    report.ok(format!(
        "{what} reachable ({}{})",
        tpm.info().manufacturer,
        if tpm.info().simulator {
            ", SOFTWARE SIMULATOR"
        } else {
            ""
        }
    ));
    // Loading, never creating: without a blob there is no AK to check.
    if !blob.exists() {
        report.fail(
            format!("attestation key {}: none", blob.display()),
            "run mctc-agent enroll as the service user",
        );
        tpm.shutdown().await;
        return;
    }
    let identity = tokio::time::timeout(TPM_TIMEOUT, tpm.identity()).await;
    tpm.shutdown().await;
    let identity = match identity {
        Ok(Ok(identity)) => identity,
        Ok(Err(e)) => {
            report.fail(
                format!("attestation key {}: does not load ({e})", blob.display()),
                "re-provision: mctc-agent enroll --reprovision",
            );
            return;
        }
        Err(_) => {
            report.fail(
                "attestation key: the TPM did not answer",
                "is the TPM (or swtpm) running?",
            );
            return;
        }
    };
    let ak = hex::encode(&identity.ak_name);
    report.ok(format!("attestation key loads (AK name {}…)", short(&ak)));
    let enrolled = StateDir::open(config.state_dir())
        .ok()
        .and_then(|s| s.enrollment().ok().flatten());
    match enrolled {
        Some(e) if e.ak_name == ak => report.ok("the TPM's AK is the enrolled one"),
        Some(_) => report.fail(
            "the TPM's AK is not the enrolled one",
            "run mctc-agent enroll again as the service user",
        ),
        None => {}
    }
}
