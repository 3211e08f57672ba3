#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failure stops the test loudly"
)]
//! The command line as the users of a packaged device run it: the service
//! user `mctc` owns the state directory, the payment application is only a
//! member of the gate's group and may not read the 0640 configuration, and
//! root runs the setup commands. Other users are played with `setpriv`
//! (util-linux) as uid 65534 (`nobody`) and a gate group of its own.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::{Fleet, Output};
use mctc_tests::bin_path;

/// The service user.
const SERVICE_UID: u32 = 65534;
/// The gate's group (`mctc-gate` on a device).
const GATE_GID: u32 = 64_999;

/// Runs the agent CLI as `uid`/`gid` with no supplementary groups.
fn agent_as(uid: u32, gid: u32, args: &[&str]) -> Output {
    let out = Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={gid}"),
            "--clear-groups",
            "--",
        ])
        .arg(bin_path("mctc-agent").unwrap())
        .args(args)
        .env("MCTC_LOG", "warn")
        .output()
        .expect("setpriv (util-linux) runs: apt-get install util-linux");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn chown_tree(path: &Path, uid: u32) {
    let status = Command::new("chown")
        .args(["-R", &uid.to_string()])
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

/// A member of the gate's group who cannot read the configuration asks the
/// gate through `--socket` and gets its answer; naming the configuration
/// instead is an error (exit 2, a deny), never a silent fallback.
#[test]
fn a_gate_group_member_asks_the_gate_without_reading_the_configuration() {
    if !rustix::process::geteuid().is_root() {
        panic!("this test plays other users with setpriv and needs root");
    }
    let mut fleet = Fleet::new();
    fleet.start_authority();
    let text_extra = "";
    let mut device = fleet.device_with("perm-gate-1", "locker", text_extra);
    // The socket's group is the gate group, as `gate.group = "mctc-gate"`.
    let text = std::fs::read_to_string(&device.config).unwrap();
    let socket_line = format!("socket = \"{}\"", device.socket.display());
    assert!(text.contains(&socket_line), "{text}");
    std::fs::write(
        &device.config,
        text.replace(
            &socket_line,
            &format!("{socket_line}\ngroup = \"{GATE_GID}\""),
        ),
    )
    .unwrap();
    chmod(&device.config, 0o640);
    // The member may pass through the device directory, nothing more.
    chmod(device.dir.path(), 0o711);
    device.bring_up();
    let socket = device.socket.to_str().unwrap();
    let config = device.config.to_str().unwrap();

    let out = agent_as(SERVICE_UID, GATE_GID, &["status", "--socket", socket]);
    assert_eq!(out.code, 0, "gate open: {out:?}");
    assert!(out.stdout.contains("open"), "{out:?}");
    let out = agent_as(
        SERVICE_UID,
        GATE_GID,
        &[
            "authorize",
            "--config",
            config,
            "--socket",
            socket,
            "--op",
            "unlock",
        ],
    );
    assert_eq!(
        out.code, 0,
        "permit with --socket, config never read: {out:?}"
    );
    assert!(out.stdout.starts_with("permit"), "{out:?}");

    // The deny side: an explicitly named configuration must be readable.
    let out = agent_as(
        SERVICE_UID,
        GATE_GID,
        &["authorize", "--config", config, "--op", "unlock"],
    );
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("agent.toml"), "{out:?}");
    // Outside the gate group the socket refuses the same user.
    let out = agent_as(
        SERVICE_UID,
        SERVICE_UID,
        &["authorize", "--socket", socket, "--op", "unlock"],
    );
    assert_eq!(out.code, 2, "{out:?}");
    // Neither flag: the default configuration is read only if it can be,
    // else the default socket is asked (no agent there on a test host).
    if !Path::new("/etc/mctc/agent.toml").exists() {
        let out = agent_as(SERVICE_UID, GATE_GID, &["status"]);
        assert_eq!(out.code, 2, "{out:?}");
        assert!(out.stderr.contains("/run/mctc/gate.sock"), "{out:?}");
        assert!(!out.stderr.contains("config:"), "{out:?}");
    }
}

/// `identity` (and `enroll`, `run`) as root against a state directory the
/// service user owns is refused with the command to run instead, and
/// creates nothing; as the owner it works and the key blob stays theirs.
#[test]
fn root_does_not_leave_key_blobs_the_service_cannot_read() {
    if !rustix::process::geteuid().is_root() {
        panic!("this test plays other users with setpriv and needs root");
    }
    let fleet = Fleet::new();
    let device = fleet.device("perm-root-1", "locker");
    let state = device.state_dir();
    // A fresh state directory of the service user (as tmpfiles.d makes it).
    std::fs::remove_dir_all(&state).unwrap();
    std::fs::create_dir(&state).unwrap();
    chown_tree(&state, SERVICE_UID);
    chmod(device.dir.path(), 0o755);
    chmod(&device.config, 0o644);
    let config = device.config.to_str().unwrap();

    for command in ["identity", "enroll"] {
        let out = common::run("mctc-agent", &[command, "--config", config]);
        assert_eq!(out.code, 2, "{command}: {out:?}");
        assert!(
            out.stderr
                .contains(&format!("sudo -u mctc mctc-agent {command}")),
            "{command}: {out:?}"
        );
        assert_eq!(
            std::fs::read_dir(&state).unwrap().count(),
            0,
            "{command} as root created files in the service's state directory"
        );
    }

    // The doctor as root touches nothing there either (no lock file, no
    // TPM state): it says to run it as the service user.
    let out = common::run("mctc-agent", &["doctor", "--config", config]);
    assert!(
        out.stdout.contains("sudo -u mctc mctc-agent doctor"),
        "{out:?}"
    );
    assert_eq!(std::fs::read_dir(&state).unwrap().count(), 0, "{out:?}");

    let out = agent_as(SERVICE_UID, SERVICE_UID, &["identity", "--config", config]);
    assert_eq!(out.code, 0, "{out:?}");
    for entry in std::fs::read_dir(&state).unwrap() {
        let meta = entry.unwrap().metadata().unwrap();
        assert_eq!(
            std::os::unix::fs::MetadataExt::uid(&meta),
            SERVICE_UID,
            "files the service user made are its own"
        );
    }
    assert!(std::fs::read_dir(&state).unwrap().count() > 0);
}
