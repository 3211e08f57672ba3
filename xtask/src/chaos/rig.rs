//! The fleet every scenario runs against: one private Mosquitto (TLS, the
//! shipped ACL), the real authority and collector, and devices made of a
//! private swtpm and the real agent (`mctc_tests::fleet`), plus what the
//! suite adds: a spy on each device's topics, a way to start an agent
//! with extra environment (libfaketime), and the accounting of permits
//! against the device's lineage and the collector.
//!
//! A broken environment is a typed [`Broken`]; the shared harness's own
//! calls (mctc-tests) panic instead, which the runner catches once.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use mctc_shim::lineage::Record;
use mctc_shim::tpm::BootCounters;
use mctc_shim::wire::Message;
use mctc_tests::fleet::{Device, Fleet, MqttClient, class};
use mctc_tests::{Proc, bin_path, wait_until};
use serde_json::{Value, json};

use super::broken::{Broken, Context};
use super::lineage::{self, Collected, DiskLineage};
use super::probe::{Observation, Permit};

/// The device class of the suite: artifacts live 4 s (renewed at about
/// 2 s), the heartbeat window is 3 s (a heartbeat every second), the drift
/// check runs every 250 ms (the agent's default).
pub const CLASS: &str = "chaos";
pub const TTL_MS: u64 = 4_000;
pub const HB_MS: u64 = 3_000;
pub const DRIFT_MS: u64 = 250;
/// Scheduling slack on a loaded two-core machine: a bound is `design bound
/// + SLACK`.
pub const SLACK: Duration = Duration::from_millis(1_000);
/// How long recovery may take (reconnect backoff, a fresh attestation).
pub const RECOVERY: Duration = Duration::from_secs(30);

/// Lineage sized so that quota scenarios take seconds, not minutes.
pub const LINEAGE: &str =
    "[lineage]\nsegment_bytes = 65536\nquota_bytes = 1048576\nreserve_bytes = 65536\n";

pub fn policy() -> String {
    let scopes = [
        "op = \"unlock\"\nfresh_attestation = false",
        "op = \"capture\"\nmax_amount = 50000\ncurrency = \"EUR\"\nfresh_attestation = false",
        "op = \"refund\"\nmax_amount = 10000\nfresh_attestation = true",
    ];
    class(CLASS, TTL_MS, HB_MS, &scopes)
}

/// A device of the suite with a spy (certificate identity
/// `mctc-authority`, which may read every device topic) recording its
/// artifacts, controls and evidence and the fleet heartbeat.
#[derive(Debug)]
pub struct Dev {
    pub device: Device,
    pub spy: MqttClient,
    /// Environment for every start of the agent.
    pub env: Vec<(String, String)>,
}

impl Dev {
    pub fn id(&self) -> &str {
        &self.device.id
    }

    pub fn topic(&self, leaf: &str) -> String {
        format!("mctc/v1/dev/{}/{leaf}", self.device.id)
    }

    /// Starts the agent (with [`Dev::env`]) and waits for its socket.
    pub fn start(&mut self) -> Result<(), Broken> {
        let mut command = Command::new(bin_path("mctc-agent").context("find mctc-agent")?);
        command
            .args(["run", "--config"])
            .arg(&self.device.config)
            .env("MCTC_LOG", "info,mctc_agent=debug");
        for (key, value) in &self.env {
            command.env(key, value);
        }
        let proc = Proc::spawn_command("mctc-agent", command, &self.device.log_path())
            .context("start mctc-agent")?;
        self.device.agent = Some(proc);
        let up = wait_until(Duration::from_secs(30), || {
            self.device.request(&json!({"status": {}})).is_some()
        });
        match up {
            Some(_) => Ok(()),
            None => Err(Broken::step(
                "start mctc-agent",
                format!("socket did not come up:\n{}", tail(&self.device.log(), 40)),
            )),
        }
    }

    pub fn status(&self) -> Value {
        self.device.status()
    }

    /// Waits until the gate permits; how long it took.
    pub fn wait_open(&self, timeout: Duration) -> Option<Duration> {
        wait_until(timeout, || self.device.state() == "open")
    }

    /// The gate opens within [`RECOVERY`], or the rig is broken.
    pub fn must_open(&self) -> Result<Duration, Broken> {
        self.wait_open(RECOVERY).ok_or_else(|| {
            Broken::step(
                format!("{}: open the gate", self.id()),
                format!(
                    "not open after {} s: {}\n--- agent log (tail) ---\n{}",
                    RECOVERY.as_secs(),
                    self.status(),
                    tail(&self.device.log(), 40)
                ),
            )
        })
    }

    /// The device's lineage as on disk (chain verified).
    pub fn disk(&self) -> Result<DiskLineage, String> {
        lineage::read_disk(&self.device.lineage_dir(), self.id())
    }

    /// The TPM boot counters of the newest record on disk.
    pub fn boot(&self) -> Result<BootCounters, String> {
        let disk = self.disk()?;
        let last = disk.records.last().ok_or("no lineage yet")?;
        Record::decode(&last.bytes)
            .map(|r| r.boot)
            .map_err(|e| format!("last record: {e}"))
    }

    /// Artifacts seen on the device's artifact topic (genuine ones come
    /// from the authority; the suite's own injections are seen too).
    pub fn artifacts_seen(&self) -> Vec<Vec<u8>> {
        self.spy.received_on(&self.topic("artifact"))
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The fleet and the suite's main device.
#[derive(Debug)]
pub struct Rig {
    pub fleet: Fleet,
    pub main: Dev,
    serial: u32,
}

/// How the permits of a scenario were accounted for.
#[derive(Debug, Default)]
pub struct Accounting {
    /// Permits answered to a client whose decision record is missing (or
    /// not a permit under the same artifact) on disk or at the collector.
    pub lost: u64,
    pub permits: usize,
    pub problems: Vec<String>,
    pub collector_next: u64,
}

impl Rig {
    /// Broker, authority, collector and the main device, open.
    pub fn new() -> Result<Rig, Broken> {
        let mut fleet = Fleet::with_policy(&policy());
        fleet.start_authority();
        fleet.start_collector();
        let mut rig = Rig {
            main: new_dev(&fleet, "main-0", LINEAGE, Vec::new()),
            fleet,
            serial: 0,
        };
        rig.main.device.enroll();
        rig.main.start()?;
        rig.main.must_open()?;
        Ok(rig)
    }

    /// A new enrolled device `name-N` with `extra` configuration appended
    /// (sections after `[status]`), not started.
    pub fn device(&mut self, name: &str, extra: &str, env: Vec<(String, String)>) -> Dev {
        self.serial += 1;
        let dev = new_dev(&self.fleet, &format!("{name}-{}", self.serial), extra, env);
        dev.device.enroll();
        dev
    }

    pub fn collector_db(&self) -> PathBuf {
        self.fleet.dir.path().join("collector.db")
    }

    pub fn collected(&self, dev: &Dev) -> Result<Collected, String> {
        lineage::read_collector(&self.collector_db(), dev.id())
    }

    /// Checks every permit in `seen` against the device's lineage on disk
    /// (present, a permit under the same artifact, chain verified) and the
    /// collector (holds the same record, once it caught up).
    pub fn account(&self, dev: &Dev, seen: &[Observation]) -> Accounting {
        let permits = super::probe::permits(seen);
        self.account_permits(dev, &permits)
    }

    pub fn account_permits(&self, dev: &Dev, permits: &[Permit]) -> Accounting {
        let mut acc = Accounting {
            permits: permits.len(),
            ..Accounting::default()
        };
        let disk = match dev.disk() {
            Ok(disk) => disk,
            Err(e) => {
                acc.problems.push(format!("lineage on disk: {e}"));
                acc.lost = permits.len() as u64;
                return acc;
            }
        };
        // The collector gets everything written so far once the agent
        // forwarded it.
        let target = permits
            .iter()
            .map(|p| p.seq + 1)
            .chain(disk.last_seq().map(|s| s + 1))
            .max()
            .unwrap_or(0);
        let mut collected = Collected::default();
        let caught_up = wait_until(RECOVERY, || {
            match self.collected(dev) {
                Ok(c) => collected = c,
                Err(e) => {
                    acc.problems.push(e);
                    return true;
                }
            }
            collected.next_seq() >= target
        });
        acc.collector_next = collected.next_seq();
        if caught_up.is_none() {
            acc.problems.push(format!(
                "collector holds seqs below {} after {} s, device wrote below {target}",
                collected.next_seq(),
                RECOVERY.as_secs()
            ));
        }
        for permit in permits {
            let seq = &permit.seq;
            let on_disk = match disk.get(*seq) {
                Some(record) => {
                    if lineage::is_permit_of(&record.bytes, permit) {
                        Some(record.hash)
                    } else {
                        acc.problems.push(format!(
                            "seq {seq}: answered permit to `{}`, recorded otherwise",
                            permit.reference
                        ));
                        acc.lost += 1;
                        continue;
                    }
                }
                // Pruned: the collector acknowledged it before.
                None if disk.first_seq().is_some_and(|first| *seq < first) => None,
                None => {
                    acc.problems
                        .push(format!("seq {seq}: answered permit, not on disk"));
                    acc.lost += 1;
                    continue;
                }
            };
            match (collected.hashes.get(seq), on_disk) {
                (Some(stored), Some(hash)) if *stored != hash => {
                    acc.problems
                        .push(format!("seq {seq}: the collector holds another record"));
                    acc.lost += 1;
                }
                (None, _) => {
                    acc.problems
                        .push(format!("seq {seq}: not at the collector"));
                    acc.lost += 1;
                }
                _ => {}
            }
        }
        for record in &disk.records {
            if let Some(stored) = collected.hashes.get(&record.seq)
                && *stored != record.hash
            {
                acc.problems
                    .push(format!("seq {}: collector and device differ", record.seq));
                break;
            }
        }
        acc.problems.truncate(5);
        acc
    }

    /// Puts the fleet back after a failed scenario: every process running
    /// and resumed, the main device open (a new one if it will not open).
    pub fn heal(&mut self) -> Result<(), Broken> {
        let _ = privileged("chattr")
            .args(["-R", "-i"])
            .arg(self.main.device.state_dir())
            .status();
        if let Some(agent) = &self.main.device.agent {
            let _ = agent.signal(rustix::process::Signal::CONT);
        }
        if let Some(authority) = &self.fleet.authority {
            let _ = authority.signal(rustix::process::Signal::CONT);
        }
        if let Some(pid) = self.fleet.broker.pid() {
            let _ = rustix::process::Pid::from_raw(pid as i32)
                .map(|p| rustix::process::kill_process(p, rustix::process::Signal::CONT));
        }
        if !self.fleet.broker.is_running() {
            let _ = self.fleet.broker.start_again();
        }
        if self.fleet.authority.is_none() {
            self.fleet.start_authority();
        }
        if self.fleet.collector.is_none() {
            self.fleet.start_collector();
        }
        if !self.main.device.alive() {
            self.main.start()?;
        }
        if self.main.wait_open(Duration::from_secs(15)).is_some() {
            return Ok(());
        }
        reboot(&self.fleet, &mut self.main, true)?;
        if self.main.wait_open(Duration::from_secs(15)).is_some() {
            return Ok(());
        }
        // Beyond repair: a new main device.
        self.serial += 1;
        let mut fresh = new_dev(
            &self.fleet,
            &format!("main-{}", self.serial),
            LINEAGE,
            Vec::new(),
        );
        fresh.device.enroll();
        fresh.start()?;
        fresh.must_open()?;
        self.main = fresh;
        Ok(())
    }
}

/// The fleet manager's CLI; broken unless it exits 0.
pub fn cli(fleet: &Fleet, args: &[&str]) -> Result<Value, Broken> {
    let mut all = args.to_vec();
    all.push("--json");
    let out = fleet.cli(&all);
    if out.code != 0 {
        return Err(Broken::step(
            format!("mctc-authority {args:?}"),
            format!("{out:?}"),
        ));
    }
    Ok(out.json())
}

/// Lifts a containment if the authority holds the device contained.
pub fn restore_if_contained(fleet: &Fleet, dev: &Dev) -> Result<(), Broken> {
    let shown = cli(fleet, &["devices", "show", dev.id()])?;
    if shown["status"] == "contained" {
        cli(
            fleet,
            &["devices", "restore", dev.id(), "--reason", "chaos recovery"],
        )?;
    }
    Ok(())
}

/// What a reboot does: a TPM reset, the agent started again (it measures
/// its files into the new boot). With `restore`, the fleet manager lifts a
/// containment the drift caused, as an operator would after looking.
pub fn reboot(fleet: &Fleet, dev: &mut Dev, restore: bool) -> Result<(), Broken> {
    dev.device.kill();
    dev.device.swtpm.reset().context("swtpm reset")?;
    if restore {
        restore_if_contained(fleet, dev)?;
    }
    dev.start()
}

fn new_dev(fleet: &Fleet, id: &str, extra: &str, env: Vec<(String, String)>) -> Dev {
    let device = fleet.device_with(id, CLASS, extra);
    let spy = MqttClient::connect(
        &fleet.broker,
        mctc_tests::OBSERVER,
        &format!("chaos-spy-{id}"),
        &[
            &format!("mctc/v1/dev/{id}/artifact"),
            &format!("mctc/v1/dev/{id}/control"),
            &format!("mctc/v1/dev/{id}/evidence"),
            "mctc/v1/fleet/heartbeat",
        ],
    );
    Dev { device, spy, env }
}

/// `program` as root: directly when the suite runs as root, otherwise
/// through `sudo -n` (the tmpfs mount of the disk-full row and the
/// immutable attribute of the read-only row need it).
pub fn privileged(program: &str) -> Command {
    if rustix::process::geteuid().is_root() {
        Command::new(program)
    } else {
        let mut command = Command::new("sudo");
        command.args(["-n", program]);
        command
    }
}

/// Milliseconds, for rows.
pub fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Whether [`privileged`] can work: the suite runs as root, or `sudo -n`
/// succeeds without a password.
pub fn can_be_root() -> bool {
    rustix::process::geteuid().is_root()
        || Command::new("sudo")
            .args(["-n", "true"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}
