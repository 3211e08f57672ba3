//! The command line (DESIGN.md "Command line"): `run`, `enroll`,
//! `identity`, `status`, `authorize`, `lineage export`.
//!
//! Exit codes: 0 success (for `authorize`: permit; for `status`: the gate
//! is open), 1 refused (deny; gate not open; enrollment refused), 2 usage,
//! configuration or unreachable agent — which a caller must treat as deny.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use mctc_shim::api::{AuthorizeAnswer, CheckpointAnswer, GateStatus, Reply, Request, Status};

use crate::config::{self, Validated};
use crate::error::AgentError;
use crate::lineage::bundle;
use crate::state::StateDir;
use crate::{daemon, enroll, socket};

/// The mctc device agent: TPM attestation and the fail-closed gate.
#[derive(Debug, Parser)]
#[command(name = "mctc-agent", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct ConfigArg {
    /// The agent configuration file (TOML; see configs/agent.toml).
    #[arg(long, value_name = "FILE", default_value = config::DEFAULT_CONFIG)]
    pub config: PathBuf,
}

#[derive(Debug, Args)]
pub struct SocketArgs {
    /// The agent configuration file, read only to find `gate.socket`.
    /// Without `--config` and `--socket`: /etc/mctc/agent.toml if this user
    /// may read it, otherwise the default socket /run/mctc/gate.sock (so a
    /// member of `mctc-gate` needs no access to the 0640 configuration).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The gate socket; the configuration is then not read at all.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Print the answer as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (systemd Type=notify; SIGTERM stops it cleanly).
    Run(ConfigArg),
    /// Create or load the TPM keys and enroll with the authority (idempotent).
    Enroll {
        #[command(flatten)]
        config: ConfigArg,
        /// Replace the attestation key and enroll anew; clears a persisted
        /// revocation once the authority accepts the device again.
        #[arg(long)]
        reprovision: bool,
        /// Give up after this many seconds without an answer.
        #[arg(long, value_name = "SECS", default_value_t = 60)]
        timeout: u64,
    },
    /// Print the device id and the EK/AK fingerprints (for the fleet manager).
    Identity {
        #[command(flatten)]
        config: ConfigArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Ask the running agent for its status (exit 0 only if the gate is open).
    Status(SocketArgs),
    /// Ask the gate whether an operation may proceed (exit 0 permit, 1 deny,
    /// 2 error or agent unreachable: deny).
    Authorize {
        #[command(flatten)]
        socket: SocketArgs,
        /// The operation (as named in the artifact's scope).
        #[arg(long)]
        op: String,
        /// The amount in the currency's minor units.
        #[arg(long)]
        amount: Option<u64>,
        /// ISO 4217 currency code.
        #[arg(long)]
        currency: Option<String>,
        /// The caller's reference (recorded in lineage).
        #[arg(long = "ref", value_name = "REF")]
        reference: Option<String>,
    },
    /// Lineage tools.
    #[command(subcommand)]
    Lineage(LineageCommand),
    /// Check the configuration, files, modes, owners and certificates
    /// offline (fast; systemd ExecStartPre=). Exit 0 if nothing failed.
    CheckConfig(ConfigArg),
    /// check-config, then the TPM, the enrolled AK and the broker
    /// (TLS handshake and CONNACK). Exit 0 if nothing failed.
    Doctor(ConfigArg),
}

#[derive(Debug, Subcommand)]
pub enum LineageCommand {
    /// Write a self-contained bundle for offline verification
    /// (`mctc-collector verify`); see agent/README.md "Bundle format".
    Export {
        #[command(flatten)]
        config: ConfigArg,
        /// Where to write the bundle.
        #[arg(long, value_name = "BUNDLE")]
        out: PathBuf,
        /// First seq to include (default: the oldest record on disk).
        #[arg(long, value_name = "SEQ")]
        from: Option<u64>,
        /// The authority's signed registry record for this device (default:
        /// the one received at enrollment).
        #[arg(long, value_name = "FILE")]
        registry: Option<PathBuf>,
    },
}

/// An outcome: what to print and the exit code.
#[derive(Debug)]
pub struct Outcome {
    pub stdout: String,
    pub code: u8,
}

fn load(config: &ConfigArg) -> Result<Validated, AgentError> {
    config::load(&config.config)
}

fn runtime() -> Result<tokio::runtime::Runtime, AgentError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| AgentError::Startup(format!("tokio runtime: {e}")))
}

/// Where `status` and `authorize` connect. The gate socket is the only
/// thing they need, so the configuration (0640, root:mctc) is read only
/// when it has to be: never with `--socket`, and without `--config` only if
/// the default file can be read at all (a `mctc-gate` member cannot).
fn socket_path(args: &SocketArgs) -> Result<PathBuf, AgentError> {
    if let Some(path) = &args.socket {
        return Ok(path.clone());
    }
    if let Some(config) = &args.config {
        return Ok(config::load(config)?.raw.gate.socket);
    }
    let default = PathBuf::from(config::DEFAULT_CONFIG);
    match std::fs::File::open(&default) {
        Ok(_) => Ok(config::load(&default)?.raw.gate.socket),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::NotFound
            ) =>
        {
            Ok(PathBuf::from(config::DEFAULT_SOCKET))
        }
        Err(e) => Err(AgentError::Io {
            what: "read",
            path: default,
            source: e,
        }),
    }
}

/// Runs a parsed command.
pub fn execute(cli: Cli) -> Result<Outcome, AgentError> {
    match cli.command {
        Command::Run(config) => {
            let config = load(&config)?;
            crate::state::refuse_root_on_foreign_state(config.state_dir(), "run")?;
            runtime()?.block_on(daemon::run(config, daemon::signals()))?;
            Ok(Outcome {
                stdout: String::new(),
                code: 0,
            })
        }
        Command::Enroll {
            config,
            reprovision,
            timeout,
        } => {
            let config = load(&config)?;
            crate::state::refuse_root_on_foreign_state(config.state_dir(), "enroll")?;
            let clock = crate::clock::BootClock {
                wall_trusted: config.raw.attestation.wall_clock_trusted,
            };
            let report = runtime()?.block_on(enroll::enroll(
                &config,
                &clock,
                reprovision,
                Duration::from_secs(timeout),
            ))?;
            let mut stdout = format!(
                "enrolled {}\n  ak sha256 {}\n  ek sha256 {}\n",
                report.device, report.ak_sha256, report.ek_sha256
            );
            if !report.registry_record {
                stdout
                    .push_str("  (no registry record received: lineage export needs --registry)\n");
            }
            Ok(Outcome { stdout, code: 0 })
        }
        Command::Identity { config, json } => {
            let config = load(&config)?;
            crate::state::refuse_root_on_foreign_state(config.state_dir(), "identity")?;
            let report = runtime()?.block_on(enroll::identity(&config))?;
            let stdout = if json {
                serde_json::to_string_pretty(&report).unwrap_or_default() + "\n"
            } else {
                format!(
                    "device     {}\nek sha256  {}\nak sha256  {}\nak name    {}\nek cert    {}\ntpm        {}{}\nenrolled   {}\nrevoked    {}\n",
                    report.device,
                    report.ek_sha256,
                    report.ak_sha256,
                    report.ak_name,
                    if report.ek_certificate {
                        "present"
                    } else {
                        "absent"
                    },
                    report.tpm_manufacturer,
                    if report.tpm_simulator {
                        " (SOFTWARE SIMULATOR)"
                    } else {
                        ""
                    },
                    report.enrolled,
                    report.revoked,
                )
            };
            Ok(Outcome { stdout, code: 0 })
        }
        Command::Status(args) => {
            let path = socket_path(&args)?;
            let answer: Reply<Status> =
                socket::request(&path, &Request::status(), Duration::from_secs(10))?;
            let status = answer.into_result().map_err(|reason| AgentError::Socket {
                path: path.clone(),
                reason,
            })?;
            let open = status.state == GateStatus::Open;
            let stdout = if args.json {
                serde_json::to_string_pretty(&status).unwrap_or_default() + "\n"
            } else {
                render_status(&status)
            };
            Ok(Outcome {
                stdout,
                code: if open { 0 } else { 1 },
            })
        }
        Command::Authorize {
            socket: args,
            op,
            amount,
            currency,
            reference,
        } => {
            let path = socket_path(&args)?;
            let request =
                Request::authorize(&op, amount, currency.as_deref(), reference.as_deref());
            let answer: Reply<AuthorizeAnswer> =
                socket::request(&path, &request, Duration::from_secs(30))?;
            let answer = answer.into_result().map_err(|reason| AgentError::Socket {
                path: path.clone(),
                reason,
            })?;
            let permit = answer.permits();
            let stdout = if args.json {
                serde_json::to_string(&answer).unwrap_or_default() + "\n"
            } else if permit {
                format!(
                    "permit (seq {}, artifact {})\n",
                    answer
                        .seq
                        .map_or_else(|| "null".to_owned(), |s| s.to_string()),
                    answer.artifact.as_deref().unwrap_or("-")
                )
            } else {
                format!("deny: {}\n", answer.reason.map_or("unknown", |r| r.name()))
            };
            Ok(Outcome {
                stdout,
                code: if permit { 0 } else { 1 },
            })
        }
        Command::CheckConfig(config) => {
            let (report, _) = crate::checkup::check_config(&config.config);
            Ok(Outcome {
                stdout: report.render(),
                code: report.exit_code(),
            })
        }
        Command::Doctor(config) => {
            let report = runtime()?.block_on(crate::checkup::doctor(&config.config));
            Ok(Outcome {
                stdout: report.render(),
                code: report.exit_code(),
            })
        }
        Command::Lineage(LineageCommand::Export {
            config,
            out,
            from,
            registry,
        }) => export(&load(&config)?, &out, from, registry.as_deref()),
    }
}

/// Asks a running agent for a checkpoint now, so the bundle covers
/// everything up to this moment; returns a note for the operator when there
/// is none (the bundle then ends at the last checkpoint on disk).
fn checkpoint_now(config: &Validated) -> String {
    match socket::request::<Reply<CheckpointAnswer>>(
        &config.raw.gate.socket,
        &Request::checkpoint(),
        Duration::from_secs(10),
    ) {
        Ok(Reply::Ok(_)) => String::new(),
        Ok(Reply::Error(e)) => format!(
            "  (agent did not checkpoint: {}; the bundle ends at the last checkpoint)\n",
            e.error
        ),
        Err(_) => "  (agent not running; the bundle ends at the last checkpoint)\n".into(),
    }
}

fn export(
    config: &Validated,
    out: &std::path::Path,
    from: Option<u64>,
    registry: Option<&std::path::Path>,
) -> Result<Outcome, AgentError> {
    let state = StateDir::open(config.state_dir())?;
    let keys = config::authority_keys(config)?;
    let registry = match registry {
        Some(path) => std::fs::read(path).map_err(AgentError::io("read", path))?,
        None => state
            .registry_record()?
            .ok_or(bundle::ExportError::NoRegistryRecord)?,
    };
    let ak_public = bundle::registry_ak(&registry, &keys, &config.device)?;
    // The latest receipt the agent verified: with it, a verifier holding
    // the collector's key checks the bundle reaches what was acknowledged.
    // It is read before the checkpoint is asked for, so the checkpoint
    // covers it; should the running agent persist a newer receipt and prune
    // while the bundle is read, the export is made again.
    let read_receipt = || {
        state.lineage_receipt().and_then(|bytes| {
            let collectors = config::collector_keys(config).ok()?;
            let seq = mctc_shim::verify_receipt(
                &bytes,
                &collectors,
                &mctc_shim::RingCrypto,
                &config.device,
            )
            .ok()?
            .receipt()
            .seq;
            Some((bytes, seq))
        })
    };
    let mut attempt = 0;
    let (bundle, mut summary, note) = loop {
        attempt += 1;
        let receipt = read_receipt();
        let note = checkpoint_now(config);
        match bundle::build(
            &state.lineage_dir(),
            &config.device,
            from,
            registry.clone(),
            ak_public.clone(),
            receipt.clone(),
        ) {
            Ok((bundle, summary)) => {
                let reaches = receipt
                    .as_ref()
                    .is_none_or(|(_, seq)| bundle.from_seq <= seq.saturating_add(1));
                if reaches || attempt >= 3 {
                    break (bundle, summary, note);
                }
            }
            Err(e) if attempt >= 3 || read_receipt() == receipt => return Err(e.into()),
            Err(_) => {}
        }
    };
    summary.bytes = bundle::write(out, &bundle)?;
    Ok(Outcome {
        stdout: format!(
            "wrote {}: records {}..={} ({} records, {} checkpoints, {} bytes)\n{note}",
            out.display(),
            summary.from_seq,
            summary.last_seq,
            summary.records,
            summary.checkpoints,
            summary.bytes
        ),
        code: 0,
    })
}

fn render_status(status: &Status) -> String {
    fn or_dash<T: ToString>(value: Option<T>) -> String {
        value.map_or_else(|| "-".to_owned(), |v| v.to_string())
    }
    let mut out = format!(
        "device      {}\ngate        {} ({})\n",
        status.device, status.state, status.reason,
    );
    if let Some(detail) = &status.detail {
        out.push_str(&format!("detail      {detail}\n"));
    }
    if let Some(why) = &status.why {
        out.push_str(&format!(
            "why         {}{} for {} s (since Unix {})\n",
            why.cause,
            why.check
                .as_deref()
                .map_or_else(String::new, |c| format!(" ({c})")),
            why.for_ms / 1000,
            why.since_wall_ms / 1000
        ));
        if let Some(error) = &why.error {
            out.push_str(&format!("error       {error}\n"));
        }
        for pcr in &why.pcrs {
            out.push_str(&format!("pcr         {pcr}\n"));
        }
        out.push_str(&format!("hint        {}\n", why.hint));
    }
    if let Some(artifact) = &status.artifact {
        out.push_str(&format!(
            "artifact    {} expires in {} ms\n",
            artifact.cti, artifact.expires_in_ms
        ));
    }
    if let Some(last) = &status.last_attestation {
        out.push_str(&format!(
            "attestation {} ({}) {} ms ago\n",
            last.verdict, last.purpose, last.ago_ms
        ));
    }
    let lineage = &status.lineage;
    out.push_str(&format!(
        "lineage     {} next seq {} acked {} backlog {}\n",
        lineage.health,
        lineage.next_seq,
        or_dash(lineage.acked_seq),
        lineage.backlog
    ));
    out.push_str(&format!(
        "broker      connected {} session {}\ntpm         {}\nversion     {}\n",
        status.connected, status.session, status.tpm, status.version
    ));
    out
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
        let help = Cli::command().render_long_help().to_string();
        for sub in [
            "run",
            "enroll",
            "identity",
            "status",
            "authorize",
            "lineage",
        ] {
            assert!(help.contains(sub), "{sub} missing from --help");
        }
    }

    #[test]
    fn authorize_takes_the_design_flags() {
        let cli = Cli::try_parse_from([
            "mctc-agent",
            "authorize",
            "--config",
            "a.toml",
            "--op",
            "capture",
            "--amount",
            "12",
            "--ref",
            "r1",
            "--json",
        ])
        .unwrap();
        let Command::Authorize {
            op,
            amount,
            reference,
            socket,
            ..
        } = cli.command
        else {
            panic!("not authorize")
        };
        assert_eq!(
            (op.as_str(), amount, reference.as_deref()),
            ("capture", Some(12), Some("r1"))
        );
        assert!(socket.json);
    }
}
