//! `cargo xtask demo`: the whole system on loopback, walking the nine phases
//! of the lifecycle with real parts — one swtpm per device, Mosquitto with
//! TLS and the shipped ACL, the authority, the collector and three agents
//! (a payment terminal, a parcel locker, a logistics gateway).
//!
//! `--check --out DIR` runs the same walk non-interactively, writes each
//! device's lineage bundle and the authority's public key to DIR, and fails
//! if any phase does not behave as expected. Without flags the fleet keeps
//! running after the walk until Ctrl-C.
//!
//! Every process is owned by a value whose drop kills it, so a failure, a
//! panic or Ctrl-C (handled: the walk stops at the next step) leaves nothing
//! running.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mctc_tests::fleet::{Device, Fleet, class};
use mctc_tests::wait_until;
use serde_json::Value;

use crate::packages::SYSTEM_PACKAGES;
use crate::sys::{ensure_packages, run};

/// The heartbeat window of every demo class: short, so that phase 8 is quick.
const HB_MS: u64 = 3_000;
/// How long a phase may take before the demo calls it failed.
const PATIENCE: Duration = Duration::from_secs(30);

/// `cargo xtask demo [--check --out DIR]`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Walk the lifecycle non-interactively and fail if a phase misbehaves
    #[arg(long)]
    check: bool,
    /// Write each device's lineage bundle and the authority's public key here
    #[arg(long, value_name = "DIR", requires = "check")]
    out: Option<PathBuf>,
}

/// The demo fleet's policy: three classes without reference values, so the
/// baseline phase is the real one (first quote refused for lack of a
/// baseline, the fleet manager adopts the reported values).
fn policy() -> String {
    let classes = [
        (
            "payment-terminal",
            &[
                "op = \"capture\"\nmax_amount = 50000\ncurrency = \"EUR\"\nfresh_attestation = false",
                "op = \"refund\"\nmax_amount = 10000\ncurrency = \"EUR\"\nfresh_attestation = true",
            ][..],
        ),
        (
            "parcel-locker",
            &[
                "op = \"unlock\"\nfresh_attestation = false",
                "op = \"reserve\"\nfresh_attestation = false",
            ][..],
        ),
        (
            "logistics-gateway",
            &["op = \"release-pallet\"\nfresh_attestation = false"][..],
        ),
    ];
    classes
        .iter()
        .map(|(name, scopes)| {
            // No [classes.X.reference]: the baseline is learned in phase 1.
            let text = class(name, 60_000, HB_MS, scopes);
            let start = text
                .find(&format!("[classes.{name}.reference]"))
                .unwrap_or(text.len());
            let end = text[start..]
                .find("[[classes.")
                .map_or(text.len(), |i| start + i);
            format!("{}{}", &text[..start], &text[end..])
        })
        .collect()
}

/// Prints one line per step and keeps the verdict.
struct Walk {
    started: Instant,
    step_started: Instant,
    failures: Vec<String>,
    stop: Arc<AtomicBool>,
}

impl Walk {
    fn phase(&mut self, n: u8, title: &str) {
        println!("\n== phase {n}: {title}");
        self.step_started = Instant::now();
    }

    fn ok(&mut self, what: &str) {
        println!(
            "   ok    {what}  ({} ms)",
            self.step_started.elapsed().as_millis()
        );
        self.step_started = Instant::now();
    }

    fn check(
        &mut self,
        good: bool,
        what: &str,
        detail: impl FnOnce() -> String,
    ) -> Result<(), String> {
        if self.stop.load(Ordering::Relaxed) {
            return Err("interrupted".into());
        }
        if good {
            self.ok(what);
            Ok(())
        } else {
            let detail = detail();
            println!("   FAIL  {what}\n{detail}");
            self.failures.push(what.to_owned());
            Err(format!("phase failed: {what}"))
        }
    }
}

fn decision(answer: &Value) -> String {
    format!(
        "{}{}{}",
        answer["decision"].as_str().unwrap_or("?"),
        answer["reason"]
            .as_str()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default(),
        answer["seq"]
            .as_u64()
            .map(|s| format!(", lineage seq {s}"))
            .unwrap_or_default()
    )
}

/// Whether `device` would permit an ordinary operation of its class now.
fn permits(device: &Device) -> bool {
    let answer = match device.id.as_str() {
        "pos-0001" => device.authorize("capture", Some(100), Some("EUR"), Some("probe")),
        "locker-0001" => device.authorize("unlock", None, None, Some("probe")),
        _ => device.authorize("release-pallet", None, None, Some("probe")),
    };
    answer["decision"] == "permit"
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn device_failure(device: &Device) -> String {
    format!(
        "   status: {}\n--- {} log (tail) ---\n{}",
        device.status(),
        device.id,
        tail(&device.log(), 30)
    )
}

pub fn demo(options: &Args) -> Result<(), String> {
    ensure_packages(SYSTEM_PACKAGES)?;
    run(
        "build binaries",
        "cargo",
        &["build", "--workspace", "--bins", "--locked"],
    )?;
    walk_and_report(options)
}

/// `demo --check --out DIR` with the binaries `cargo test` just built (the
/// last step of `cargo xtask test`).
pub fn check_with_built_binaries(out: &Path) -> Result<(), String> {
    println!("==> demo --check --out {}", out.display());
    walk_and_report(&Args {
        check: true,
        out: Some(out.to_path_buf()),
    })
}

fn walk_and_report(options: &Args) -> Result<(), String> {
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(runtime) = runtime {
                runtime.block_on(async {
                    if tokio::signal::ctrl_c().await.is_ok() {
                        println!("\nCtrl-C: stopping the demo and everything it started");
                        stop.store(true, Ordering::Relaxed);
                    }
                });
            }
        });
    }
    let mut walk = Walk {
        started: Instant::now(),
        step_started: Instant::now(),
        failures: Vec::new(),
        stop: Arc::clone(&stop),
    };
    // The fleet lives inside this scope: leaving it, by success, error or
    // panic, drops (kills) every process.
    let outcome = walk_lifecycle(&mut walk, options);
    match outcome {
        Ok(fleet) => {
            println!(
                "\nall nine phases behaved as expected ({:.1} s)",
                walk.started.elapsed().as_secs_f64()
            );
            if !options.check {
                keep_running(&fleet, &stop);
            }
            drop(fleet);
            Ok(())
        }
        Err(e) => Err(e),
    }
}

struct DemoFleet {
    // Devices first: dropped before the fleet, whose broker they use.
    devices: Vec<Device>,
    fleet: Fleet,
}

fn walk_lifecycle(walk: &mut Walk, options: &Args) -> Result<DemoFleet, String> {
    println!(
        "starting: Mosquitto (TLS 1.3, client certificates, per-identity rights), authority, collector"
    );
    let mut fleet = Fleet::with_policy(&policy());
    fleet.start_authority();
    fleet.start_collector();
    println!(
        "   broker {} ; authority key {} ; state in {}",
        fleet.broker.url(),
        fleet.authority_pub.display(),
        fleet.dir.path().display()
    );
    let specs = [
        ("pos-0001", "payment-terminal"),
        ("locker-0001", "parcel-locker"),
        ("gateway-0001", "logistics-gateway"),
    ];

    // 1. Baseline: identities, registration with the EK pinned, enrollment
    //    by credential activation, and the class baselines learned.
    walk.phase(
        1,
        "baseline — enrolled identity (EK, AK bound by credential activation)",
    );
    let mut devices = Vec::new();
    for (id, class) in specs {
        let device = fleet.device(id, class);
        let identity = device.cli(&["identity", "--json"]);
        let json: Value = serde_json::from_str(&identity.stdout).unwrap_or(Value::Null);
        walk.check(
            identity.code == 0,
            &format!("{id}: TPM identity, EK pinned at the authority (class {class})"),
            || format!("{identity:?}"),
        )?;
        println!(
            "         EK sha256 {}…  AK sha256 {}…",
            json["ek_sha256"]
                .as_str()
                .unwrap_or("?")
                .get(..16)
                .unwrap_or("?"),
            json["ak_sha256"]
                .as_str()
                .unwrap_or("?")
                .get(..16)
                .unwrap_or("?")
        );
        let enrolled = device.cli(&["enroll", "--timeout", "30"]);
        walk.check(
            enrolled.code == 0,
            &format!("{id}: enrolled (TPM2_ActivateCredential answered the authority's challenge)"),
            || format!("{enrolled:?}"),
        )?;
        devices.push(device);
    }
    for device in &mut devices {
        device.start();
    }
    // No baseline yet: the first quotes verify but are refused; their PCR
    // values are what the fleet manager adopts.
    for device in &devices {
        let id = device.id.clone();
        let learned = wait_until(PATIENCE, || {
            fleet.cli(&["policy", "learn", &id, "--yes", "--json"]).code == 0
        });
        walk.check(learned.is_some(), &format!("{id}: first quote refused (no baseline); `policy learn {id} --yes` adopted its PCR values"), || device_failure(device))?;
    }

    // 2–3. Authorization continuity and runtime trust.
    walk.phase(2, "authorization continuity — quote over the policy PCRs with the authority's nonce, artifact issued");
    for device in &devices {
        let open = device.wait_state("open", PATIENCE);
        walk.check(
            open.is_some(),
            &format!("{}: evidence affirmed, artifact issued", device.id),
            || device_failure(device),
        )?;
    }
    walk.phase(
        3,
        "runtime trust — artifact verified on the device, bound to this TPM boot",
    );
    for device in &devices {
        let status = device.status();
        let artifact = &status["artifact"];
        walk.check(
            artifact["expires_in_ms"].as_u64().is_some_and(|ms| ms > 0),
            &format!(
                "{}: gate open under artifact {}…, expires in {} s, scope {}",
                device.id,
                artifact["cti"]
                    .as_str()
                    .unwrap_or("?")
                    .get(..8)
                    .unwrap_or("?"),
                artifact["expires_in_ms"].as_u64().unwrap_or(0) / 1000,
                artifact["scope"]
            ),
            || status.to_string(),
        )?;
    }

    // 4. Governed execution.
    walk.phase(
        4,
        "governed execution — each permit durable in lineage before it is answered",
    );
    let [pos, locker, gateway] = &devices[..] else {
        return Err("three devices expected".into());
    };
    let operations = [
        (pos, "capture", Some(1250), Some("EUR"), "order-7781"),
        (pos, "refund", Some(500), Some("EUR"), "order-7702"),
        (locker, "unlock", None, None, "parcel-55"),
        (gateway, "release-pallet", None, None, "pallet-991"),
    ];
    for (device, op, amount, currency, reference) in operations {
        let answer = device.authorize(op, amount, currency, Some(reference));
        let what = match op {
            "refund" => format!(
                "{}: {op} {} {} → {} (fresh attestation round for this operation)",
                device.id,
                amount.unwrap_or(0),
                currency.unwrap_or(""),
                decision(&answer)
            ),
            _ => format!(
                "{}: {op}{} → {}",
                device.id,
                amount
                    .map(|a| format!(" {a} {}", currency.unwrap_or("")))
                    .unwrap_or_default(),
                decision(&answer)
            ),
        };
        walk.check(answer["decision"] == "permit", &what, || {
            device_failure(device)
        })?;
    }
    let denies = [
        (locker, "capture", Some(100), Some("EUR"), "out-of-scope"),
        (pos, "capture", Some(90_000), Some("EUR"), "over-limit"),
    ];
    for (device, op, amount, currency, expected) in denies {
        let answer = device.authorize(op, amount, currency, None);
        walk.check(
            answer["decision"] == "deny" && answer["reason"] == expected,
            &format!(
                "{}: {op} {} {} → {}",
                device.id,
                amount.unwrap_or(0),
                currency.unwrap_or(""),
                decision(&answer)
            ),
            || device_failure(device),
        )?;
    }

    // 5–6. Drift on the locker: contained within the drift interval.
    walk.phase(
        5,
        "drift detected — PCR extended on the locker's TPM from outside",
    );
    let drift_at = Instant::now();
    locker
        .swtpm
        .extend_pcr(7, b"unsigned bootloader")
        .map_err(|e| e.to_string())?;
    walk.check(
        permits(locker),
        "locker-0001: permits before the drift",
        || device_failure(locker),
    )?;
    let closed = wait_until(PATIENCE, || !permits(locker));
    walk.check(
        closed.is_some(),
        &format!(
            "locker-0001: gate closed {} ms after PCR 7 changed (drift interval 250 ms)",
            drift_at.elapsed().as_millis()
        ),
        || device_failure(locker),
    )?;
    walk.phase(
        6,
        "interrupted and contained — the authority refuses the drifted evidence",
    );
    let contained = locker.wait_state("contained", PATIENCE);
    walk.check(
        contained.is_some(),
        &format!(
            "locker-0001: contained ({}), unlock → {}",
            locker.status()["reason"].as_str().unwrap_or("?"),
            decision(&locker.authorize("unlock", None, None, None))
        ),
        || device_failure(locker),
    )?;
    let shown = fleet.cli(&["devices", "show", "locker-0001", "--json"]);
    walk.check(
        shown.json()["status"] == "contained",
        "authority: locker-0001 recorded as contained (PCR drift from the learned baseline)",
        || shown.stdout.clone(),
    )?;

    // 7–8. Recovery refused by policy → revoked permanently; the others
    //      revalidate.
    walk.phase(
        7,
        "recovery — re-attestation with a fresh nonce is refused by policy",
    );
    let restored = fleet.cli(&[
        "devices",
        "restore",
        "locker-0001",
        "--reason",
        "operator retry",
    ]);
    walk.check(
        restored.code == 0,
        "fleet manager: `devices restore locker-0001` (one more chance)",
        || format!("{restored:?}"),
    )?;
    let restored_at = Instant::now();
    // A new round after the restore: its answer is younger than the restore.
    let recontained = wait_until(PATIENCE, || {
        let status = locker.status();
        status["state"] == "contained"
            && status["last_attestation"]["verdict"] == "refused"
            && status["last_attestation"]["ago_ms"]
                .as_u64()
                .is_some_and(|ago| u128::from(ago) < restored_at.elapsed().as_millis())
    });
    walk.check(
        recontained.is_some(),
        "locker-0001: fresh evidence still drifted → refused, contained again",
        || device_failure(locker),
    )?;
    walk.phase(8, "revalidated or permanently revoked");
    let revoked = fleet.cli(&[
        "devices",
        "revoke",
        "locker-0001",
        "--reason",
        "untrusted boot chain",
    ]);
    walk.check(
        revoked.code == 0,
        "fleet manager: `devices revoke locker-0001`",
        || format!("{revoked:?}"),
    )?;
    let is_revoked = locker.wait_state("revoked", PATIENCE);
    walk.check(
        is_revoked.is_some(),
        &format!(
            "locker-0001: revoked (persisted; survives restarts), unlock → {}",
            decision(&locker.authorize("unlock", None, None, None))
        ),
        || device_failure(locker),
    )?;

    println!("   -- heartbeat loss: the authority stops");
    for device in [pos, gateway] {
        walk.check(
            permits(device),
            &format!("{}: permits while the heartbeat flows", device.id),
            || device_failure(device),
        )?;
    }
    fleet.kill_authority();
    let lapse_at = Instant::now();
    for device in [pos, gateway] {
        let closed = wait_until(PATIENCE, || !permits(device));
        let reason = device.status()["reason"].as_str().unwrap_or("?").to_owned();
        walk.check(
            closed.is_some() && reason == "heartbeat-lapsed",
            &format!(
                "{}: gate closed ({reason}) {} ms after the authority went away (heartbeat window {HB_MS} ms)",
                device.id,
                lapse_at.elapsed().as_millis()
            ),
            || device_failure(device),
        )?;
    }
    fleet.start_authority();
    let back_at = Instant::now();
    for device in [pos, gateway] {
        let open = wait_until(PATIENCE, || permits(device));
        walk.check(
            open.is_some(),
            &format!(
                "{}: revalidated {} ms after the authority came back (new nonce, new artifact)",
                device.id,
                back_at.elapsed().as_millis()
            ),
            || device_failure(device),
        )?;
    }
    let still = locker.state();
    walk.check(still == "revoked", "locker-0001: stays revoked", || {
        device_failure(locker)
    })?;

    // 9. Proof persisted: the collector acknowledged every record with a
    //    signed receipt (a revoked device's, up to its cut-off); each device's exported bundle verifies offline with
    //    the authority's key and is complete through its receipt by the
    //    collector's key; so does the collector's own export.
    walk.phase(
        9,
        "proof persisted — lineage at the collector, verifiable offline",
    );
    for device in &devices {
        if device.state() == "revoked" {
            // Revoked means cut off at the broker too: the collector holds
            // what it received up to then; what the device wrote later stays
            // on it (nothing is pruned without a receipt) and is in its own
            // bundle below, reported as the unacknowledged tail.
            let status = device.status();
            let acked = status["lineage"]["acked_seq"].as_u64();
            let next = status["lineage"]["next_seq"].as_u64().unwrap_or(0);
            walk.check(
                acked.is_some(),
                &format!(
                    "{}: revoked and cut off at the broker; the collector holds its lineage through seq {}, the {} record(s) after it stay on the device",
                    device.id,
                    acked.unwrap_or(0),
                    next.saturating_sub(acked.map_or(0, |a| a + 1))
                ),
                || device_failure(device),
            )?;
            continue;
        }
        let answer = device.request(&serde_json::json!({"checkpoint": {}}));
        let checkpoint = answer.as_ref().and_then(|a| a["checkpoint"].as_u64());
        let acked = wait_until(PATIENCE, || {
            let status = device.status();
            let next = status["lineage"]["next_seq"].as_u64().unwrap_or(u64::MAX);
            status["lineage"]["acked_seq"]
                .as_u64()
                .is_some_and(|a| a + 1 >= next)
        });
        let status = device.status();
        walk.check(
            checkpoint.is_some() && acked.is_some(),
            &format!(
                "{}: collector verified and acknowledged all {} records (chain + TPM checkpoints)",
                device.id,
                status["lineage"]["next_seq"].as_u64().unwrap_or(0)
            ),
            || device_failure(device),
        )?;
    }
    let out_dir = match &options.out {
        Some(dir) => dir.clone(),
        None => fleet.dir.path().join("proof"),
    };
    std::fs::create_dir_all(&out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    let key = out_dir.join("authority.pub");
    std::fs::copy(&fleet.authority_pub, &key).map_err(|e| format!("copy authority.pub: {e}"))?;
    let receipt_key = out_dir.join("collector-receipt.pub");
    std::fs::copy(&fleet.collector_pub, &receipt_key)
        .map_err(|e| format!("copy the collector's receipt.pub: {e}"))?;
    for device in &devices {
        let bundle = out_dir.join(format!("{}.bundle", device.id));
        let exported = device.cli(&["lineage", "export", "--out", path(&bundle)]);
        walk.check(
            exported.code == 0,
            &format!("{}: lineage exported to {}", device.id, bundle.display()),
            || format!("{exported:?}"),
        )?;
        let from_collector = out_dir.join(format!("{}.collector.bundle", device.id));
        let config = fleet.collector_config();
        let exported = mctc_tests::fleet::run(
            "mctc-collector",
            &[
                "export",
                &device.id,
                "--config",
                &config,
                "--out",
                path(&from_collector),
            ],
        );
        walk.check(
            exported.code == 0,
            &format!(
                "{}: the collector exported its copy with a fresh receipt to {}",
                device.id,
                from_collector.display()
            ),
            || format!("{exported:?}"),
        )?;
        for bundle in [&bundle, &from_collector] {
            let verified = mctc_tests::fleet::run(
                "mctc-collector",
                &[
                    "verify",
                    path(bundle),
                    "--authority-key",
                    path(&key),
                    "--collector-key",
                    path(&receipt_key),
                ],
            );
            walk.check(
                verified.code == 0,
                &format!(
                    "mctc-collector verify {}: {}",
                    bundle.file_name().and_then(|n| n.to_str()).unwrap_or("?"),
                    verified.stdout.trim()
                ),
                || format!("{verified:?}"),
            )?;
        }
    }
    println!(
        "   proof, the authority's public key and the collector's receipt key are in {}",
        out_dir.display()
    );
    if !walk.failures.is_empty() {
        return Err(format!("{} step(s) failed", walk.failures.len()));
    }
    Ok(DemoFleet { devices, fleet })
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap_or("")
}

fn keep_running(demo: &DemoFleet, stop: &AtomicBool) {
    let monitor = demo.fleet.broker.identity("mctc-monitor");
    println!("\nThe fleet keeps running. Watch the devices' status (retained JSON):");
    if let Ok(id) = monitor {
        println!(
            "  mosquitto_sub -h 127.0.0.1 -p {} --cafile {} --cert {} --key {} -t 'mctc/v1/dev/+/status' -v",
            demo.fleet.broker.port(),
            id.ca.display(),
            id.cert.display(),
            id.key.display()
        );
    }
    for device in &demo.devices {
        println!(
            "  {}: mctc-agent authorize --config {} --op <op>   (logs: {})",
            device.id,
            device.config.display(),
            device.log_path().display()
        );
    }
    println!(
        "  fleet manager: target/debug/mctc-authority devices list --config {}",
        demo.fleet.config()
    );
    println!("Ctrl-C stops everything.");
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
    }
}
