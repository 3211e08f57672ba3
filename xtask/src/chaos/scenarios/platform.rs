//! Faults of the platform under the agent: the TPM (killed and away,
//! reset, restarted, its process restarted with its state), a PCR extended
//! from outside, a measured file changed, the wall clock jumped.
//!
//! These rows own their faults for `cargo xtask test` (`chaos/owners.rs`):
//! the agent's end-to-end tests no longer provoke them. A TPM that hangs
//! (SIGSTOP) is the agent's test `fail_closed::a_hung_tpm_…`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use mctc_tests::fleet::{MEASURED_CONTENT, MqttClient};
use mctc_tests::wait_until;

use super::{
    Outcome, closes, first_close_reason, log_mark, reason, recover_and_account, sleep_ms, watch,
};
use crate::chaos::broken::{Broken, Context};
use crate::chaos::rig::{DRIFT_MS, Dev, LINEAGE, Rig, SLACK, TTL_MS, cli, ms, reboot};

fn drift() -> Duration {
    Duration::from_millis(DRIFT_MS)
}

/// How long a TPM that stopped answering may take to close the gate: the
/// drift check's read fails after the TSS's own connect/IO timeout.
const TPM_GONE: Duration = Duration::from_millis(2_000);

/// The drift faults' shape: inject, the gate closes within the drift
/// interval, the authority contains the device when it re-attests (the
/// gate's denies say `contained`, the fleet manager's view too); then
/// `while_contained` (a check of its own, with the fault still in place);
/// the fault ends with a reboot (TPM reset, agent started again, files
/// measured into the new boot) and the fleet manager lifting the
/// containment.
///
/// The close is bounded by what the design guarantees: a drift check every
/// `DRIFT_MS` closes the gate at once (DESIGN, phase 6), plus [`SLACK`]
/// for scheduling on a loaded machine; no permit may be answered to a
/// request asked after that.
fn drift_fault(
    rig: &mut Rig,
    tag: &str,
    expect_reasons: &[&str],
    inject: impl FnOnce(&mut Dev) -> Result<(), Broken>,
    while_contained: impl FnOnce(&mut Rig, &mut Outcome) -> Result<(), Broken>,
    undo: impl FnOnce(&mut Dev) -> Result<(), Broken>,
) -> Result<Outcome, Broken> {
    let mut out = Outcome::default();
    let probe = watch(&rig.main, tag);
    let mark = log_mark(&rig.main);
    let cut = Instant::now();
    inject(&mut rig.main)?;
    let closed = closes(&probe, cut, drift() + SLACK + SLACK);
    let why = first_close_reason(&rig.main, mark).unwrap_or_else(|| reason(&rig.main));
    let contained = wait_until(Duration::from_secs(15), || {
        rig.main.device.state() == "contained"
    });
    let contained_at = Instant::now();
    // The gate's own answers name the containment, and the fleet manager
    // sees it.
    let denied_contained = contained.is_some()
        && wait_until(SLACK, || probe.denied_for_since(contained_at, "contained")).is_some();
    let shown = cli(&rig.fleet, &["devices", "show", rig.main.id()])?;
    if contained.is_some() {
        while_contained(rig, &mut out)?;
    }
    undo(&mut rig.main)?;
    reboot(&rig.fleet, &mut rig.main, true)?;
    let back = Instant::now();
    out.forbid_permits(&probe.observations(), cut + drift() + SLACK, back);
    out.forbid_reopening(&probe.observations(), cut, back);
    out.closed_after(&probe.observations(), cut);
    out.require(closed.is_some(), || "the gate did not close".into());
    out.require(expect_reasons.contains(&why.as_str()), || {
        format!("closed for `{why}`, expected one of {expect_reasons:?}")
    });
    out.require(contained.is_some(), || {
        "the authority did not contain the device".into()
    });
    out.require(denied_contained, || {
        "no deny answered `contained` once the device was contained".into()
    });
    out.require(shown["status"] == "contained", || {
        format!("the fleet manager shows {shown}")
    });
    out.observed = format!(
        "closed ({why}){}{}",
        if contained.is_some() {
            ", then contained by the authority (denies say so)"
        } else {
            ""
        },
        std::mem::take(&mut out.observed)
    );
    recover_and_account(&mut out, rig, &rig.main, probe, back);
    Ok(out)
}

pub fn pcr_extended(rig: &mut Rig) -> Result<Outcome, Broken> {
    drift_fault(
        rig,
        "pcr",
        &["drift-pcr"],
        |dev| {
            dev.device
                .swtpm
                .extend_pcr(7, b"chaos: unexpected boot component")
                .context("extend PCR 7")
        },
        |_, _| Ok(()),
        |_| Ok(()),
    )
}

/// A measured file changed: the agent names it, and a restart in the same
/// TPM boot does not make the change disappear.
pub fn measured_file_changed(rig: &mut Rig) -> Result<Outcome, Broken> {
    drift_fault(
        rig,
        "file",
        &["drift-file"],
        |dev| {
            std::fs::write(
                &dev.device.measured_file,
                b"locker-controller v6.6.6 (patched)\n",
            )
            .context("change the measured file")
        },
        restart_in_the_same_boot,
        |dev| {
            std::fs::write(&dev.device.measured_file, MEASURED_CONTENT)
                .context("restore the measured file")
        },
    )
}

pub fn tpm_reset(rig: &mut Rig) -> Result<Outcome, Broken> {
    drift_fault(
        rig,
        "tpm-reset",
        &["drift-boot"],
        |dev| dev.device.swtpm.reset().context("swtpm reset"),
        |_, _| Ok(()),
        |_| Ok(()),
    )
}

pub fn tpm_restart(rig: &mut Rig) -> Result<Outcome, Broken> {
    drift_fault(
        rig,
        "tpm-restart",
        &["drift-boot"],
        |dev| dev.device.swtpm.restart().context("swtpm restart"),
        |_, _| Ok(()),
        |_| Ok(()),
    )
}

pub fn tpm_process_restarted(rig: &mut Rig) -> Result<Outcome, Broken> {
    drift_fault(
        rig,
        "tpm-process",
        // The process is gone for a moment: a drift check landing then
        // closes for the missing TPM first. Either close is one the design
        // requires; the containment shows the authority saw the new boot.
        &["drift-boot", "attestation-failed"],
        |dev| dev.device.swtpm.start_again().context("swtpm start again"),
        |_, _| Ok(()),
        |_| Ok(()),
    )
}

/// With the measured file still changed, the agent restarted in the same
/// TPM boot (no reset): once the authority's view has reached it — its
/// retained containment, or the answer to a first attestation, which shows
/// the change again — the gate is still closed. (The row's deny window
/// covers the restart: a permit here fails it.)
fn restart_in_the_same_boot(rig: &mut Rig, out: &mut Outcome) -> Result<(), Broken> {
    let file = rig
        .main
        .device
        .measured_file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let named = rig.main.device.log().contains(&format!("{file} changed"));
    rig.main.device.kill();
    rig.main.start()?;
    let answered = wait_until(Duration::from_secs(15), || {
        let status = rig.main.status();
        status["state"] == "contained" || !status["last_attestation"].is_null()
    });
    let state = rig.main.device.state();
    out.require(named, || format!("the agent did not log `{file} changed`"));
    out.require(answered.is_some(), || {
        format!(
            "the authority never answered the agent restarted in the same boot: {}",
            rig.main.status()
        )
    });
    out.require(state != "open", || {
        "the gate reopened after a restart in the same TPM boot".into()
    });
    out.observed = format!("; `{file} changed` logged; restarted in the same boot: {state}");
    Ok(())
}

/// How long the TPM stays away: longer than the heartbeat window and
/// twenty drift checks.
const TPM_AWAY_MS: u64 = 5_000;

/// The TPM gone (its process killed) for longer than the heartbeat window
/// while the agent runs: the gate closes within a drift check plus the
/// TPM's read timeout and denies throughout; the drift task reports the
/// missing TPM on every check and no attestation round starts without it.
/// The TPM comes back power-cycled (a new boot, PCRs cleared) under the
/// same agent, which notices by itself and re-attests; policy contains
/// the device, as for a TPM reset. The fault ends with a reboot and the
/// fleet manager lifting the containment.
pub fn tpm_killed(rig: &mut Rig) -> Result<Outcome, Broken> {
    let mut out = Outcome::default();
    let nonce_req = rig.main.topic("nonce/req");
    let evidence = rig.main.topic("evidence");
    let rounds = MqttClient::connect(
        &rig.fleet.broker,
        mctc_tests::OBSERVER,
        &format!("chaos-tpm-rounds-{}", rig.main.id()),
        &[nonce_req.as_str(), evidence.as_str()],
    );
    let probe = watch(&rig.main, "tpm-kill");
    let cut = Instant::now();
    rig.main.device.swtpm.kill();
    let closed = closes(&probe, cut, drift() + TPM_GONE + SLACK + SLACK);
    let closed_at = Instant::now();
    let mark = log_mark(&rig.main);
    let _ = wait_until(SLACK + SLACK, || rig.main.status()["tpm"] == "unavailable");
    let status = rig.main.status();
    // The fault: the TPM stays away while the probe keeps asking.
    sleep_ms(TPM_AWAY_MS);
    let during = rig.main.status();
    let reports = rig
        .main
        .device
        .log()
        .get(mark..)
        .unwrap_or("")
        .matches("TPM still unavailable")
        .count();
    // A round already asked for when the gate closed may finish failing.
    let settled = closed_at + SLACK;
    let round_messages =
        rounds.since(&nonce_req, settled).len() + rounds.since(&evidence, settled).len();
    let alive = rig.main.device.alive();

    // Back, power-cycled, under the same agent.
    rig.main
        .device
        .swtpm
        .start_again()
        .context("swtpm start again")?;
    let returned = Instant::now();
    let noticed = wait_until(Duration::from_secs(10), || rig.main.status()["tpm"] == "ok");
    let reattested = wait_until(Duration::from_secs(15), || {
        !rounds.since(&evidence, returned).is_empty()
    });
    let contained = wait_until(Duration::from_secs(15), || {
        rig.main.device.state() == "contained"
    });
    reboot(&rig.fleet, &mut rig.main, true)?;
    let back = Instant::now();
    out.forbid_permits(
        &probe.observations(),
        cut + drift() + TPM_GONE + SLACK,
        back,
    );
    out.forbid_reopening(&probe.observations(), cut, back);
    out.closed_after(&probe.observations(), cut);
    out.require(closed.is_some(), || "the gate did not close".into());
    out.require(
        status["tpm"] == "unavailable" && status["reason"] == "attestation-failed",
        || format!("status {status}"),
    );
    out.require(
        during["tpm"] == "unavailable" && during["state"] == "closed",
        || format!("{} ms into the outage: {during}", TPM_AWAY_MS),
    );
    out.require(alive, || "the agent died without its TPM".into());
    // One report per drift check; at least 8 of the 20 on a loaded machine.
    out.require(reports >= 8, || {
        format!("{reports} `TPM still unavailable` reports in {TPM_AWAY_MS} ms (drift check every {DRIFT_MS} ms)")
    });
    out.require(round_messages == 0, || {
        format!("{round_messages} attestation messages without a TPM")
    });
    out.require(noticed.is_some(), || {
        "the agent did not notice the TPM back".into()
    });
    out.require(reattested.is_some(), || {
        "no attestation round after the TPM came back".into()
    });
    out.require(contained.is_some(), || {
        "the power-cycled TPM's evidence did not contain the device".into()
    });
    out.observed = format!(
        "closed ({}), tpm {}; {TPM_AWAY_MS} ms away: {reports} reports, no round; back: noticed {}, re-attested, {}",
        status["reason"].as_str().unwrap_or("?"),
        status["tpm"].as_str().unwrap_or("?"),
        noticed.map_or("never".to_owned(), |d| format!("in {} ms", ms(d))),
        if contained.is_some() {
            "contained"
        } else {
            "not contained"
        }
    );
    recover_and_account(&mut out, rig, &rig.main, probe, back);
    Ok(out)
}

const LIBFAKETIME: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
];

/// A device whose agent trusts its wall clock and runs under libfaketime
/// (`FAKETIME_TIMESTAMP_FILE`, re-read on every call): the suite moves the
/// agent's wall clock without touching the machine's. CLOCK_BOOTTIME,
/// which the agent reads with a direct vDSO call, is not faked, and
/// `FAKETIME_DONT_FAKE_MONOTONIC` keeps the monotonic clocks real.
#[derive(Debug)]
pub struct ClockDevice {
    pub dev: Dev,
    pub offset_file: PathBuf,
}

impl ClockDevice {
    pub fn new(rig: &mut Rig) -> Result<ClockDevice, Broken> {
        let library = LIBFAKETIME
            .iter()
            .find(|p| std::path::Path::new(p).exists())
            .context("libfaketime not found (apt-get install libfaketime)")?;
        let offset_dir = tempfile::Builder::new()
            .prefix("mctc-chaos-clock-")
            .tempdir()
            .context("temporary directory")?
            .keep();
        let offset_file = offset_dir.join("offset");
        std::fs::write(&offset_file, "+0\n").context("write the clock offset")?;
        let env = vec![
            ("LD_PRELOAD".to_owned(), (*library).to_owned()),
            (
                "FAKETIME_TIMESTAMP_FILE".to_owned(),
                offset_file.display().to_string(),
            ),
            ("FAKETIME_NO_CACHE".to_owned(), "1".to_owned()),
            ("FAKETIME_DONT_FAKE_MONOTONIC".to_owned(), "1".to_owned()),
        ];
        let mut dev = rig.device("clock", LINEAGE, env);
        let config =
            std::fs::read_to_string(&dev.device.config).context("read the agent config")?;
        let config = config.replacen(
            "[attestation]\n",
            "[attestation]\nwall_clock_trusted = true\n",
            1,
        );
        std::fs::write(&dev.device.config, config).context("write the agent config")?;
        dev.start()?;
        dev.must_open()?;
        Ok(ClockDevice { dev, offset_file })
    }

    pub fn set_offset(&self, offset: &str) -> Result<(), Broken> {
        std::fs::write(&self.offset_file, format!("{offset}\n")).context("move the clock")
    }

    /// The agent's idea of the wall clock minus the machine's, seconds.
    pub fn skew_secs(&self) -> i64 {
        let agent = self.dev.status()["wall_ms"].as_i64().unwrap_or(0);
        let real = i64::try_from(crate::chaos::forge::unix_now()).unwrap_or(0) * 1000;
        (agent - real) / 1000
    }
}

impl Drop for ClockDevice {
    fn drop(&mut self) {
        if let Some(dir) = self.offset_file.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The device's wall clock three hours ahead: artifacts the authority
/// issues now look expired to it, so renewals are refused and the gate
/// closes at the installed artifact's deadline (CLOCK_BOOTTIME), at most
/// one ttl later.
pub fn clock_forward(rig: &mut Rig, clock: &ClockDevice) -> Result<Outcome, Broken> {
    let mut out = Outcome::default();
    let probe = watch(&clock.dev, "clock-fwd");
    let cut = Instant::now();
    clock.set_offset("+3h")?;
    let ttl = Duration::from_millis(TTL_MS);
    let closed = closes(&probe, cut, ttl + SLACK + SLACK);
    let _ = wait_until(SLACK + SLACK, || reason(&clock.dev) == "artifact-expired");
    let skew = clock.skew_secs();
    let why = reason(&clock.dev);
    clock.set_offset("+0")?;
    let back = Instant::now();
    out.forbid_permits(&probe.observations(), cut + ttl + SLACK, back);
    out.closed_after(&probe.observations(), cut);
    out.require(closed.is_some(), || "the gate did not close".into());
    out.require((10_700..=10_900).contains(&skew), || {
        format!("the agent's wall clock was {skew} s off, expected +10800")
    });
    out.require(why == "artifact-expired", || format!("closed for `{why}`"));
    out.observed = format!("agent clock {skew:+} s; renewals refused as expired; closed ({why})");
    recover_and_account(&mut out, rig, &clock.dev, probe, back);
    Ok(out)
}

/// The device's wall clock three hours behind: no artifact may live longer
/// for it — every deadline stays within the ttl on CLOCK_BOOTTIME.
pub fn clock_backward(rig: &mut Rig, clock: &ClockDevice) -> Result<Outcome, Broken> {
    let mut out = Outcome::default();
    let probe = watch(&clock.dev, "clock-back");
    clock.set_offset("-3h")?;
    let started = Instant::now();
    let mut longest = 0u64;
    let mut renewals = std::collections::BTreeSet::new();
    while started.elapsed() < Duration::from_millis(TTL_MS * 2) {
        let status = clock.dev.status();
        if let Some(left) = status["artifact"]["expires_in_ms"].as_u64() {
            longest = longest.max(left);
        }
        if let Some(cti) = status["artifact"]["cti"].as_str() {
            renewals.insert(cti.to_owned());
        }
        // Samples the status twenty times a second.
        sleep_ms(50);
    }
    let skew = clock.skew_secs();
    clock.set_offset("+0")?;
    let back = Instant::now();
    let seen = probe.observations();
    let denies = seen
        .iter()
        .filter(|o| o.sent >= started && !o.is_permit())
        .count();
    out.require((-10_900..=-10_700).contains(&skew), || {
        format!("the agent's wall clock was {skew} s off, expected -10800")
    });
    out.require(longest <= TTL_MS, || {
        format!("an artifact was valid for {longest} ms, more than its ttl {TTL_MS}")
    });
    out.require(renewals.len() >= 2, || {
        "no renewal while the clock was behind".into()
    });
    out.require(denies == 0, || {
        format!("{denies} denies while nothing was wrong")
    });
    out.observed = format!(
        "agent clock {skew:+} s; stayed open through {} artifacts, longest validity {longest} ms ≤ ttl",
        renewals.len()
    );
    recover_and_account(&mut out, rig, &clock.dev, probe, back);
    Ok(out)
}
