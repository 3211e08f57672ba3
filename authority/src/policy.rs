//! The fleet policy file: device classes with the PCRs they quote, the
//! reference digests those PCRs may hold, artifact lifetime, heartbeat
//! window, scope, and whether unknown ids may enroll on first use.
//!
//! The reference of a PCR is the union of the file's digests and the
//! digests learned into the database (`policy learn`). Evidence is affirmed
//! only when every policy PCR has a reference and holds an allowed value
//! ([`ClassPolicy::judge`]).
//!
//! Changing what a class accepts is judged here too, sans IO: which learned
//! digests a change leaves ([`learned_after`]), which active devices it would
//! contain ([`would_contain`]: their last verified values pass before and
//! drift after), why a device's values should not be learned
//! ([`objections`]), and which devices a staged rollout covers
//! ([`stage_bucket`], [`ClassBaseline::for_device`]).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use mctc_shim::artifact::Currency;
use mctc_shim::limits::{
    MAX_CLASS_LEN, MAX_HB_MS, MAX_OP_LEN, MAX_PCRS, MAX_SCOPE_ENTRIES, MAX_TTL_MS, MIN_HB_MS,
};
use mctc_shim::messages::DeviceStatus;
use mctc_shim::wire::token_problem;
use serde::Deserialize;

use crate::error::{Error, one_line};
use crate::model::{DeviceRecord, Refusal, Verdict, parse_sha256};

pub use crate::model::{ClassBaseline, Forget, LearnMode, LearnedDigest, Stage, StageState};

/// The parsed policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Where it was read from.
    pub path: PathBuf,
    /// Classes by name.
    pub classes: BTreeMap<String, ClassPolicy>,
}

/// One device class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassPolicy {
    /// The class name (a token ≤ 32 bytes: it travels in registry records).
    pub name: String,
    /// Quoted PCRs of the SHA-256 bank, ascending.
    pub pcrs: Vec<u8>,
    /// Artifact validity on the device's monotonic clock.
    pub artifact_ttl_ms: u32,
    /// Heartbeat window put in the class's artifacts.
    pub heartbeat_ms: u32,
    /// Unknown ids enroll into this class on first use.
    pub allow_first_use: bool,
    /// File reference digests per PCR.
    pub reference: BTreeMap<u8, Vec<[u8; 32]>>,
    /// Authorized operations.
    pub scope: Vec<ScopeRule>,
}

/// One authorized operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeRule {
    /// Operation name (token ≤ 32 bytes).
    pub op: String,
    /// Per-operation amount limit in minor units.
    pub max_amount: Option<u64>,
    /// The only currency allowed.
    pub currency: Option<Currency>,
    /// Each operation needs its own fresh attestation.
    pub fresh_attestation: bool,
}

/// How observed PCR values compare with a class's reference.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Judgement {
    /// PCRs with a reference that hold another value: drift.
    pub drift: Vec<u8>,
    /// PCRs with no reference at all: no baseline.
    pub missing: Vec<u8>,
}

impl Judgement {
    /// Every PCR has a reference and matches it.
    pub fn affirms(&self) -> bool {
        self.drift.is_empty() && self.missing.is_empty()
    }
}

impl ClassPolicy {
    /// The PCR selection as a bit mask (bit i = PCR i).
    pub fn mask(&self) -> u32 {
        self.pcrs.iter().fold(0, |m, &p| m | (1u32 << p))
    }

    /// The allowed digests of `pcr`: the file's and the learned ones.
    pub fn allowed<'a>(
        &'a self,
        pcr: u8,
        learned: &'a [LearnedDigest],
    ) -> impl Iterator<Item = &'a [u8; 32]> + 'a {
        self.reference.get(&pcr).into_iter().flatten().chain(
            learned
                .iter()
                .filter(move |l| l.pcr == pcr)
                .map(|l| &l.digest),
        )
    }

    /// Compares `values` (PCR, value) with the reference. A policy PCR
    /// absent from `values` counts as drift (the caller verified the
    /// selection already; this keeps the function total).
    pub fn judge(&self, values: &[(u8, [u8; 32])], learned: &[LearnedDigest]) -> Judgement {
        let mut judgement = Judgement::default();
        for &pcr in &self.pcrs {
            let mut allowed = self.allowed(pcr, learned).peekable();
            if allowed.peek().is_none() {
                judgement.missing.push(pcr);
                continue;
            }
            let value = values.iter().find(|(p, _)| *p == pcr).map(|(_, v)| v);
            if !value.is_some_and(|v| allowed.any(|a| a == v)) {
                judgement.drift.push(pcr);
            }
        }
        judgement
    }
}

/// The rollout bucket of a device id, 0-99: the first eight bytes of the
/// SHA-256 of the id, big-endian, modulo 100. A stage of share `p` covers
/// the buckets below `p`, so widening a stage keeps every device it
/// covered, and the selection is the same on every instance and run.
pub fn stage_bucket(id: &str) -> u8 {
    let digest = ring::digest::digest(&ring::digest::SHA256, id.as_bytes());
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest.as_ref()[..8]);
    // `% 100` is below 100, so it fits a u8.
    (u64::from_be_bytes(head) % 100) as u8
}

impl Stage {
    /// Whether the stage is active and `id` is in its share.
    pub fn selects(&self, id: &str) -> bool {
        self.state == StageState::Active && stage_bucket(id) < self.share
    }

    /// The staged values as learned digests.
    pub fn digests(&self) -> impl Iterator<Item = LearnedDigest> + '_ {
        self.values.iter().map(|&(pcr, digest)| LearnedDigest {
            pcr,
            digest,
            from: self.from.clone(),
            at_ms: self.started_ms,
        })
    }
}

impl ClassBaseline {
    /// The active stage, if it covers `id`.
    pub fn staged(&self, id: &str) -> Option<&Stage> {
        self.stage.as_ref().filter(|s| s.selects(id))
    }

    /// The digests (besides the policy file's) that `id`'s evidence is
    /// judged against: the learned ones, and the staged values when the
    /// active stage covers it. A stage only ever adds: a staged device
    /// still accepts the class's values.
    pub fn for_device(&self, id: &str) -> Cow<'_, [LearnedDigest]> {
        match self.staged(id) {
            None => Cow::Borrowed(&self.learned),
            Some(stage) => {
                let mut all = self.learned.clone();
                for d in stage.digests() {
                    if !all.iter().any(|l| l.pcr == d.pcr && l.digest == d.digest) {
                        all.push(d);
                    }
                }
                Cow::Owned(all)
            }
        }
    }
}

/// The learned digests after `policy learn` of `values` (learned from
/// `from` at `at_ms`): [`LearnMode::Add`] keeps every digest and adds the
/// new ones (a digest known already keeps its origin); [`LearnMode::Replace`]
/// drops the learned digests of the PCRs in `values` first.
pub fn learned_after(
    learned: &[LearnedDigest],
    mode: LearnMode,
    values: &[(u8, [u8; 32])],
    from: &str,
    at_ms: u64,
) -> Vec<LearnedDigest> {
    let mut out: Vec<LearnedDigest> = learned
        .iter()
        .filter(|l| mode == LearnMode::Add || !values.iter().any(|(pcr, _)| *pcr == l.pcr))
        .cloned()
        .collect();
    for &(pcr, digest) in values {
        if !out.iter().any(|l| l.pcr == pcr && l.digest == digest) {
            out.push(LearnedDigest {
                pcr,
                digest,
                from: from.to_owned(),
                at_ms,
            });
        }
    }
    out.sort_by_key(|l| (l.pcr, l.digest));
    out
}

/// The learned digests after `policy forget`.
pub fn forgotten(learned: &[LearnedDigest], forget: &Forget) -> Vec<LearnedDigest> {
    learned
        .iter()
        .filter(|l| !forget.matches(l))
        .cloned()
        .collect()
}

/// The active devices of `class` that a change from `before` to `after`
/// would contain: their last verified values (for the class's current PCR
/// selection) show no drift under `before` and drift under `after`, so
/// their next attestation is refused and contains them. A device whose
/// values are unknown, or cover other PCRs, is not counted (it is refused
/// or re-learned whatever the change).
pub fn would_contain<'a>(
    class: &ClassPolicy,
    devices: &'a [DeviceRecord],
    before: &ClassBaseline,
    after: &ClassBaseline,
) -> Vec<&'a DeviceRecord> {
    devices
        .iter()
        .filter(|d| d.class == class.name && d.status == DeviceStatus::Active)
        .filter(|d| {
            let Some(pcrs) = d.last_pcrs.as_ref().filter(|p| p.mask == class.mask()) else {
                return false;
            };
            let values: Vec<(u8, [u8; 32])> = crate::model::indices(pcrs.mask)
                .zip(pcrs.values.iter().copied())
                .collect();
            let id = d.id.as_str();
            class
                .judge(&values, &before.for_device(id))
                .drift
                .is_empty()
                && !class.judge(&values, &after.for_device(id)).drift.is_empty()
        })
        .collect()
}

/// Why a device's last verified values should not become accepted values
/// of its class without `--force`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Objection {
    /// The device is contained (with its reason).
    Contained(Option<String>),
    /// Its last attestation was refused (a missing baseline is not held
    /// against it: that is how a class's first values are learned).
    LastRefused(Refusal),
    /// Its values differ from what its class accepts at these PCRs.
    Drifted(Vec<u8>),
    /// Its values were verified longer ago than the bound.
    Stale {
        /// Seconds since they were verified.
        age_s: u64,
        /// The bound.
        max_s: u64,
    },
}

impl fmt::Display for Objection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Objection::Contained(Some(reason)) => write!(f, "it is contained ({reason})"),
            Objection::Contained(None) => f.write_str("it is contained"),
            Objection::LastRefused(r) => write!(f, "its last attestation was refused ({r})"),
            Objection::Drifted(pcrs) => {
                let list: Vec<String> = pcrs.iter().map(u8::to_string).collect();
                write!(f, "it drifted from its class at PCR {}", list.join(","))
            }
            Objection::Stale { age_s, max_s } => write!(
                f,
                "its values were verified {age_s} s ago (more than {max_s} s)"
            ),
        }
    }
}

/// What holds against learning `d`'s last verified `values` into `class`
/// (judged against `baseline` as the device sees it) at `now_ms`, with
/// values older than `max_age_ms` too old. Empty: safe to learn.
pub fn objections(
    d: &DeviceRecord,
    class: &ClassPolicy,
    baseline: &ClassBaseline,
    values: &[(u8, [u8; 32])],
    now_ms: u64,
    max_age_ms: u64,
) -> Vec<Objection> {
    let mut out = Vec::new();
    if d.status == DeviceStatus::Contained {
        out.push(Objection::Contained(d.reason.clone()));
    }
    if d.verdict == Some(Verdict::Refused)
        && let Some(r) = d.refusal.filter(|r| *r != Refusal::NoBaseline)
    {
        out.push(Objection::LastRefused(r));
    }
    let drift = class
        .judge(values, &baseline.for_device(d.id.as_str()))
        .drift;
    if !drift.is_empty() {
        out.push(Objection::Drifted(drift));
    }
    let age_ms = d.verified_ms.map_or(u64::MAX, |v| now_ms.saturating_sub(v));
    if age_ms > max_age_ms {
        out.push(Objection::Stale {
            age_s: age_ms / 1000,
            max_s: max_age_ms / 1000,
        });
    }
    out
}

impl Policy {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Policy, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ReadFile {
            path: path.to_owned(),
            source,
        })?;
        Policy::parse(path, &text)
    }

    /// The class named `name`.
    pub fn class(&self, name: &str) -> Option<&ClassPolicy> {
        self.classes.get(name)
    }

    /// The class unknown ids enroll into, if any.
    pub fn first_use_class(&self) -> Option<&ClassPolicy> {
        self.classes.values().find(|c| c.allow_first_use)
    }

    /// How often the fleet heartbeat goes out: a third of the shortest
    /// class window, so every class hears about three per window.
    pub fn heartbeat_interval_ms(&self) -> u64 {
        self.classes
            .values()
            .map(|c| u64::from(c.heartbeat_ms))
            .min()
            .unwrap_or(u64::from(MIN_HB_MS))
            / 3
    }

    /// The heartbeat's `hb_ms`: the longest class window (devices use the
    /// smaller of it and their artifact's, so it never shortens a class).
    pub fn heartbeat_window_ms(&self) -> u32 {
        self.classes
            .values()
            .map(|c| c.heartbeat_ms)
            .max()
            .unwrap_or(MIN_HB_MS)
    }

    /// Parses and validates `text` as if read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Policy, Error> {
        let raw: RawPolicy =
            toml::from_str(text).map_err(|e| Error::config(path, one_line(&e.to_string())))?;
        let bad = |reason: String| Error::config(path, reason);
        if raw.classes.is_empty() {
            return Err(bad("no [classes.NAME] defined".to_owned()));
        }
        let mut classes = BTreeMap::new();
        for (name, class) in raw.classes {
            let class = class
                .validate(&name)
                .map_err(|reason| bad(format!("classes.{name}: {reason}")))?;
            classes.insert(name, class);
        }
        let first_use: Vec<&str> = classes
            .values()
            .filter(|c| c.allow_first_use)
            .map(|c| c.name.as_str())
            .collect();
        if first_use.len() > 1 {
            return Err(bad(format!(
                "allow_first_use is set in several classes ({}); unknown ids need exactly one class",
                first_use.join(", ")
            )));
        }
        Ok(Policy {
            path: path.to_owned(),
            classes,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    classes: BTreeMap<String, RawClass>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClass {
    #[serde(default = "default_bank")]
    pcr_bank: String,
    pcrs: Vec<u32>,
    artifact_ttl_ms: u32,
    heartbeat_ms: u32,
    #[serde(default)]
    allow_first_use: bool,
    #[serde(default)]
    reference: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    scope: Vec<RawScope>,
}

fn default_bank() -> String {
    "sha256".to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScope {
    op: String,
    #[serde(default)]
    max_amount: Option<u64>,
    #[serde(default)]
    currency: Option<String>,
    fresh_attestation: bool,
}

impl RawClass {
    fn validate(self, name: &str) -> Result<ClassPolicy, String> {
        if token_problem(name, MAX_CLASS_LEN).is_some() {
            return Err(format!(
                "class names are 1-{MAX_CLASS_LEN} printable ASCII characters without spaces"
            ));
        }
        if self.pcr_bank != "sha256" {
            return Err(format!(
                "pcr_bank = \"{}\": only \"sha256\" is attested",
                self.pcr_bank
            ));
        }
        let mut pcrs = Vec::new();
        for &pcr in &self.pcrs {
            let pcr = u8::try_from(pcr)
                .ok()
                .filter(|p| usize::from(*p) < MAX_PCRS)
                .ok_or_else(|| format!("pcrs: {pcr} is not a PCR index 0-23"))?;
            if pcrs.contains(&pcr) {
                return Err(format!("pcrs: {pcr} is listed twice"));
            }
            pcrs.push(pcr);
        }
        if pcrs.is_empty() {
            return Err("pcrs is empty: a class must attest at least one PCR".to_owned());
        }
        pcrs.sort_unstable();
        if !(1..=MAX_TTL_MS).contains(&self.artifact_ttl_ms) {
            return Err(format!("artifact_ttl_ms must be 1..={MAX_TTL_MS}"));
        }
        if !(MIN_HB_MS..=MAX_HB_MS).contains(&self.heartbeat_ms) {
            return Err(format!("heartbeat_ms must be {MIN_HB_MS}..={MAX_HB_MS}"));
        }
        let mut reference = BTreeMap::new();
        for (key, digests) in self.reference {
            let pcr = key
                .parse::<u8>()
                .ok()
                .filter(|p| pcrs.contains(p))
                .ok_or_else(|| format!("reference.{key}: not one of the class's pcrs"))?;
            let mut parsed = Vec::new();
            for digest in &digests {
                parsed.push(parse_sha256(digest).ok_or_else(|| {
                    format!("reference.{key}: `{digest}` is not a 64-digit hex SHA-256")
                })?);
            }
            if parsed.is_empty() {
                return Err(format!(
                    "reference.{key} is empty (omit the PCR to leave it without baseline)"
                ));
            }
            reference.insert(pcr, parsed);
        }
        if self.scope.len() > MAX_SCOPE_ENTRIES {
            return Err(format!("at most {MAX_SCOPE_ENTRIES} scope entries"));
        }
        let mut scope: Vec<ScopeRule> = Vec::new();
        for s in self.scope {
            if token_problem(&s.op, MAX_OP_LEN).is_some() {
                return Err(format!(
                    "scope op `{}`: 1-{MAX_OP_LEN} printable ASCII characters without spaces",
                    s.op
                ));
            }
            if scope.iter().any(|other| other.op == s.op) {
                return Err(format!("scope op `{}` is listed twice", s.op));
            }
            let currency = match &s.currency {
                None => None,
                Some(code) => Some(Currency::new(code).ok_or_else(|| {
                    format!(
                        "scope op `{}`: currency `{code}` is not three upper-case letters",
                        s.op
                    )
                })?),
            };
            scope.push(ScopeRule {
                op: s.op,
                max_amount: s.max_amount,
                currency,
                fresh_attestation: s.fresh_attestation,
            });
        }
        Ok(ClassPolicy {
            name: name.to_owned(),
            pcrs,
            artifact_ttl_ms: self.artifact_ttl_ms,
            heartbeat_ms: self.heartbeat_ms,
            allow_first_use: self.allow_first_use,
            reference,
            scope,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZERO: &str = "0000000000000000000000000000000000000000000000000000000000000000";

    fn policy(text: &str) -> Result<Policy, Error> {
        Policy::parse(Path::new("/p.toml"), text)
    }

    fn two_classes() -> Policy {
        policy(&format!(
            r#"
[classes.locker]
pcrs = [7, 0]
artifact_ttl_ms = 60000
heartbeat_ms = 30000
[classes.locker.reference]
0 = ["{ZERO}"]
7 = ["{ZERO}", "{}"]
[[classes.locker.scope]]
op = "unlock"
fresh_attestation = false

[classes.pos]
pcrs = [0]
artifact_ttl_ms = 1000
heartbeat_ms = 3000
allow_first_use = true
[[classes.pos.scope]]
op = "capture"
max_amount = 5000
currency = "EUR"
fresh_attestation = true
"#,
            "11".repeat(32)
        ))
        .unwrap()
    }

    #[test]
    fn parses_classes_and_derives_the_heartbeat() {
        let p = two_classes();
        let locker = p.class("locker").unwrap();
        assert_eq!(locker.pcrs, vec![0, 7]);
        assert_eq!(locker.mask(), 0b1000_0001);
        assert_eq!(locker.reference[&7].len(), 2);
        let pos = p.class("pos").unwrap();
        assert_eq!(pos.scope[0].currency, Currency::new("EUR"));
        assert_eq!(pos.scope[0].max_amount, Some(5000));
        assert_eq!(p.first_use_class().unwrap().name, "pos");
        assert_eq!(p.heartbeat_interval_ms(), 1000);
        assert_eq!(p.heartbeat_window_ms(), 30000);
    }

    #[test]
    fn judges_drift_before_missing_and_unions_learned_values() {
        let p = two_classes();
        let locker = p.class("locker").unwrap();
        let ok = [(0, [0u8; 32]), (7, [0x11; 32])];
        assert!(locker.judge(&ok, &[]).affirms());
        let drifted = [(0, [0u8; 32]), (7, [0x22; 32])];
        assert_eq!(locker.judge(&drifted, &[]).drift, vec![7]);
        let learned = [LearnedDigest {
            pcr: 7,
            digest: [0x22; 32],
            from: "d".into(),
            at_ms: 0,
        }];
        assert!(locker.judge(&drifted, &learned).affirms());
        assert_eq!(locker.judge(&[(0, [0u8; 32])], &[]).drift, vec![7]);

        let pos = p.class("pos").unwrap();
        let j = pos.judge(&[(0, [0u8; 32])], &[]);
        assert_eq!(j.missing, vec![0]);
        assert!(!j.affirms());
    }

    fn learned(pcr: u8, byte: u8, from: &str) -> LearnedDigest {
        LearnedDigest {
            pcr,
            digest: [byte; 32],
            from: from.into(),
            at_ms: 0,
        }
    }

    /// A device of class `locker` (PCRs 0 and 7) whose last verified
    /// values are zeros at PCR 0 and `pcr7` at PCR 7.
    fn device(name: &str, status: DeviceStatus, pcr7: u8) -> DeviceRecord {
        DeviceRecord {
            status,
            last_pcrs: Some(crate::model::PcrSnapshot {
                mask: 0b1000_0001,
                values: vec![[0; 32], [pcr7; 32]],
            }),
            verified_ms: Some(1_000_000),
            attempt_ms: Some(1_000_000),
            verdict: Some(Verdict::Affirmed),
            artifacts_issued: 1,
            ..DeviceRecord::fresh(name, "locker")
        }
    }

    fn stage(share: u8, pcr7: u8) -> Stage {
        Stage {
            id: 1,
            class: "locker".into(),
            from: "canary".into(),
            values: vec![(0, [0; 32]), (7, [pcr7; 32])],
            share,
            stop_after: 1,
            failures: 0,
            state: StageState::Active,
            started_ms: 0,
            ended_ms: None,
            end_reason: None,
        }
    }

    #[test]
    fn learning_adds_unless_told_to_replace() {
        let before = [learned(7, 0x22, "a")];
        let added = learned_after(&before, LearnMode::Add, &[(7, [0x33; 32])], "b", 5);
        assert_eq!(added.len(), 2);
        assert_eq!(added[0].from, "a");
        let replaced = learned_after(&before, LearnMode::Replace, &[(7, [0x33; 32])], "b", 5);
        assert_eq!(
            replaced,
            vec![LearnedDigest {
                at_ms: 5,
                ..learned(7, 0x33, "b")
            }]
        );
        // A value accepted already keeps where it came from.
        let again = learned_after(&before, LearnMode::Add, &[(7, [0x22; 32])], "b", 5);
        assert_eq!(again, before.to_vec());
        let forgot = forgotten(&added, &Forget::LearnedFrom("b".into()));
        assert_eq!(forgot, before.to_vec());
        let forgot = forgotten(
            &added,
            &Forget::Digest {
                pcr: 7,
                digest: [0x22; 32],
            },
        );
        assert_eq!(forgot.len(), 1);
        assert_eq!(forgot[0].from, "b");
    }

    #[test]
    fn counts_the_active_devices_a_change_would_contain() {
        let p = two_classes();
        let locker = p.class("locker").unwrap();
        // The file accepts 0x00 and 0x11 at PCR 7; 0x22 is learned.
        let devices = [
            device("on-file", DeviceStatus::Active, 0x11),
            device("on-learned", DeviceStatus::Active, 0x22),
            device("on-learned-too", DeviceStatus::Active, 0x22),
            device("contained", DeviceStatus::Contained, 0x22),
            device("drifted", DeviceStatus::Active, 0x99),
        ];
        let before = ClassBaseline {
            learned: vec![learned(7, 0x22, "on-learned")],
            stage: None,
        };
        let ids = |v: Vec<&DeviceRecord>| v.iter().map(|d| d.id.to_string()).collect::<Vec<_>>();
        // Adding never narrows.
        let add = ClassBaseline {
            learned: learned_after(&before.learned, LearnMode::Add, &[(7, [0x33; 32])], "x", 0),
            stage: None,
        };
        assert!(would_contain(locker, &devices, &before, &add).is_empty());
        // Replacing the learned value contains every active device that
        // relied on it, and nobody else.
        let replace = ClassBaseline {
            learned: learned_after(
                &before.learned,
                LearnMode::Replace,
                &[(7, [0x33; 32])],
                "x",
                0,
            ),
            stage: None,
        };
        assert_eq!(
            ids(would_contain(locker, &devices, &before, &replace)),
            vec!["on-learned", "on-learned-too"]
        );
        // So does forgetting it.
        let forget = ClassBaseline {
            learned: forgotten(&before.learned, &Forget::LearnedFrom("on-learned".into())),
            stage: None,
        };
        assert_eq!(would_contain(locker, &devices, &before, &forget).len(), 2);
        // A device whose values cover other PCRs is not judged.
        let mut other = device("other-pcrs", DeviceStatus::Active, 0x22);
        other.last_pcrs.as_mut().unwrap().mask = 1;
        assert!(would_contain(locker, &[other], &before, &replace).is_empty());
    }

    #[test]
    fn objections_name_every_reason_not_to_learn() {
        let p = two_classes();
        let locker = p.class("locker").unwrap();
        let none = ClassBaseline::default();
        let healthy = device("ok", DeviceStatus::Active, 0x11);
        let values = [(0, [0; 32]), (7, [0x11; 32])];
        assert_eq!(
            objections(&healthy, locker, &none, &values, 1_000_000, 60_000),
            vec![]
        );

        let mut bad = device("bad", DeviceStatus::Contained, 0x99);
        bad.reason = Some("pcr drift: PCR 7".into());
        bad.verdict = Some(Verdict::Refused);
        bad.refusal = Some(Refusal::PolicyMismatch);
        let drifted = [(0, [0; 32]), (7, [0x99; 32])];
        let found = objections(&bad, locker, &none, &drifted, 1_000_000 + 61_000, 60_000);
        assert_eq!(
            found,
            vec![
                Objection::Contained(Some("pcr drift: PCR 7".into())),
                Objection::LastRefused(Refusal::PolicyMismatch),
                Objection::Drifted(vec![7]),
                Objection::Stale {
                    age_s: 61,
                    max_s: 60
                },
            ]
        );
        assert!(found[2].to_string().contains("PCR 7"), "{}", found[2]);

        // A class's first values come from a device refused for want of
        // a baseline: that refusal is not held against it.
        let mut first = device("first", DeviceStatus::Active, 0x11);
        first.verdict = Some(Verdict::Refused);
        first.refusal = Some(Refusal::NoBaseline);
        assert_eq!(
            objections(&first, locker, &none, &values, 1_000_000, 60_000),
            vec![]
        );
    }

    #[test]
    fn a_stage_covers_a_stable_growing_share_and_only_adds() {
        let ids: Vec<String> = (0..1000).map(|i| format!("dev-{i}")).collect();
        let covered = |share: u8| -> Vec<&String> {
            let s = stage(share, 0x33);
            ids.iter().filter(|id| s.selects(id)).collect()
        };
        let ten = covered(10);
        let fifty = covered(50);
        // About the share asked for, the same on every call, and widening
        // keeps every device covered before.
        assert!((60..=140).contains(&ten.len()), "{}", ten.len());
        assert!((420..=580).contains(&fifty.len()), "{}", fifty.len());
        assert_eq!(ten, covered(10));
        assert!(ten.iter().all(|id| fifty.contains(id)));
        assert_eq!(covered(100).len(), 1000);
        assert_eq!(stage_bucket("dev-1"), stage_bucket("dev-1"));

        let p = two_classes();
        let locker = p.class("locker").unwrap();
        let baseline = ClassBaseline {
            learned: vec![learned(7, 0x22, "a")],
            stage: Some(stage(10, 0x33)),
        };
        let inside = ten[0].as_str();
        let outside = ids.iter().find(|id| !ten.contains(id)).unwrap().as_str();
        let new_values = [(0, [0; 32]), (7, [0x33; 32])];
        let old_values = [(0, [0; 32]), (7, [0x22; 32])];
        assert!(
            locker
                .judge(&new_values, &baseline.for_device(inside))
                .affirms()
        );
        assert!(
            locker
                .judge(&old_values, &baseline.for_device(inside))
                .affirms()
        );
        assert_eq!(
            locker
                .judge(&new_values, &baseline.for_device(outside))
                .drift,
            vec![7]
        );
        // A stage that ended changes nothing.
        let mut ended = baseline.clone();
        ended.stage.as_mut().unwrap().state = StageState::Stopped;
        assert!(ended.staged(inside).is_none());
        assert_eq!(
            locker.judge(&new_values, &ended.for_device(inside)).drift,
            vec![7]
        );
        // Rolling the stage back would contain the staged devices that
        // match only the staged values.
        let devices = [
            device(inside, DeviceStatus::Active, 0x33),
            device(outside, DeviceStatus::Active, 0x22),
        ];
        let rolled_back = ClassBaseline {
            learned: baseline.learned.clone(),
            stage: None,
        };
        assert_eq!(
            would_contain(locker, &devices, &baseline, &rolled_back)
                .iter()
                .map(|d| d.id.as_str())
                .collect::<Vec<_>>(),
            vec![inside]
        );
    }

    #[test]
    fn rejects_what_the_wire_cannot_carry() {
        let base = |extra: &str| {
            format!("[classes.c]\npcrs = [0]\nartifact_ttl_ms = 1000\nheartbeat_ms = 3000\n{extra}")
        };
        for (text, needle) in [
            ("".to_owned(), "no [classes"),
            (base("pcr_bank = \"sha1\""), "pcr_bank"),
            (
                "[classes.c]\npcrs = [24]\nartifact_ttl_ms = 1\nheartbeat_ms = 3000".into(),
                "PCR index",
            ),
            (
                "[classes.c]\npcrs = []\nartifact_ttl_ms = 1\nheartbeat_ms = 3000".into(),
                "pcrs is empty",
            ),
            (
                "[classes.c]\npcrs = [1]\nartifact_ttl_ms = 0\nheartbeat_ms = 3000".into(),
                "artifact_ttl_ms",
            ),
            (
                "[classes.c]\npcrs = [1]\nartifact_ttl_ms = 1\nheartbeat_ms = 999".into(),
                "heartbeat_ms",
            ),
            (
                base("[classes.c.reference]\n3 = [\"00\"]"),
                "not one of the class",
            ),
            (base("[classes.c.reference]\n0 = [\"00\"]"), "64-digit"),
            (base("[classes.c.reference]\n0 = []"), "is empty"),
            (
                base("[[classes.c.scope]]\nop = \"a b\"\nfresh_attestation = false"),
                "scope op",
            ),
            (
                base(
                    "[[classes.c.scope]]\nop = \"a\"\nfresh_attestation = false\n[[classes.c.scope]]\nop = \"a\"\nfresh_attestation = true",
                ),
                "twice",
            ),
            (
                base(
                    "[[classes.c.scope]]\nop = \"a\"\ncurrency = \"eur\"\nfresh_attestation = false",
                ),
                "currency",
            ),
            (base("colour = 1"), "colour"),
            (
                format!(
                    "{}\nallow_first_use = true\n[classes.d]\npcrs = [0]\nartifact_ttl_ms = 1\nheartbeat_ms = 3000\nallow_first_use = true",
                    base("")
                ),
                "several classes",
            ),
        ] {
            let err = policy(&text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}\n=> {err}");
            assert!(!err.contains('\n'), "{err}");
        }
        let long = "x".repeat(33);
        let err = policy(&format!(
            "[classes.{long}]\npcrs = [0]\nartifact_ttl_ms = 1\nheartbeat_ms = 3000"
        ))
        .unwrap_err();
        assert!(err.to_string().contains("class names"), "{err}");
    }
}
