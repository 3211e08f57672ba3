//! The `policy` commands: inspect the policy file and the database's
//! learned values, and change what a class accepts (`learn`, `forget`,
//! `stage`, `promote`, `rollback`) safely. Every change is judged before it
//! is made ([`crate::policy`]: the active devices it would contain, the
//! objections to its source device), printed, and stored only with
//! `--yes` (and `--force` where it is unsafe), against the baseline it was
//! judged on.

use std::path::Path;

use clap::Subcommand;
use mctc_shim::DeviceId;
use mctc_shim::messages::DeviceStatus;
use serde_json::{Map, Value, json};

use crate::error::{Error, device_id};
use crate::model::{indices, parse_sha256};
use crate::now::Now;
use crate::policy::{
    ClassBaseline, ClassPolicy, Forget, LearnMode, Objection, Policy, Stage, StageState, forgotten,
    learned_after, objections, would_contain,
};
use crate::store::sqlite::SqliteStore;
use crate::store::{DeviceRecord, NewStage, Promotion, Store, StoreError};

/// What a `policy` command works on: the open store, its path (for
/// errors) and the time read once for the whole command.
#[derive(Debug)]
pub struct Session<'a> {
    /// The database.
    pub store: &'a mut SqliteStore,
    /// Its path.
    pub database: &'a Path,
    /// Now.
    pub now: &'a Now,
}

impl Session<'_> {
    fn db<T>(&self, r: Result<T, StoreError>) -> Result<T, Error> {
        r.map_err(|e| Error::Store {
            path: self.database.to_owned(),
            source: e,
        })
    }

    fn device(&mut self, id: &DeviceId) -> Result<DeviceRecord, Error> {
        let found = self.store.device(id);
        self.db(found)?
            .ok_or_else(|| Error::UnknownDevice(id.to_string()))
    }
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Show a device's last verified PCR values; with --yes accept them
    /// for its class.
    ///
    /// The values are added to those the class accepts already, or with
    /// --replace replace its learned values of those PCRs. Before anything
    /// is stored it prints how many active devices of the class the change
    /// would contain (their last verified values would no longer match).
    ///
    /// Refused without --force when the device is contained, drifted, its
    /// last attestation was refused or its values are older than
    /// --max-age, and when the change would contain active devices of the
    /// class (their last verified values would no longer match).
    Learn {
        /// Device id.
        id: String,
        /// Replace the class's learned values of those PCRs instead of
        /// adding to them.
        #[arg(long)]
        replace: bool,
        /// Learn although the device or the change is unsafe (see above).
        #[arg(long)]
        force: bool,
        /// Store the change (without it, only show what it would do).
        #[arg(long)]
        yes: bool,
        /// How old, in seconds, the device's verified values may be.
        #[arg(long, value_name = "SECS", default_value_t = DEFAULT_MAX_AGE_S)]
        max_age: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove learned values of a class.
    ///
    /// One digest of one PCR (--pcr N --digest HEX), or every value learned
    /// from a device (--from ID). Prints how many active devices of the
    /// class the removal would contain; refused without --force when any.
    Forget {
        /// The class.
        class: String,
        /// The PCR of the digest to remove (with --digest).
        #[arg(long, requires = "digest", conflicts_with = "from")]
        pcr: Option<u8>,
        /// The digest to remove (64 hex digits, with --pcr).
        #[arg(long, requires = "pcr")]
        digest: Option<String>,
        /// Remove every value learned from this device.
        #[arg(long, value_name = "ID", required_unless_present = "pcr")]
        from: Option<String>,
        /// Remove although it would contain active devices.
        #[arg(long)]
        force: bool,
        /// Store the change (without it, only show what it would do).
        #[arg(long)]
        yes: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stage a device's values to a share of its class.
    ///
    /// Devices whose id hashes into the first PCT of 100 buckets accept
    /// them besides the class's values. After K refusals of verified
    /// evidence in the share the stage stops by itself, and the share is
    /// judged by the class's own values again. The device is checked as
    /// by `learn`.
    Stage {
        /// The class.
        class: String,
        /// Device whose last verified values are staged.
        #[arg(long, value_name = "ID")]
        from: String,
        /// Percent of the class that accepts the values (1-100).
        #[arg(long, value_name = "PCT", value_parser = clap::value_parser!(u8).range(1..=100))]
        share: u8,
        /// Stop after this many refusals in the staged share (≥ 1).
        #[arg(long = "stop-after", value_name = "K", value_parser = clap::value_parser!(u32).range(1..))]
        stop_after: u32,
        /// Stage although the device or the change is unsafe.
        #[arg(long)]
        force: bool,
        /// Start the stage (without it, only show what it would do).
        #[arg(long)]
        yes: bool,
        /// How old, in seconds, the device's verified values may be.
        #[arg(long, value_name = "SECS", default_value_t = DEFAULT_MAX_AGE_S)]
        max_age: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Widen a class's active stage, or accept its values for the class.
    ///
    /// With --share PCT the stage covers PCT % (never less than now);
    /// without, its values are learned for the whole class and it ends.
    Promote {
        /// The class.
        class: String,
        /// The new share (at least the current one).
        #[arg(long, value_name = "PCT", value_parser = clap::value_parser!(u8).range(1..=100))]
        share: Option<u8>,
        /// Promote although it would contain active devices.
        #[arg(long)]
        force: bool,
        /// Store the change (without it, only show what it would do).
        #[arg(long)]
        yes: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// End a class's active stage.
    ///
    /// The staged share is judged by the class's own values again.
    Rollback {
        /// The class.
        class: String,
        /// Roll back although it would contain active devices (staged
        /// devices that match only the staged values).
        #[arg(long)]
        force: bool,
        /// Store the change (without it, only show what it would do).
        #[arg(long)]
        yes: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show every class with its effective reference values and stage.
    Show {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// How old a device's verified values may be for `learn` and `stage`
/// without `--force`: an active device re-attests at least once per
/// artifact lifetime, far more often than this.
pub const DEFAULT_MAX_AGE_S: u64 = 3600;

/// Runs a `policy` command.
pub fn run(cx: &mut Session<'_>, policy: &Policy, command: PolicyCommand) -> Result<(), Error> {
    match command {
        PolicyCommand::Learn {
            id,
            replace,
            force,
            yes,
            max_age,
            json,
        } => {
            let id = device_id(&id)?;
            let source = Source::read(cx, policy, &id, max_age)?;
            let class = source.class;
            let before = source.baseline.clone();
            let mode = if replace {
                LearnMode::Replace
            } else {
                LearnMode::Add
            };
            let after = ClassBaseline {
                learned: learned_after(
                    &before.learned,
                    mode,
                    &source.values,
                    id.as_str(),
                    cx.now.wall_ms,
                ),
                stage: before.stage.clone(),
            };
            let what = format!(
                "{} {id}'s values {} class {}",
                if replace {
                    "replacing with"
                } else {
                    "learning"
                },
                if replace {
                    "the learned values of"
                } else {
                    "into"
                },
                class.name
            );
            let plan = Plan::new(cx, class, &before, &after, source.objections.clone())?;
            if !json {
                println!(
                    "device {id}, class {}, last verified values (sha256):",
                    class.name
                );
                let accepted = before.for_device(id.as_str());
                for (pcr, value) in &source.values {
                    let mut allowed = class.allowed(*pcr, &accepted).peekable();
                    let note = if allowed.peek().is_none() {
                        "no baseline"
                    } else if allowed.any(|a| a == value) {
                        "matches baseline"
                    } else {
                        "DIFFERS from baseline"
                    };
                    println!("  PCR {pcr:>2}  {}  {note}", hex::encode(value));
                }
            }
            let stored = plan.decide(&what, force, yes, json)?;
            if stored {
                let done = cx
                    .store
                    .learn(&before, &class.name, &source.values, &id, mode, cx.now);
                if !cx.db(done)? {
                    return Err(changed_meanwhile(&class.name));
                }
            }
            if json {
                let mut v = json!({
                    "device": id.as_str(),
                    "class": class.name,
                    "bank": "sha256",
                    "mode": if replace { "replace" } else { "add" },
                    "values": pairs_json(&source.values),
                    "stored": stored,
                });
                plan.extend_json(&mut v);
                print_json(&v);
            } else if stored {
                println!(
                    "{} class {}",
                    if replace {
                        "stored: these replace the learned values of their PCRs in"
                    } else {
                        "stored: accepted besides the values already accepted by"
                    },
                    class.name
                );
            } else {
                println!(
                    "nothing stored; run `policy learn {id}{} --yes{}` to accept these for class {}",
                    if replace { " --replace" } else { "" },
                    if plan.needs_force() { " --force" } else { "" },
                    class.name
                );
            }
            Ok(())
        }
        PolicyCommand::Forget {
            class,
            pcr,
            digest,
            from,
            force,
            yes,
            json,
        } => {
            let class = known_class(policy, &class)?;
            let forget = match (pcr, digest, from) {
                (Some(pcr), Some(digest), None) => {
                    if !class.pcrs.contains(&pcr) {
                        return Err(Error::Usage(format!(
                            "--pcr {pcr} is not one of class {}'s PCRs",
                            class.name
                        )));
                    }
                    let digest = parse_sha256(&digest).ok_or_else(|| {
                        Error::Usage(format!("--digest `{digest}` is not 64 hex digits"))
                    })?;
                    Forget::Digest { pcr, digest }
                }
                (None, None, Some(from)) => Forget::LearnedFrom(device_id(&from)?.to_string()),
                _ => {
                    return Err(Error::Usage(
                        "give --pcr N --digest HEX, or --from ID".to_owned(),
                    ));
                }
            };
            let before = cx.store.baseline(&class.name);
            let before = cx.db(before)?;
            let after = ClassBaseline {
                learned: forgotten(&before.learned, &forget),
                stage: before.stage.clone(),
            };
            let matched = before.learned.len() - after.learned.len();
            if matched == 0 {
                return Err(Error::Refused(format!(
                    "class {} has no learned value {}",
                    class.name,
                    match &forget {
                        Forget::Digest { pcr, digest } =>
                            format!("{} at PCR {pcr}", hex::encode(digest)),
                        Forget::LearnedFrom(from) => format!("learned from {from}"),
                    }
                )));
            }
            let what = format!(
                "forgetting {matched} learned value(s) of class {}",
                class.name
            );
            let plan = Plan::new(cx, class, &before, &after, Vec::new())?;
            let stored = plan.decide(&what, force, yes, json)?;
            let mut removed = 0;
            if stored {
                let done = cx.store.forget(&before, &class.name, &forget);
                removed = cx.db(done)?.ok_or_else(|| changed_meanwhile(&class.name))?;
            }
            if json {
                let mut v = json!({
                    "class": class.name,
                    "matched": matched,
                    "removed": removed,
                    "stored": stored,
                });
                plan.extend_json(&mut v);
                print_json(&v);
            } else if stored {
                println!("removed {removed} learned value(s) of class {}", class.name);
            } else {
                println!(
                    "nothing removed; add --yes{} to remove {matched} value(s)",
                    if plan.needs_force() { " --force" } else { "" }
                );
            }
            Ok(())
        }
        PolicyCommand::Stage {
            class,
            from,
            share,
            stop_after,
            force,
            yes,
            max_age,
            json,
        } => {
            let class = known_class(policy, &class)?;
            let from = device_id(&from)?;
            let source = Source::read(cx, policy, &from, max_age)?;
            if source.class.name != class.name {
                return Err(Error::Usage(format!(
                    "{from} is in class {}, not {}",
                    source.class.name, class.name
                )));
            }
            let before = source.baseline.clone();
            if let Some(active) = before
                .stage
                .as_ref()
                .filter(|s| s.state == StageState::Active)
            {
                return Err(Error::Refused(format!(
                    "class {} has stage {} active; promote or roll it back first",
                    class.name, active.id
                )));
            }
            let staged = Stage {
                id: 0,
                class: class.name.clone(),
                from: from.to_string(),
                values: source.values.clone(),
                share,
                stop_after,
                failures: 0,
                state: StageState::Active,
                started_ms: cx.now.wall_ms,
                ended_ms: None,
                end_reason: None,
            };
            let after = ClassBaseline {
                learned: before.learned.clone(),
                stage: Some(staged.clone()),
            };
            let what = format!(
                "staging {from}'s values to {share}% of class {}",
                class.name
            );
            let plan = Plan::new(cx, class, &before, &after, source.objections.clone())?;
            let covered = plan.active.iter().filter(|d| staged.selects(d)).count();
            if !json {
                println!(
                    "the stage covers {covered} of {} active device(s) of class {}",
                    plan.active.len(),
                    class.name
                );
            }
            let stored = plan.decide(&what, force, yes, json)?;
            let mut started = None;
            if stored {
                let new = NewStage {
                    class: class.name.clone(),
                    from: from.clone(),
                    values: source.values.clone(),
                    share,
                    stop_after,
                };
                let done = cx.store.start_stage(&before, &new, cx.now);
                started = Some(cx.db(done)?.ok_or_else(|| changed_meanwhile(&class.name))?);
            }
            if json {
                let mut v = json!({
                    "class": class.name,
                    "from": from.as_str(),
                    "share": share,
                    "stop_after": stop_after,
                    "covered": covered,
                    "values": pairs_json(&source.values),
                    "stage": started.as_ref().map(stage_json),
                    "stored": stored,
                });
                plan.extend_json(&mut v);
                print_json(&v);
            } else if let Some(stage) = &started {
                println!("stage {} started", stage.id);
            } else {
                println!(
                    "nothing staged; add --yes{} to start it",
                    if plan.needs_force() { " --force" } else { "" }
                );
            }
            Ok(())
        }
        PolicyCommand::Promote {
            class,
            share,
            force,
            yes,
            json,
        } => {
            let class = known_class(policy, &class)?;
            let before = cx.store.baseline(&class.name);
            let before = cx.db(before)?;
            let active = active_stage(&before, &class.name)?;
            let (promotion, after, what) = match share {
                Some(share) => {
                    if share <= active.share {
                        return Err(Error::Usage(format!(
                            "stage {} covers {}% already; --share must be more",
                            active.id, active.share
                        )));
                    }
                    let mut widened = active.clone();
                    widened.share = share;
                    (
                        Promotion::Widen(share),
                        ClassBaseline {
                            learned: before.learned.clone(),
                            stage: Some(widened),
                        },
                        format!(
                            "widening stage {} of class {} to {share}%",
                            active.id, class.name
                        ),
                    )
                }
                None => (
                    Promotion::Finish,
                    ClassBaseline {
                        learned: learned_after(
                            &before.learned,
                            LearnMode::Add,
                            &active.values,
                            &active.from,
                            cx.now.wall_ms,
                        ),
                        stage: None,
                    },
                    format!(
                        "accepting stage {}'s values for all of class {}",
                        active.id, class.name
                    ),
                ),
            };
            let plan = Plan::new(cx, class, &before, &after, Vec::new())?;
            let stored = plan.decide(&what, force, yes, json)?;
            let mut stage = None;
            if stored {
                let done = cx
                    .store
                    .promote_stage(&before, &class.name, promotion, cx.now);
                stage = Some(cx.db(done)?.ok_or_else(|| changed_meanwhile(&class.name))?);
            }
            finish_stage_change(&class.name, stored, stage.as_ref(), &plan, json, "promoted");
            Ok(())
        }
        PolicyCommand::Rollback {
            class,
            force,
            yes,
            json,
        } => {
            let class = known_class(policy, &class)?;
            let before = cx.store.baseline(&class.name);
            let before = cx.db(before)?;
            let active = active_stage(&before, &class.name)?;
            let after = ClassBaseline {
                learned: before.learned.clone(),
                stage: None,
            };
            let what = format!("rolling back stage {} of class {}", active.id, class.name);
            let plan = Plan::new(cx, class, &before, &after, Vec::new())?;
            let stored = plan.decide(&what, force, yes, json)?;
            let mut stage = None;
            if stored {
                let done = cx.store.roll_back_stage(
                    &before,
                    &class.name,
                    "rolled back by operator",
                    cx.now,
                );
                stage = Some(cx.db(done)?.ok_or_else(|| changed_meanwhile(&class.name))?);
            }
            finish_stage_change(
                &class.name,
                stored,
                stage.as_ref(),
                &plan,
                json,
                "rolled back",
            );
            Ok(())
        }
        PolicyCommand::Show { json } => show(cx, policy, json),
    }
}

/// A device whose last verified values `learn` or `stage` would accept,
/// with what holds against it.
struct Source<'p> {
    class: &'p ClassPolicy,
    values: Vec<(u8, [u8; 32])>,
    baseline: ClassBaseline,
    objections: Vec<Objection>,
}

impl<'p> Source<'p> {
    fn read(
        cx: &mut Session<'_>,
        policy: &'p Policy,
        id: &DeviceId,
        max_age_s: u64,
    ) -> Result<Source<'p>, Error> {
        let d = cx.device(id)?;
        // Never overridden: a revoked device is untrusted for good, and
        // nothing it reported may become a value its class accepts.
        if d.status == DeviceStatus::Revoked {
            return Err(Error::Refused(format!(
                "{id} is revoked; its values are not learned"
            )));
        }
        let class = policy.class(&d.class).ok_or_else(|| {
            Error::Refused(format!("class {} of {id} is not in the policy", d.class))
        })?;
        let snapshot = d.last_pcrs.as_ref().ok_or_else(|| {
            Error::Refused(format!(
                "{id} has no verified PCR values yet (it must attest once)"
            ))
        })?;
        if snapshot.mask != class.mask() {
            return Err(Error::Refused(format!(
                "{id}'s last verified values cover other PCRs than class {} quotes now",
                class.name
            )));
        }
        let values: Vec<(u8, [u8; 32])> = indices(snapshot.mask)
            .zip(snapshot.values.iter().copied())
            .collect();
        let baseline = cx.store.baseline(&class.name);
        let baseline = cx.db(baseline)?;
        let objections = objections(
            &d,
            class,
            &baseline,
            &values,
            cx.now.wall_ms,
            max_age_s.saturating_mul(1000),
        );
        Ok(Source {
            class,
            values,
            baseline,
            objections,
        })
    }
}

/// A change of what a class accepts, judged before it is made: the active
/// devices it would contain and what holds against its source.
struct Plan {
    class: String,
    /// Ids of the class's active devices.
    active: Vec<String>,
    /// Ids of those it would contain.
    contains: Vec<String>,
    objections: Vec<Objection>,
}

impl Plan {
    fn new(
        cx: &mut Session<'_>,
        class: &ClassPolicy,
        before: &ClassBaseline,
        after: &ClassBaseline,
        objections: Vec<Objection>,
    ) -> Result<Plan, Error> {
        let devices = cx.store.devices();
        let devices = cx.db(devices)?;
        let contains = would_contain(class, &devices, before, after)
            .into_iter()
            .map(|d| d.id.to_string())
            .collect();
        let active = devices
            .iter()
            .filter(|d| d.class == class.name && d.status == DeviceStatus::Active)
            .map(|d| d.id.to_string())
            .collect();
        Ok(Plan {
            class: class.name.clone(),
            active,
            contains,
            objections,
        })
    }

    fn needs_force(&self) -> bool {
        !self.objections.is_empty() || !self.contains.is_empty()
    }

    fn contain_line(&self) -> String {
        let n = self.contains.len();
        let mut line = format!(
            "would contain {n} of {} active device(s) of class {}",
            self.active.len(),
            self.class
        );
        if n > 0 {
            const SHOWN: usize = 8;
            let mut ids = self.contains[..n.min(SHOWN)].join(", ");
            if n > SHOWN {
                ids.push_str(&format!(", and {} more", n - SHOWN));
            }
            line.push_str(&format!(" ({ids})"));
        }
        line
    }

    /// Prints what the change would do (text mode) and decides: `Ok(true)`
    /// to store it, `Ok(false)` for a dry run, `Err` when it needs
    /// `--force` and has not got it. Without `--yes`, an operator at a
    /// terminal is asked (after the count is printed); anything else is a
    /// dry run.
    fn decide(&self, what: &str, force: bool, yes: bool, json: bool) -> Result<bool, Error> {
        if !json {
            for o in &self.objections {
                println!("objection: {o}");
            }
            println!("{}", self.contain_line());
        }
        let blocked = self.needs_force() && !force;
        if !yes {
            use std::io::IsTerminal;
            if json
                || blocked
                || !std::io::stdin().is_terminal()
                || !std::io::stdout().is_terminal()
            {
                return Ok(false);
            }
            return Ok(ask(&format!("{what}: store this change? [y/N] ")));
        }
        if blocked {
            let mut why: Vec<String> = self.objections.iter().map(ToString::to_string).collect();
            why.push(self.contain_line());
            return Err(Error::Refused(format!(
                "{what} refused: {}; add --force to do it anyway",
                why.join("; ")
            )));
        }
        if self.needs_force() && !json {
            println!("forced: stored despite the above");
        }
        Ok(true)
    }

    fn extend_json(&self, v: &mut Value) {
        if let Value::Object(map) = v {
            map.insert("would_contain".into(), json!(self.contains.len()));
            map.insert("would_contain_devices".into(), json!(self.contains));
            map.insert("active_devices".into(), json!(self.active.len()));
            map.insert(
                "objections".into(),
                json!(
                    self.objections
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                ),
            );
            map.insert("needs_force".into(), json!(self.needs_force()));
        }
    }
}

/// The class's accepted values changed between the judgement of a change
/// and its transaction: nothing was stored, and the operator judges again.
fn changed_meanwhile(class: &str) -> Error {
    Error::Refused(format!(
        "the accepted values of class {class} changed while this command ran; nothing stored, run it again"
    ))
}

/// Asks a yes/no question on the terminal; anything but "y" or "yes" (or a
/// failed read) is no.
fn ask(question: &str) -> bool {
    use std::io::Write;
    print!("{question}");
    if std::io::stdout().flush().is_err() {
        return false;
    }
    let mut answer = String::new();
    match std::io::stdin().read_line(&mut answer) {
        Ok(_) => matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes"),
        Err(_) => false,
    }
}

fn known_class<'p>(policy: &'p Policy, name: &str) -> Result<&'p ClassPolicy, Error> {
    policy.class(name).ok_or_else(|| {
        Error::Usage(format!(
            "class `{name}` is not in the policy {} (classes: {})",
            policy.path.display(),
            policy
                .classes
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })
}

fn active_stage<'b>(baseline: &'b ClassBaseline, class: &str) -> Result<&'b Stage, Error> {
    baseline
        .stage
        .as_ref()
        .filter(|s| s.state == StageState::Active)
        .ok_or_else(|| Error::Refused(format!("class {class} has no active stage")))
}

fn finish_stage_change(
    class: &str,
    stored: bool,
    stage: Option<&Stage>,
    plan: &Plan,
    json: bool,
    done: &str,
) {
    if json {
        let mut v = json!({
            "class": class,
            "stage": stage.map(stage_json),
            "stored": stored,
        });
        plan.extend_json(&mut v);
        print_json(&v);
    } else if let Some(stage) = stage {
        println!(
            "stage {} {done}: {} at {}%",
            stage.id,
            stage.state.name(),
            stage.share
        );
    } else {
        println!(
            "nothing changed; add --yes{} to do it",
            if plan.needs_force() { " --force" } else { "" }
        );
    }
}

fn pairs_json(values: &[(u8, [u8; 32])]) -> Value {
    Value::Object(
        values
            .iter()
            .map(|(pcr, v)| (pcr.to_string(), json!(hex::encode(v))))
            .collect(),
    )
}

fn stage_json(s: &Stage) -> Value {
    json!({
        "id": s.id,
        "state": s.state.name(),
        "from": s.from,
        "share": s.share,
        "stop_after": s.stop_after,
        "failures": s.failures,
        "values": pairs_json(&s.values),
        "started_at": s.started_ms / 1000,
        "ended_at": secs(s.ended_ms),
        "end_reason": s.end_reason,
    })
}

fn show(cx: &mut Session<'_>, policy: &Policy, json: bool) -> Result<(), Error> {
    let mut classes = Vec::new();
    for class in policy.classes.values() {
        let baseline = cx.store.baseline(&class.name);
        let baseline = cx.db(baseline)?;
        let mut reference = Map::new();
        let mut missing = Vec::new();
        for &pcr in &class.pcrs {
            let mut entries: Vec<Value> = class
                .reference
                .get(&pcr)
                .into_iter()
                .flatten()
                .map(|d| json!({"digest": hex::encode(d), "source": "file"}))
                .collect();
            entries.extend(baseline.learned.iter().filter(|l| l.pcr == pcr).map(
                |l| json!({"digest": hex::encode(l.digest), "source": "learned", "from": l.from}),
            ));
            if entries.is_empty() {
                missing.push(pcr);
            }
            reference.insert(pcr.to_string(), Value::Array(entries));
        }
        classes.push(json!({
            "name": class.name,
            "bank": "sha256",
            "pcrs": class.pcrs,
            "reference": reference,
            "missing": missing,
            "stage": baseline.stage.as_ref().map(stage_json),
            "artifact_ttl_ms": class.artifact_ttl_ms,
            "heartbeat_ms": class.heartbeat_ms,
            "allow_first_use": class.allow_first_use,
            "scope": class.scope.iter().map(|s| json!({
                "op": s.op,
                "max_amount": s.max_amount,
                "currency": s.currency.map(|c| c.as_str().to_owned()),
                "fresh_attestation": s.fresh_attestation,
            })).collect::<Vec<_>>(),
        }));
    }
    if json {
        print_json(&json!({ "classes": classes }));
        return Ok(());
    }
    for class in &classes {
        println!(
            "class {} (pcrs {}, ttl {} ms, heartbeat {} ms{})",
            class["name"].as_str().unwrap_or(""),
            class["pcrs"],
            class["artifact_ttl_ms"],
            class["heartbeat_ms"],
            if class["allow_first_use"] == json!(true) {
                ", first use allowed"
            } else {
                ""
            }
        );
        if let Value::Object(reference) = &class["reference"] {
            for (pcr, entries) in reference {
                match entries.as_array().map(Vec::as_slice) {
                    Some([]) | None => println!("  PCR {pcr:>2}  no baseline"),
                    Some(entries) => {
                        for e in entries {
                            println!(
                                "  PCR {pcr:>2}  {}  ({})",
                                e["digest"].as_str().unwrap_or(""),
                                e["source"].as_str().unwrap_or("")
                            );
                        }
                    }
                }
            }
        }
        if let Some(stage) = class["stage"].as_object() {
            println!(
                "  stage {} {}: values from {} for {}% of the class, stop after {} refusals ({} so far){}",
                stage["id"],
                stage["state"].as_str().unwrap_or(""),
                stage["from"].as_str().unwrap_or(""),
                stage["share"],
                stage["stop_after"],
                stage["failures"],
                stage["end_reason"]
                    .as_str()
                    .map(|r| format!("; ended: {r}"))
                    .unwrap_or_default()
            );
            if let Some(values) = stage["values"].as_object() {
                for (pcr, v) in values {
                    println!("    PCR {pcr:>2}  {}", v.as_str().unwrap_or(""));
                }
            }
        }
    }
    Ok(())
}

fn print_json(value: &Value) {
    println!("{value}");
}

fn secs(ms: Option<u64>) -> Value {
    ms.map_or(Value::Null, |ms| json!(ms / 1000))
}
