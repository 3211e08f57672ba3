//! A private swtpm per test.

use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::HarnessError;
use crate::ports::free_port_pair;
use crate::require_program;
use crate::tpm_wire;

const SWTPM_PACKAGES: &str = "swtpm swtpm-tools";
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// swtpm control channel commands (swtpm's `tpm_ioctl.h`).
const CMD_INIT: u32 = 0x02;
const PTM_INIT_FLAG_DELETE_VOLATILE: u32 = 0x1;

/// How to manufacture the simulated TPM.
#[derive(Debug, Clone, Default)]
pub struct SwtpmOptions {
    /// Run `swtpm_setup --create-ek-cert` first: EKs persisted at 0x81010001
    /// (RSA-2048) and 0x81010016 (ECC), EK certificates in NV (0x01c00002,
    /// 0x01c00016) signed by a private local CA, SHA-256 bank only.
    pub ek_certificates: bool,
}

/// A software TPM listening on loopback, with state in its own temporary
/// directory. Killed on drop.
#[derive(Debug)]
pub struct Swtpm {
    child: Option<Child>,
    dir: tempfile::TempDir,
    data_port: u16,
    ctrl_port: u16,
    options: SwtpmOptions,
}

impl Swtpm {
    /// A fresh, unmanufactured swtpm (the TPM creates its seeds on first use).
    pub fn start() -> Result<Swtpm, HarnessError> {
        Self::start_with(SwtpmOptions::default())
    }

    pub fn start_with(options: SwtpmOptions) -> Result<Swtpm, HarnessError> {
        require_program("swtpm", SWTPM_PACKAGES)?;
        let dir = tempfile::Builder::new()
            .prefix("mctc-swtpm-")
            .tempdir()
            .map_err(HarnessError::io("create swtpm state dir"))?;
        std::fs::create_dir(dir.path().join("state"))
            .map_err(HarnessError::io("create swtpm state dir"))?;
        if options.ek_certificates {
            manufacture(dir.path())?;
        }
        let mut tpm = Swtpm {
            child: None,
            dir,
            data_port: 0,
            ctrl_port: 0,
            options,
        };
        tpm.spawn()?;
        Ok(tpm)
    }

    /// Starts (or restarts) the swtpm process on new ports if the old ones
    /// were taken by a racing test.
    fn spawn(&mut self) -> Result<(), HarnessError> {
        let mut last_err = None;
        for _ in 0..5 {
            let (data, ctrl) = if self.data_port == 0 {
                free_port_pair()
            } else {
                (self.data_port, self.ctrl_port)
            };
            let log = self.log_path();
            let child = Command::new("swtpm")
                .arg("socket")
                .arg("--tpm2")
                .arg("--tpmstate")
                .arg(format!("dir={}", self.state_dir().display()))
                .arg("--server")
                .arg(format!("type=tcp,port={data},bindaddr=127.0.0.1"))
                .arg("--ctrl")
                .arg(format!("type=tcp,port={ctrl},bindaddr=127.0.0.1"))
                .arg("--flags")
                .arg("not-need-init,startup-clear")
                .arg("--log")
                .arg(format!("file={},level=1", log.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(
                    File::options()
                        .create(true)
                        .append(true)
                        .open(&log)
                        .map_err(HarnessError::io("open swtpm log"))?,
                ))
                .spawn()
                .map_err(HarnessError::io("start swtpm"))?;
            self.child = Some(child);
            self.data_port = data;
            self.ctrl_port = ctrl;
            match self.wait_ready() {
                Ok(()) => return Ok(()),
                Err(e) => {
                    self.kill();
                    // A port taken between probing and binding: try new ones.
                    self.data_port = 0;
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.expect("five attempts made"))
    }

    fn wait_ready(&mut self) -> Result<(), HarnessError> {
        let start = Instant::now();
        while start.elapsed() < READY_TIMEOUT {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(HarnessError::Failed {
                    what: "swtpm".into(),
                    detail: format!("exited with {status}; log:\n{}", self.log()),
                });
            }
            if let Ok((0, body)) = tpm_wire::transact(self.data_port, &tpm_wire::get_random(8))
                && body.len() >= 2
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(HarnessError::NotReady {
            what: "swtpm".into(),
            secs: READY_TIMEOUT.as_secs(),
            log: self.log(),
        })
    }

    /// The TCTI configuration string for tss-esapi / tpm2-tools.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.data_port)
    }

    pub fn data_port(&self) -> u16 {
        self.data_port
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The local CA that signed the EK certificates (only with
    /// [`SwtpmOptions::ek_certificates`]): root and intermediate, PEM.
    pub fn ek_ca_certificates(&self) -> Vec<PathBuf> {
        let ca = self.dir.path().join("ca");
        vec![
            ca.join("swtpm-localca-rootca-cert.pem"),
            ca.join("issuercert.pem"),
        ]
    }

    pub fn options(&self) -> &SwtpmOptions {
        &self.options
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("swtpm.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Sends one raw command and fails unless the TPM answers success.
    fn command(&self, what: &str, cmd: &[u8]) -> Result<Vec<u8>, HarnessError> {
        let (rc, body) = tpm_wire::transact(self.data_port, cmd)
            .map_err(HarnessError::io(format!("swtpm {what}")))?;
        if rc != 0 {
            return Err(HarnessError::Failed {
                what: format!("swtpm {what}"),
                detail: format!("TPM response code {rc:#x}"),
            });
        }
        Ok(body)
    }

    fn control(&self, cmd: u32, payload: &[u8]) -> Result<(), HarnessError> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.ctrl_port))
            .map_err(HarnessError::io("connect to swtpm control channel"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(HarnessError::io("swtpm control channel"))?;
        let mut msg = cmd.to_be_bytes().to_vec();
        msg.extend_from_slice(payload);
        stream
            .write_all(&msg)
            .map_err(HarnessError::io("swtpm control command"))?;
        let mut rc = [0u8; 4];
        stream
            .read_exact(&mut rc)
            .map_err(HarnessError::io("swtpm control response"))?;
        match u32::from_be_bytes(rc) {
            0 => Ok(()),
            rc => Err(HarnessError::Failed {
                what: format!("swtpm control command {cmd:#x}"),
                detail: format!("result {rc:#x}"),
            }),
        }
    }

    fn startup(&self, kind: u16) -> Result<(), HarnessError> {
        let (rc, _) = tpm_wire::transact(self.data_port, &tpm_wire::startup(kind))
            .map_err(HarnessError::io("swtpm TPM2_Startup"))?;
        match rc {
            0 | tpm_wire::TPM_RC_INITIALIZE => Ok(()),
            rc => Err(HarnessError::Failed {
                what: "swtpm TPM2_Startup".into(),
                detail: format!("TPM response code {rc:#x}"),
            }),
        }
    }

    /// A TPM Reset (power loss, reboot): volatile state and PCRs cleared,
    /// `resetCount` incremented, every loaded object gone.
    pub fn reset(&self) -> Result<(), HarnessError> {
        self.control(CMD_INIT, &PTM_INIT_FLAG_DELETE_VOLATILE.to_be_bytes())?;
        self.startup(tpm_wire::SU_CLEAR)
    }

    /// A TPM Restart (orderly shutdown with state saved, then Startup(CLEAR)):
    /// PCRs cleared, `restartCount` incremented, `resetCount` unchanged.
    pub fn restart(&self) -> Result<(), HarnessError> {
        self.command(
            "TPM2_Shutdown(STATE)",
            &tpm_wire::shutdown(tpm_wire::SU_STATE),
        )?;
        self.control(CMD_INIT, &0u32.to_be_bytes())?;
        self.startup(tpm_wire::SU_CLEAR)
    }

    /// Extends `SHA-256(data)` into `pcr` of the SHA-256 bank, as something
    /// outside the device agent would (firmware update, attacker, drift).
    pub fn extend_pcr(&self, pcr: u32, data: &[u8]) -> Result<(), HarnessError> {
        let digest = ring::digest::digest(&ring::digest::SHA256, data);
        let digest: [u8; 32] = digest.as_ref().try_into().expect("SHA-256 is 32 bytes");
        self.command(
            "TPM2_PCR_Extend",
            &tpm_wire::pcr_extend_sha256(pcr, &digest),
        )?;
        Ok(())
    }

    /// Reads one PCR of the SHA-256 bank directly from the simulator.
    pub fn read_pcr(&self, pcr: u32) -> Result<[u8; 32], HarnessError> {
        let body = self.command("TPM2_PCR_Read", &tpm_wire::pcr_read_sha256(pcr))?;
        tpm_wire::parse_pcr_read(&body).ok_or_else(|| HarnessError::Failed {
            what: "TPM2_PCR_Read".into(),
            detail: "unexpected response shape (is the SHA-256 bank allocated?)".into(),
        })
    }

    /// Kills the simulator process (state on disk is kept).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the simulator again on the same ports with the same state
    /// directory (a power cycle of the whole TPM chip: `resetCount` increments).
    pub fn start_again(&mut self) -> Result<(), HarnessError> {
        self.kill();
        self.spawn()
    }

    /// Freezes the simulator (SIGSTOP): its sockets stay open and accept,
    /// but nothing is answered — a hung TPM or resource manager. Its state
    /// is untouched; [`Swtpm::resume`] lets it answer again.
    pub fn pause(&self) -> Result<(), HarnessError> {
        self.signal(rustix::process::Signal::STOP)
    }

    /// Lets a paused simulator answer again (SIGCONT), state unchanged.
    pub fn resume(&self) -> Result<(), HarnessError> {
        self.signal(rustix::process::Signal::CONT)
    }

    fn signal(&self, signal: rustix::process::Signal) -> Result<(), HarnessError> {
        let failed = |detail: String| HarnessError::Failed {
            what: format!("signal swtpm ({signal:?})"),
            detail,
        };
        let id = self
            .child
            .as_ref()
            .ok_or_else(|| failed("not running".into()))?
            .id();
        let pid = i32::try_from(id)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .ok_or_else(|| failed(format!("pid {id}")))?;
        rustix::process::kill_process(pid, signal).map_err(|e| HarnessError::Io {
            what: format!("signal swtpm ({signal:?})"),
            source: e.into(),
        })
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- swtpm log ({}) ---\n{}",
                self.log_path().display(),
                self.log()
            );
        }
    }
}

/// Manufactures the TPM state with EKs and EK certificates from a private CA.
fn manufacture(dir: &Path) -> Result<(), HarnessError> {
    let setup = require_program("swtpm_setup", SWTPM_PACKAGES)?;
    let localca = require_program("swtpm_localca", SWTPM_PACKAGES)?;
    let ca = dir.join("ca");
    std::fs::create_dir(&ca).map_err(HarnessError::io("create swtpm CA dir"))?;
    let localca_conf = dir.join("swtpm-localca.conf");
    std::fs::write(
        &localca_conf,
        format!(
            "statedir = {ca}\nsigningkey = {ca}/signkey.pem\nissuercert = {ca}/issuercert.pem\ncertserial = {ca}/certserial\n",
            ca = ca.display()
        ),
    )
    .map_err(HarnessError::io("write swtpm-localca.conf"))?;
    let localca_opts = dir.join("swtpm-localca.options");
    std::fs::write(
        &localca_opts,
        "--platform-manufacturer mctc-test\n--platform-version 2.1\n--platform-model swtpm\n",
    )
    .map_err(HarnessError::io("write swtpm-localca.options"))?;
    let setup_conf = dir.join("swtpm_setup.conf");
    std::fs::write(
        &setup_conf,
        format!(
            "create_certs_tool = {}\ncreate_certs_tool_config = {}\ncreate_certs_tool_options = {}\nactive_pcr_banks = sha256\n",
            localca.display(),
            localca_conf.display(),
            localca_opts.display()
        ),
    )
    .map_err(HarnessError::io("write swtpm_setup.conf"))?;
    let log = dir.join("swtpm_setup.log");
    let status = Command::new(setup)
        .arg("--tpm2")
        .arg("--tpmstate")
        .arg(dir.join("state"))
        .arg("--create-ek-cert")
        .arg("--config")
        .arg(&setup_conf)
        .arg("--logfile")
        .arg(&log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(HarnessError::io("run swtpm_setup"))?;
    if !status.success() {
        return Err(HarnessError::Failed {
            what: "swtpm_setup --create-ek-cert".into(),
            detail: format!(
                "{status}; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            ),
        });
    }
    Ok(())
}
