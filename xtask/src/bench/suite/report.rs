//! The figures of one run: every key the issue names, with its target, the
//! limit it is measured against, the table and the JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// A target from issue 9.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// The figure is a limit of the machine, measured in the same run.
    Limit,
    /// Reported only (the ratio beside it carries the target).
    Report,
    /// At most this.
    AtMost(f64),
    /// Below this.
    Below(f64),
    /// At least this.
    AtLeast(f64),
}

/// One row of the table, in the order printed.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    pub name: &'static str,
    pub unit: &'static str,
    pub target: Target,
}

const fn key(name: &'static str, unit: &'static str, target: Target) -> Key {
    Key { name, unit, target }
}

/// Every figure the suite writes, with the names and targets. The
/// permit latency target (3 × one fdatasync) depends on the run and is
/// filled in by [`Figures::permit_p99_target`].
pub const KEYS: [Key; 21] = [
    key("tpm_quote_ms_p50", "ms", Target::Limit),
    key("attest_roundtrip_ms_p50", "ms", Target::Report),
    key("attest_roundtrip_ratio", "×", Target::AtMost(1.5)),
    key(
        "gate_close_after_deadline_ms_p99",
        "ms",
        Target::AtMost(5.0),
    ),
    key("fsync_per_s", "/s", Target::Limit),
    key("fdatasync_ms_p50", "ms", Target::Limit),
    key("durable_permits_per_s", "/s", Target::Report),
    key("durable_permit_ratio", "×", Target::AtLeast(50.0)),
    key("permit_latency_ms_p50", "ms", Target::Report),
    key("permit_latency_ms_p99", "ms", Target::AtMost(f64::NAN)),
    key("agent_rss_mb", "MB", Target::AtMost(10.0)),
    key("agent_binary_mb", "MB", Target::AtMost(8.0)),
    key("agent_idle_cpu_pct", "%", Target::Below(0.5)),
    key("authority_issue_per_s", "/s", Target::AtLeast(2500.0)),
    key("sha256_records_per_s", "/s", Target::Limit),
    key("collector_ingest_per_s", "/s", Target::Report),
    key("collector_ingest_ratio", "×", Target::AtLeast(0.5)),
    key("fleet_devices", "", Target::Report),
    key("fleet_attest_p99_ms", "ms", Target::Below(1000.0)),
    // Context beside the keys.
    key("agent_rss_after_burst_mb", "MB", Target::Report),
    key("fleet_largest_tried", "", Target::Report),
];

/// The figures measured so far, by key, plus a note per key on what
/// limited it.
#[derive(Debug, Default)]
pub struct Figures {
    values: BTreeMap<&'static str, f64>,
    notes: BTreeMap<&'static str, String>,
    failures: Vec<String>,
}

impl Figures {
    pub fn set(&mut self, name: &'static str, value: f64) {
        if value.is_finite() {
            self.values.insert(name, value);
        }
    }

    pub fn note(&mut self, name: &'static str, note: impl Into<String>) {
        self.notes.insert(name, note.into());
    }

    pub fn get(&self, name: &str) -> Option<f64> {
        self.values.get(name).copied()
    }

    pub fn fail(&mut self, what: String) {
        self.failures.push(what);
    }

    pub fn failures(&self) -> &[String] {
        &self.failures
    }

    /// Ratios of figures measured in different sections.
    pub fn derive(&mut self) {
        if let (Some(rt), Some(quote)) = (
            self.get("attest_roundtrip_ms_p50"),
            self.get("tpm_quote_ms_p50"),
        ) && quote > 0.0
        {
            self.set("attest_roundtrip_ratio", rt / quote);
        }
        if let (Some(permits), Some(fsyncs)) =
            (self.get("durable_permits_per_s"), self.get("fsync_per_s"))
            && fsyncs > 0.0
        {
            self.set("durable_permit_ratio", permits / fsyncs);
        }
        if let (Some(ingest), Some(sha)) = (
            self.get("collector_ingest_per_s"),
            self.get("sha256_records_per_s"),
        ) && sha > 0.0
        {
            self.set("collector_ingest_ratio", ingest / sha);
        }
    }

    /// "p99 ≤ 3× one fdatasync": three times the median fdatasync of the
    /// same run.
    pub fn permit_p99_target(&self) -> Option<f64> {
        self.get("fdatasync_ms_p50").map(|one| 3.0 * one)
    }

    fn target_of(&self, key: &Key) -> Target {
        match key.target {
            Target::AtMost(v) if v.is_nan() => self
                .permit_p99_target()
                .map_or(Target::Report, Target::AtMost),
            other => other,
        }
    }

    fn verdict(&self, key: &Key) -> &'static str {
        let Some(value) = self.get(key.name) else {
            return "MISSING";
        };
        match self.target_of(key) {
            Target::Limit => "limit",
            Target::Report => "",
            Target::AtMost(t) => pass(value <= t),
            Target::Below(t) => pass(value < t),
            Target::AtLeast(t) => pass(value >= t),
        }
    }

    /// The table: figure, target, verdict, what limits it.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "| {:<34} | {:>12} | {:<12} | {:<7} | limited by / note",
            "figure", "value", "target", "verdict"
        );
        let _ = writeln!(
            out,
            "|{}|{}|{}|{}|---",
            "-".repeat(36),
            "-".repeat(14),
            "-".repeat(14),
            "-".repeat(9)
        );
        for key in &KEYS {
            let value = self
                .get(key.name)
                .map_or_else(|| "—".to_owned(), |v| format!("{} {}", number(v), key.unit));
            let target = match self.target_of(key) {
                Target::Limit => "(limit)".to_owned(),
                Target::Report => String::new(),
                Target::AtMost(t) => format!("≤ {} {}", number(t), key.unit),
                Target::Below(t) => format!("< {} {}", number(t), key.unit),
                Target::AtLeast(t) => format!("≥ {} {}", number(t), key.unit),
            };
            let note = self.notes.get(key.name).map_or("", String::as_str);
            let _ = writeln!(
                out,
                "| {:<34} | {:>12} | {:<12} | {:<7} | {}",
                format!("`{}`", key.name),
                value,
                target.trim_end(),
                self.verdict(key),
                note
            );
        }
        out
    }

    /// The JSON document: every key at the top level (null when a section
    /// failed), then the run's context.
    pub fn json(&self, meta: serde_json::Value) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        for key in &KEYS {
            let value = self
                .get(key.name)
                .and_then(|v| serde_json::Number::from_f64(round(v)))
                .map_or(serde_json::Value::Null, serde_json::Value::Number);
            map.insert(key.name.to_owned(), value);
        }
        let notes: serde_json::Map<String, serde_json::Value> = self
            .notes
            .iter()
            .map(|(k, v)| ((*k).to_owned(), serde_json::Value::String(v.clone())))
            .collect();
        map.insert("notes".into(), serde_json::Value::Object(notes));
        map.insert(
            "failures".into(),
            serde_json::Value::Array(
                self.failures
                    .iter()
                    .cloned()
                    .map(serde_json::Value::String)
                    .collect(),
            ),
        );
        map.insert("meta".into(), meta);
        serde_json::Value::Object(map)
    }
}

fn pass(ok: bool) -> &'static str {
    if ok { "pass" } else { "MISS" }
}

/// Three significant digits are all a noisy machine supports.
pub(crate) fn round(v: f64) -> f64 {
    if v == 0.0 || !v.is_finite() {
        return v;
    }
    let digits = 2 - (v.abs().log10().floor() as i32);
    if digits >= 0 {
        let scale = 10f64.powi(digits);
        (v * scale).round() / scale
    } else {
        let scale = 10f64.powi(-digits);
        (v / scale).round() * scale
    }
}

pub(crate) fn number(v: f64) -> String {
    let r = round(v);
    if r.abs() >= 100.0 {
        format!("{r:.0}")
    } else if r.abs() >= 10.0 {
        format!("{r:.1}")
    } else if r.abs() >= 1.0 {
        format!("{r:.2}")
    } else {
        format!("{r:.3}")
    }
}
