//! The fleet policy file: device classes with the PCRs they quote, the
//! reference digests those PCRs may hold, artifact lifetime, heartbeat
//! window, scope, and whether unknown ids may enroll on first use.
//!
//! The reference of a PCR is the union of the file's digests and the
//! digests learned into the database (`policy learn`). Evidence is affirmed
//! only when every policy PCR has a reference and holds an allowed value
//! ([`ClassPolicy::judge`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mctc_shim::artifact::Currency;
use mctc_shim::limits::{
    MAX_CLASS_LEN, MAX_HB_MS, MAX_OP_LEN, MAX_PCRS, MAX_SCOPE_ENTRIES, MAX_TTL_MS, MIN_HB_MS,
};
use mctc_shim::wire::token_problem;
use serde::Deserialize;

use crate::error::{Error, one_line};
use crate::model::parse_sha256;

pub use crate::model::LearnedDigest;

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
