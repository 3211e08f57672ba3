//! Faults of the agent's own process and storage: SIGKILL in a burst,
//! SIGSTOP beyond the artifact's ttl, a read-only state directory, a full
//! disk.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use mctc_shim::artifact::Claims;
use mctc_shim::{AuthorityKey, RingCrypto, Signed, Signer};
use mctc_tests::wait_until;
use rustix::process::Signal;

use super::{Outcome, closes, reason, recover_and_account, sleep_ms, watch};
use crate::chaos::broken::{Broken, Context};
use crate::chaos::probe::{self, Answer, Probe};
use crate::chaos::rig::{Dev, LINEAGE, Rig, SLACK, TTL_MS, ms, privileged};

/// SIGKILL while 9 clients ask as fast as they can; restart. Every permit
/// answered before the kill is in the recovered log as that request's own
/// permit (seq, artifact, `ref`), in one chain continued across the
/// restart (`DiskLineage` verifies it), and at the collector; the
/// recovered lineage is healthy.
pub fn sigkill_in_burst(rig: &mut Rig) -> Result<Outcome, Broken> {
    let mut out = Outcome::default();
    let probe = watch(&rig.main, "kill");
    let burst: Vec<Probe> = (0..8)
        .map(|i| Probe::start(&rig.main.device.socket, &format!("kill-burst-{i}")))
        .collect();
    // The kill must land in the middle of a burst: every client permitted.
    out.require(super::all_permitting(&burst, SLACK), || {
        "the burst did not get going before the kill".into()
    });
    let cut = Instant::now();
    rig.main.device.kill();
    // The fault: the agent stays dead for a moment while the clients ask.
    sleep_ms(500);
    rig.main.start()?;
    let back = Instant::now();
    let mut all = Vec::new();
    for b in burst {
        all.extend(b.stop());
    }
    out.forbid_permits(&all, cut, back);
    out.forbid_permits(&probe.observations(), cut, back);
    out.closed_after(&probe.observations(), cut);
    let burst_permits = probe::permits(&all);
    out.observed = format!(
        "{} permits in the burst before the kill",
        burst_permits.len()
    );
    recover_and_account(&mut out, rig, &rig.main, probe, back);
    out.accounted(&rig.account_permits(&rig.main, &burst_permits));
    let status = rig.main.status();
    out.require(status["lineage"]["health"] == "ok", || {
        format!("lineage after the recovery: {}", status["lineage"])
    });
    Ok(out)
}

fn cti_of(artifact: &[u8], keys: &[AuthorityKey]) -> Option<String> {
    Claims::open(artifact, keys, &RingCrypto)
        .ok()
        .map(|c| hex::encode(c.cti.0))
}

/// SIGSTOP right after the agent sent evidence (so the authority's
/// artifact arrives while it is stopped), held beyond the ttl, then
/// SIGCONT: the gate must be closed on resume before any permit, and must
/// not reopen on an artifact that answers evidence from before the stop.
pub fn sigstop_beyond_ttl(rig: &mut Rig, signer: &dyn Signer) -> Result<Outcome, Broken> {
    let mut out = Outcome::default();
    let keys = [AuthorityKey::new(&RingCrypto, signer.public_key())];
    let probe = watch(&rig.main, "stop");
    let evidence = rig.main.topic("evidence");
    let sent_before = rig.main.spy.received_on(&evidence).len();
    let fresh = wait_until(Duration::from_millis(TTL_MS * 2), || {
        rig.main.spy.received_on(&evidence).len() > sent_before
    });
    let agent = rig
        .main
        .device
        .agent
        .as_ref()
        .context("agent not running")?;
    agent.signal(Signal::STOP).context("SIGSTOP")?;
    let stopped = Instant::now();
    out.require(fresh.is_some(), || "no evidence seen to stop after".into());
    // The fault: stopped beyond the artifact's ttl.
    std::thread::sleep(Duration::from_millis(TTL_MS) + Duration::from_millis(1_500));
    let stale: BTreeSet<String> = rig
        .main
        .artifacts_seen()
        .iter()
        .filter_map(|a| cti_of(a, &keys))
        .collect();
    let answered_during_stop = rig.main.artifacts_seen().len();
    let mark = rig.main.device.log().len();
    agent.signal(Signal::CONT).context("SIGCONT")?;
    let resumed = Instant::now();
    let closed = closes(&probe, stopped, Duration::from_secs(5));
    let back = Instant::now();
    let seen = probe.observations();
    // Every answer given after the resume, before a new attestation, is a
    // deny; a permit under an artifact issued before the resume is stale.
    let mut stale_permits = 0;
    let mut first_after: Option<&probe::Observation> = None;
    for o in seen.iter().filter(|o| o.answered >= resumed) {
        first_after.get_or_insert(o);
        if let Answer::Permit { cti, .. } = &o.answer
            && stale.contains(cti)
        {
            stale_permits += 1;
        }
    }
    out.require(stale_permits == 0, || {
        let log = rig.main.device.log();
        let before: Vec<&str> = log.get(..mark).unwrap_or("").lines().rev().take(25).collect();
        let permits: Vec<String> = seen
            .iter()
            .filter(|o| o.answered >= resumed)
            .filter_map(|o| match &o.answer {
                Answer::Permit { cti, .. } => Some(cti.clone()),
                _ => None,
            })
            .take(3)
            .collect();
        format!(
            "{stale_permits} permit(s) after the resume under an artifact issued before it: stale {stale:?}, permits {permits:?}; log before the resume (newest first):\n{}",
            before.join("\n")
        )
    });
    out.require(first_after.is_some_and(|o| !o.is_permit()), || {
        let log = rig.main.device.log();
        let after: Vec<&str> = log.get(mark..).unwrap_or("").lines().take(25).collect();
        format!(
            "the first answer after the resume was a permit; agent log after the resume:\n{}",
            after.join("\n")
        )
    });
    out.require(closed.is_some(), || "no deny after the resume".into());
    out.close_ms = first_after
        .filter(|o| !o.is_permit())
        .map(|o| ms(o.answered.saturating_duration_since(resumed)));
    out.observed = format!(
        "stopped {} ms; {} artifacts had arrived; first answer after resume: {}",
        ms(resumed - stopped),
        answered_during_stop,
        match first_after.map(|o| &o.answer) {
            Some(Answer::Deny { reason }) => format!("deny ({reason})"),
            Some(Answer::Permit { .. }) => "PERMIT".to_owned(),
            Some(Answer::Unreachable { detail }) => format!("error ({detail})"),
            None => "none".to_owned(),
        }
    );
    recover_and_account(&mut out, rig, &rig.main, probe, back);
    Ok(out)
}

fn chattr(flag: &str, path: &Path) -> Result<(), String> {
    let status = privileged("chattr")
        .args(["-R", flag])
        .arg(path)
        .status()
        .map_err(|e| format!("chattr: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("chattr -R {flag} {}: {status}", path.display()))
    }
}

/// The state directory made read-only under the running agent. Root
/// ignores permission bits and a mount cannot be remounted read-only while
/// the agent holds a segment open for writing, so the suite sets the
/// immutable attribute on every file and directory (`chattr -R +i`): every
/// write, create and rename then fails (EPERM), as on a file system the
/// kernel remounted read-only after an error.
pub fn state_read_only(rig: &mut Rig) -> Result<Outcome, Broken> {
    let mut out = Outcome::default();
    let state = rig.main.device.state_dir();
    let probe = watch(&rig.main, "ro");
    let cut = Instant::now();
    if let Err(e) = chattr("+i", &state) {
        out.fail(e);
        return Ok(out);
    }
    let closed = closes(&probe, cut, SLACK);
    // The fault holds a while after the close: the gate must stay shut.
    sleep_ms(2_000);
    let why = reason(&rig.main);
    let health = rig.main.status()["lineage"]["health"].clone();
    if let Err(e) = chattr("-i", &state) {
        out.fail(e);
    }
    let back = Instant::now();
    out.forbid_permits(
        &probe.observations(),
        cut + Duration::from_millis(100),
        back,
    );
    out.closed_after(&probe.observations(), cut);
    out.require(closed.is_some(), || "the gate did not close".into());
    out.require(why == "lineage-unavailable", || {
        format!("closed for `{why}`")
    });
    out.observed = format!("closed ({why}, lineage {health})");
    recover_and_account(&mut out, rig, &rig.main, probe, back);
    Ok(out)
}

/// A small tmpfs mounted over a device's state directory (contents
/// copied in), unmounted on drop.
struct SmallDisk {
    mount: PathBuf,
}

impl SmallDisk {
    fn over(dir: &Path, size: &str) -> Result<SmallDisk, String> {
        let keep = tempfile::Builder::new()
            .prefix("mctc-chaos-state-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let copy = |from: &Path, to: &Path| -> Result<(), String> {
            let status = Command::new("cp")
                .arg("-a")
                .arg(format!("{}/.", from.display()))
                .arg(to)
                .status()
                .map_err(|e| format!("cp: {e}"))?;
            if status.success() {
                Ok(())
            } else {
                Err(format!("cp -a {}: {status}", from.display()))
            }
        };
        copy(dir, keep.path())?;
        let status = privileged("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!(
                    "size={size},mode=0700,uid={},gid={}",
                    rustix::process::getuid().as_raw(),
                    rustix::process::getgid().as_raw()
                ),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .map_err(|e| format!("mount: {e}"))?;
        if !status.success() {
            return Err(format!(
                "mount -t tmpfs over {} failed ({status}): the disk-full scenario needs root or `sudo -n`",
                dir.display()
            ));
        }
        let disk = SmallDisk {
            mount: dir.to_owned(),
        };
        copy(keep.path(), dir)?;
        Ok(disk)
    }

    /// Writes a filler file until the file system is full.
    fn fill(&self) -> Result<u64, String> {
        let mut file =
            std::fs::File::create(self.mount.join("filler")).map_err(|e| e.to_string())?;
        let chunk = vec![0u8; 4096];
        let mut written = 0u64;
        loop {
            match file.write(&chunk) {
                Ok(0) | Err(_) => return Ok(written),
                Ok(n) => written += n as u64,
            }
        }
    }

    fn free(&self) -> Result<(), String> {
        std::fs::remove_file(self.mount.join("filler")).map_err(|e| e.to_string())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = privileged("umount").arg("-l").arg(&self.mount).status();
    }
}

/// The disk under the state directory full (a 4 MiB tmpfs filled by
/// another writer), then room again.
pub fn disk_full(rig: &mut Rig) -> Result<Outcome, Broken> {
    let mut out = Outcome::default();
    let mut dev: Dev = rig.device("disk", LINEAGE, Vec::new());
    let disk = match SmallDisk::over(&dev.device.state_dir(), "4m") {
        Ok(disk) => disk,
        Err(e) => {
            out.fail(e);
            return Ok(out);
        }
    };
    dev.start()?;
    dev.must_open()?;
    let probe = watch(&dev, "disk");
    let cut = Instant::now();
    let filled = disk.fill();
    let closed = closes(&probe, cut, SLACK);
    // The disk stays full a while after the close: the gate must stay shut.
    sleep_ms(2_000);
    let why = reason(&dev);
    let health = dev.status()["lineage"]["health"].clone();
    if let Err(e) = disk.free() {
        out.fail(format!("free the disk: {e}"));
    }
    let back = Instant::now();
    // Appends into the last, partly used page of the segment still fit
    // after the filler took the rest: those permits are durable. The disk
    // is full from its first refusal on.
    let refused = out.closed_after(&probe.observations(), cut);
    out.forbid_permits(
        &probe.observations(),
        cut + refused.unwrap_or_default(),
        back,
    );
    out.require(closed.is_some(), || "the gate did not close".into());
    out.require(why == "lineage-unavailable", || {
        format!("closed for `{why}`")
    });
    out.observed = format!(
        "tmpfs 4 MiB filled ({} KiB); closed ({why}, lineage {health})",
        filled.unwrap_or(0) / 1024
    );
    recover_and_account(&mut out, rig, &dev, probe, back);
    dev.device.kill();
    drop(disk);
    Ok(out)
}
