//! Messages that must change nothing: forged, expired, misaddressed,
//! previous-boot and replayed artifacts (answered by an impostor standing
//! in for the authority), replayed and rogue-signed heartbeats, and
//! replayed control messages.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mctc_shim::messages::{Control, ControlAction, Heartbeat};
use mctc_shim::tpm::BootCounters;
use mctc_shim::{AuthorityKey, RingCrypto, Signed, Signer};
use mctc_tests::fleet::MqttClient;
use mctc_tests::wait_until;

use super::{Outcome, closes, reason, recover_and_account, silence_noticed, sleep_ms, watch};
use crate::chaos::broken::{Broken, Context};
use crate::chaos::ctx::Ctx;
use crate::chaos::forge::{self, Impostor, ImpostorSetup, Variant};
use crate::chaos::rig::{self, Dev, HB_MS, RECOVERY, Rig, SLACK, TTL_MS, ms};

pub(super) const HEARTBEAT: &str = "mctc/v1/fleet/heartbeat";

pub(super) fn keys(signer: &dyn Signer) -> [AuthorityKey; 1] {
    [AuthorityKey::new(&RingCrypto, signer.public_key())]
}

/// Publishes `next(i)` every 250 ms as the authority until stopped.
pub(super) struct Repeater {
    running: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Repeater {
    pub(super) fn start(
        rig: &Rig,
        topic: &str,
        next: impl Fn(u64) -> Vec<u8> + Send + 'static,
    ) -> Repeater {
        let client =
            MqttClient::connect(&rig.fleet.broker, "mctc-authority", "chaos-repeater", &[]);
        let running = Arc::new(AtomicBool::new(true));
        let sent = Arc::new(AtomicU64::new(0));
        let topic = topic.to_owned();
        let thread = {
            let (running, sent) = (Arc::clone(&running), Arc::clone(&sent));
            std::thread::spawn(move || {
                let mut i = 0;
                while running.load(Ordering::Acquire) {
                    client.publish(&topic, &next(i), false);
                    sent.fetch_add(1, Ordering::AcqRel);
                    i += 1;
                    // Paces the injection (the fault), four a second.
                    std::thread::sleep(Duration::from_millis(250));
                }
            })
        };
        Repeater {
            running,
            sent,
            thread: Some(thread),
        }
    }

    pub(super) fn stop(mut self) -> u64 {
        self.running.store(false, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.sent.load(Ordering::Acquire)
    }
}

/// The authority killed while heartbeats keep arriving from `next`: they
/// must not keep the gate open past the heartbeat window.
fn lapse_despite(
    rig: &mut Rig,
    tag: &str,
    next: impl Fn(u64) -> Vec<u8> + Send + 'static,
) -> Result<Outcome, Broken> {
    let mut out = Outcome::default();
    let probe = watch(&rig.main, tag);
    let cut = Instant::now();
    rig.fleet.kill_authority();
    let repeater = Repeater::start(rig, HEARTBEAT, next);
    let hb = Duration::from_millis(HB_MS);
    let closed = closes(&probe, cut, hb + SLACK + SLACK);
    // The fault holds after the close: the injected heartbeats go on.
    sleep_ms(1_500);
    let why = reason(&rig.main);
    let sent = repeater.stop();
    rig.fleet.start_authority();
    let back = Instant::now();
    out.forbid_permits(&probe.observations(), cut + hb + SLACK, back);
    out.closed_after(&probe.observations(), cut);
    out.require(closed.is_some(), || "the gate did not close".into());
    out.require(silence_noticed(&why), || format!("closed for `{why}`"));
    out.require(sent >= 4, || format!("only {sent} heartbeats injected"));
    out.observed = format!("{sent} injected heartbeats ignored; closed ({why})");
    recover_and_account(&mut out, rig, &rig.main, probe, back);
    Ok(out)
}

/// Genuine heartbeats captured earlier, replayed after the authority died.
pub fn heartbeat_replayed(rig: &mut Rig) -> Result<Outcome, Broken> {
    let captured: Vec<Vec<u8>> = rig.main.spy.received_on(HEARTBEAT);
    if captured.len() < 3 {
        let mut out = Outcome::default();
        out.fail(format!(
            "only {} heartbeats captured to replay",
            captured.len()
        ));
        return Ok(out);
    }
    let replay: Vec<Vec<u8>> = captured[captured.len() - 3..].to_vec();
    lapse_despite(rig, "hb-replay", move |i| {
        replay[usize::try_from(i).unwrap_or(0) % replay.len()].clone()
    })
}

/// Heartbeats with ever higher seqs, signed by a key the fleet does not
/// trust.
pub fn heartbeat_rogue_key(rig: &mut Rig, ctx: &mut Ctx) -> Result<Outcome, Broken> {
    let keys = keys(&ctx.signer);
    let last = rig
        .main
        .spy
        .received_on(HEARTBEAT)
        .iter()
        .filter_map(|b| Heartbeat::open(b, &keys, &RingCrypto).ok())
        .map(|h| (h.seq, h.epoch))
        .max();
    let (seq, epoch) = last.unwrap_or((0, 0));
    let rogue = forge::rogue_signer(&mut ctx.rng).context("rogue key")?;
    let hb_ms = u32::try_from(HB_MS).unwrap_or(3_000);
    lapse_despite(rig, "hb-rogue", move |i| {
        forge::heartbeat(seq + 1 + i, epoch, hb_ms, &rogue).unwrap_or_default()
    })
}

/// The controls the device received: (seq, action, bytes).
fn controls(dev: &Dev, signer: &dyn Signer) -> Vec<(u64, ControlAction, Vec<u8>)> {
    let keys = keys(signer);
    let mut out: Vec<_> = dev
        .spy
        .received_on(&dev.topic("control"))
        .into_iter()
        .filter_map(|bytes| {
            let c = Control::open(&bytes, &keys, &RingCrypto).ok()?;
            Some((c.seq, c.action, bytes.clone()))
        })
        .collect();
    out.sort_by_key(|c| c.0);
    out.dedup_by_key(|c| c.0);
    out
}

fn count(log: &str, needle: &str) -> usize {
    log.matches(needle).count()
}

/// Log lines of the agent refusing something on its artifact topic.
fn rejections(log: &str) -> usize {
    log.lines()
        .filter(|l| {
            l.contains("artifact")
                && (l.contains("rejected") || l.contains("dropped") || l.contains("not installed"))
        })
        .count()
}

/// A contain replayed while open changes nothing; a restore replayed
/// while contained changes nothing (the gate keeps denying).
pub fn control_replayed(rig: &mut Rig, signer: &dyn Signer) -> Result<Outcome, Broken> {
    let mut out = Outcome::default();
    let id = rig.main.id().to_owned();
    let contained = |dev: &Dev| {
        wait_until(Duration::from_secs(10), || {
            dev.device.state() == "contained"
        })
    };
    rig::cli(
        &rig.fleet,
        &["devices", "contain", &id, "--reason", "chaos drill"],
    )?;
    out.require(contained(&rig.main).is_some(), || {
        "contain did not reach the device".into()
    });
    rig::cli(
        &rig.fleet,
        &["devices", "restore", &id, "--reason", "chaos drill over"],
    )?;
    rig.main.must_open()?;
    let seen = controls(&rig.main, signer);
    let old_contain = seen
        .iter()
        .rev()
        .find(|c| c.1 == ControlAction::Contain)
        .cloned();
    let old_restore = seen
        .iter()
        .rev()
        .find(|c| c.1 == ControlAction::Restore)
        .cloned();
    let (Some(old_contain), Some(old_restore)) = (old_contain, old_restore) else {
        let topics: std::collections::BTreeMap<String, usize> = rig
            .main
            .spy
            .received()
            .into_iter()
            .fold(Default::default(), |mut m, (t, _, _)| {
                *m.entry(t).or_default() += 1;
                m
            });
        out.fail(format!(
            "no contain/restore control captured (spy saw {topics:?}, controls {})",
            seen.len()
        ));
        return Ok(out);
    };
    let injector = MqttClient::connect(
        &rig.fleet.broker,
        "mctc-authority",
        "chaos-control-replay",
        &[],
    );
    let topic = rig.main.topic("control");
    let probe = watch(&rig.main, "control");
    let ignored_before = count(&rig.main.device.log(), "control message not applied");

    // An old contain while open.
    let replayed = Instant::now();
    injector.publish(&topic, &old_contain.2, false);
    // Until the agent logged that it did not apply it.
    let _ = wait_until(SLACK + SLACK, || {
        count(&rig.main.device.log(), "control message not applied") > ignored_before
    });
    let still_open = rig.main.device.state() == "open";
    let denied = probe.denied_since(replayed);

    // Contained anew; the old restore replayed.
    rig::cli(
        &rig.fleet,
        &["devices", "contain", &id, "--reason", "chaos drill 2"],
    )?;
    let cut = Instant::now();
    out.require(contained(&rig.main).is_some(), || {
        "second contain did not reach the device".into()
    });
    let ignored_first = count(&rig.main.device.log(), "control message not applied");
    injector.publish(&topic, &old_restore.2, false);
    let _ = wait_until(SLACK + SLACK, || {
        count(&rig.main.device.log(), "control message not applied") > ignored_first
    });
    let still_contained = rig.main.device.state() == "contained";
    let ignored = count(&rig.main.device.log(), "control message not applied") - ignored_before;
    rig::cli(
        &rig.fleet,
        &["devices", "restore", &id, "--reason", "chaos drill 2 over"],
    )?;
    let back = Instant::now();
    out.forbid_permits(&probe.observations(), cut + SLACK, back);
    out.closed_after(&probe.observations(), cut);
    out.require(still_open && !denied, || {
        "a replayed contain closed the gate".into()
    });
    out.require(still_contained, || {
        "a replayed restore lifted the containment".into()
    });
    out.require(ignored >= 2, || {
        format!("the agent logged {ignored} ignored controls, expected 2")
    });
    out.observed = format!(
        "contain seq {} replayed while open: ignored; restore seq {} replayed while contained: ignored",
        old_contain.0, old_restore.0
    );
    recover_and_account(&mut out, rig, &rig.main, probe, back);
    Ok(out)
}

/// One named result of the impostor block.
pub type Named = (String, String, Outcome);

/// The previous boot's counters (or a boot that never was, on a TPM that
/// has not been reset yet).
fn previous(boot: BootCounters) -> BootCounters {
    if boot.restart > 0 {
        BootCounters {
            reset: boot.reset,
            restart: boot.restart - 1,
        }
    } else if boot.reset > 0 {
        BootCounters {
            reset: boot.reset - 1,
            restart: 0,
        }
    } else {
        BootCounters {
            reset: 0,
            restart: 1,
        }
    }
}

fn setup_for(dev: &Dev, keys: &[AuthorityKey]) -> Result<ImpostorSetup, Broken> {
    let epoch = dev
        .spy
        .received_on(HEARTBEAT)
        .iter()
        .filter_map(|b| Heartbeat::open(b, keys, &RingCrypto).ok())
        .map(|h| h.epoch)
        .max()
        .unwrap_or(0);
    Ok(ImpostorSetup {
        device: dev.id().to_owned(),
        ttl_ms: u32::try_from(TTL_MS).unwrap_or(4_000),
        hb_ms: u32::try_from(HB_MS).unwrap_or(3_000),
        hb_seq: dev.status()["heartbeat_seq"].as_u64().unwrap_or(0),
        epoch,
        boot: dev
            .boot()
            .context(&format!("{}: boot counters", dev.id()))?,
    })
}

/// One variant: the gate (closed) must stay closed while at least two of
/// the device's attestation rounds were answered with it.
fn refuse(rig: &Rig, dev: &Dev, impostor: &Impostor, variant: Variant, tag: &str) -> Outcome {
    let mut out = Outcome::default();
    impostor.set(variant);
    // The open gate (from the previous answer) closes at its deadline.
    if wait_until(Duration::from_millis(TTL_MS) + SLACK, || {
        dev.device.state() != "open"
    })
    .is_none()
    {
        out.fail("the gate did not close before the variant was tried");
        return out;
    }
    let probe = watch(dev, tag);
    let start = Instant::now();
    let answers = impostor.answers();
    let rejected_before = rejections(&dev.device.log());
    let exercised = wait_until(Duration::from_secs(10), || {
        impostor.answers() >= answers + 2 && start.elapsed() >= Duration::from_millis(1_500)
    });
    let end = Instant::now();
    let seen = probe.stop();
    out.forbid_permits(&seen, start, end);
    let tried = impostor.answers() - answers;
    out.require(exercised.is_some(), || {
        format!("only {tried} attestation rounds answered")
    });
    out.require(rejections(&dev.device.log()) > rejected_before, || {
        "the agent logged nothing about the artifacts".into()
    });
    out.observed = format!(
        "{tried} artifacts refused; the gate stayed closed ({})",
        reason(dev)
    );
    out.accounted(&rig.account(dev, &seen));
    out
}

/// The real authority down, an impostor with the authority's broker
/// identity answering the devices' attestation rounds. First a genuine
/// answer (must open the gate: proves the impostor speaks correctly), then
/// each kind of bad artifact (must be refused).
pub fn bad_artifacts(rig: &mut Rig, ctx: &mut Ctx) -> Result<Vec<Named>, Broken> {
    let signer = &ctx.signer;
    let clock = ctx.clock.as_ref().context("the clock device")?;
    let keys = keys(signer);
    let replay = rig
        .main
        .artifacts_seen()
        .last()
        .cloned()
        .unwrap_or_default();
    let other = clock.dev.id().to_owned();
    let main_setup = setup_for(&rig.main, &keys)?;
    let clock_setup = setup_for(&clock.dev, &keys)?;
    let previous_boot = previous(main_setup.boot);
    rig.fleet.kill_authority();
    let cut = Instant::now();
    let load = |path| forge::authority_signer(path).context("the authority's key");
    let key_file = rig.fleet.dir.path().join("keys").join("authority.key");
    let mut rogue = || forge::rogue_signer(&mut ctx.rng).context("rogue key");
    let main_impostor = Impostor::start(&rig.fleet.broker, main_setup, load(&key_file)?, rogue()?);
    let clock_impostor =
        Impostor::start(&rig.fleet.broker, clock_setup, load(&key_file)?, rogue()?);

    let mut rows: Vec<Named> = Vec::new();
    // The control: a genuine answer opens both gates.
    let control_main = rig.main.wait_open(Duration::from_secs(15)).is_some();
    let control_clock = clock.dev.wait_open(Duration::from_secs(15)).is_some();
    let control = if control_main && control_clock {
        None
    } else {
        Some(format!(
            "control failed: the impostor's genuine artifact was not accepted (main {}, clock {}; errors {:?})",
            rig.main.status(),
            clock.dev.status(),
            main_impostor.errors()
        ))
    };
    let push = |rows: &mut Vec<Named>, fault: &str, expected: &str, mut out: Outcome| {
        if let Some(control) = &control {
            out.fail(control.clone());
        }
        rows.push((fault.to_owned(), expected.to_owned(), out));
    };
    let cases: Vec<(&str, &str, Variant)> = vec![
        (
            "forged artifact (rogue key)",
            "refused: signature; deny",
            Variant::RogueKey,
        ),
        (
            "artifact for another device",
            "refused: subject; deny",
            Variant::OtherDevice(other),
        ),
        (
            "artifact for the previous boot",
            "refused: boot counters; deny",
            Variant::OtherBoot(previous_boot),
        ),
        (
            "replayed old artifact",
            "refused: not our nonce; deny",
            Variant::Replay(replay),
        ),
    ];
    for (fault, expected, variant) in cases {
        let out = refuse(rig, &rig.main, &main_impostor, variant, "bad-artifact");
        push(&mut rows, fault, expected, out);
    }
    let expired = refuse(
        rig,
        &clock.dev,
        &clock_impostor,
        Variant::Expired,
        "expired",
    );
    push(
        &mut rows,
        "expired artifact (trusted wall clock)",
        "refused: exp passed; deny",
        expired,
    );
    drop(main_impostor);
    drop(clock_impostor);

    // The real authority back: both devices reopen.
    rig.fleet.start_authority();
    let back = Instant::now();
    let main_back = rig.main.wait_open(RECOVERY);
    let clock_back = clock.dev.wait_open(RECOVERY);
    for (_, _, out) in &mut rows {
        match (main_back, clock_back) {
            (Some(_), Some(_)) => {}
            _ => out.fail("a device did not reopen after the authority returned"),
        }
    }
    if let Some((_, _, last)) = rows.last_mut() {
        last.observed.push_str(&format!(
            "; authority down {} ms, reopened {} ms after its return",
            ms(back - cut),
            main_back.map_or(0, ms)
        ));
    }
    Ok(rows)
}
