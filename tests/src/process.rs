//! The project's own binaries, started for real with their logs captured.

use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::error::HarnessError;

/// Where the workspace binary `name` is: in `$MCTC_BIN_DIR` if set (e.g. to
/// drive release builds), otherwise in the cargo profile directory of the
/// running executable — `target/<profile>/` for `xtask` itself and for test
/// executables in `target/<profile>/deps/`.
pub fn bin_path(name: &str) -> Result<PathBuf, HarnessError> {
    let dir = match std::env::var_os("MCTC_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe()
                .map_err(HarnessError::io("locate the running executable"))?;
            let parent = exe.parent().ok_or_else(|| HarnessError::Failed {
                what: "locate target dir".into(),
                detail: exe.display().to_string(),
            })?;
            if parent.file_name().is_some_and(|n| n == "deps") {
                parent.parent().unwrap_or(parent).to_path_buf()
            } else {
                parent.to_path_buf()
            }
        }
    };
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(HarnessError::NotBuilt { path })
    }
}

/// A running child process with stdout and stderr captured in a log file.
/// Killed (SIGKILL) on drop; its log is printed when the test fails.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Option<Child>,
    log: PathBuf,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Starts workspace binary `name` with `args`, logging to `log`
    /// (appended, so restarts keep one history).
    pub fn spawn<I, S>(name: &str, args: I, log: &Path) -> Result<Proc, HarnessError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = Command::new(bin_path(name)?);
        command.args(args);
        Self::spawn_command(name, command, log)
    }

    /// Starts an arbitrary command (environment and arguments already set).
    pub fn spawn_command(
        name: &str,
        mut command: Command,
        log: &Path,
    ) -> Result<Proc, HarnessError> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(HarnessError::io(format!("open log {}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(HarnessError::io("clone log handle"))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .map_err(HarnessError::io(format!("start {name}")))?;
        Ok(Proc {
            name: name.to_owned(),
            child: Some(child),
            log: log.to_owned(),
            status: None,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: rustix::process::Signal) -> Result<(), HarnessError> {
        let pid = self.pid().ok_or_else(|| HarnessError::Failed {
            what: format!("signal {}", self.name),
            detail: "not running".into(),
        })?;
        let pid = rustix::process::Pid::from_raw(i32::try_from(pid).expect("pid fits i32"))
            .expect("pid is positive");
        rustix::process::kill_process(pid, signal).map_err(|e| HarnessError::Io {
            what: format!("signal {}", self.name),
            source: e.into(),
        })
    }

    /// The exit status, if the process has ended.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none()
            && let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            self.status = Some(status);
        }
        self.status
    }

    /// Waits up to `timeout` for the process to end.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.try_status() {
                return Some(status);
            }
            if start.elapsed() >= timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if self.try_status().is_none()
            && let Some(child) = self.child.as_mut()
        {
            let _ = child.kill();
            if let Ok(status) = child.wait() {
                self.status = Some(status);
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- {} log ({}) ---\n{}",
                self.name,
                self.log.display(),
                self.log()
            );
        }
    }
}

/// Polls `condition` every 10 ms until it holds or `timeout` passes; returns
/// how long it took, or `None` on timeout.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if condition() {
            return Some(start.elapsed());
        }
        if start.elapsed() >= timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
