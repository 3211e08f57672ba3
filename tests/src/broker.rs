//! A private Mosquitto in the operator's layout: Debian's stock
//! `/etc/mosquitto/mosquitto.conf` (read from the installed package, with
//! only its machine-wide paths moved into a throw-away directory) including
//! a `conf.d/` that holds the shipped drop-in
//! (`configs/mosquitto/conf.d/mctc.conf`, with only the port and the
//! certificate and plugin-file paths replaced) beside the shipped
//! `dynamic-security.json`. A drop-in that clashes with the stock file
//! fails here exactly as it fails on an operator's broker.

use std::fs::File;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::HarnessError;
use crate::pki::{CertFiles, Pki};
use crate::ports::free_port;
use crate::require_program;

/// The shipped broker drop-in, loaded with only the port and the
/// certificate and plugin-file paths replaced ([`dropin_config`]).
pub const FLEET_DROPIN: &str = include_str!("../../configs/mosquitto/conf.d/mctc.conf");
/// Where Debian's mosquitto package installs its stock main configuration.
pub const DEBIAN_STOCK_CONF: &str = "/etc/mosquitto/mosquitto.conf";
/// The production dynamic-security configuration (roles of the services and
/// of every device), copied verbatim into each broker's directory: the
/// plugin rewrites its copy as devices are granted and revoked.
pub const FLEET_DYNSEC: &str = include_str!("../../configs/mosquitto/dynamic-security.json");
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a grant or revocation may take to be confirmed by the broker.
const DYNSEC_TIMEOUT: Duration = Duration::from_secs(15);

/// The service identities the shipped dynamic-security configuration knows.
pub const SERVICES: [&str; 3] = ["mctc-authority", "mctc-collector", "mctc-monitor"];
/// The services' shared-subscription groups with the filters the services
/// use, and a catch-all: what an attacker with a stolen certificate tries to
/// join (issue 13, attack 1). The broker must refuse every one to anyone
/// but the services.
pub const SERVICE_GROUP_FILTERS: [&str; 6] = [
    "$share/mctc-authority/mctc/v1/dev/+/nonce/req",
    "$share/mctc-authority/mctc/v1/dev/+/evidence",
    "$share/mctc-authority/mctc/v1/enroll/+/request",
    "$share/mctc-collector/mctc/v1/dev/+/lineage",
    "$share/mctc-authority/#",
    "#",
];
/// A test-only identity that may read every mctc topic
/// ([`Broker::client_identity`]).
pub const OBSERVER: &str = "mctc-test-observer";

/// Where a broker's drop-in points: its port and its own files.
#[derive(Debug, Clone)]
pub struct DropinPaths<'a> {
    pub port: u16,
    pub server: &'a CertFiles,
    pub dynsec: &'a Path,
}

/// Where a broker's main configuration points instead of the machine-wide
/// paths of Debian's stock file.
#[derive(Debug, Clone)]
pub struct MainPaths<'a> {
    pub pid_file: &'a Path,
    pub persistence: &'a Path,
    pub log: &'a Path,
    pub conf_d: &'a Path,
}

/// Replaces the value of each `key` line of `text` by `value(key)`, keeps
/// every other line verbatim, and fails if a key of `keys` has no line (the
/// harness would otherwise test something other than what is installed).
fn substitute(
    what: &str,
    text: &str,
    keys: &[&str],
    value: impl Fn(&str) -> String,
) -> Result<String, HarnessError> {
    let mut out = String::new();
    let mut replaced = Vec::new();
    for line in text.lines() {
        let key = line.split_whitespace().next().unwrap_or("");
        if let Some(key) = keys.iter().find(|k| **k == key) {
            replaced.push(*key);
            out.push_str(&value(key));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    match keys.iter().find(|k| !replaced.contains(k)) {
        Some(key) => Err(HarnessError::Failed {
            what: what.into(),
            detail: format!("has no `{key}` line for the harness to point at its own files"),
        }),
        None => Ok(out),
    }
}

/// A broker drop-in (`text`, the shipped [`FLEET_DROPIN`] or a test's
/// variant of it) with its port and the paths naming this machine's files
/// replaced; every other line is kept verbatim.
pub fn dropin_config(text: &str, paths: &DropinPaths<'_>) -> Result<String, HarnessError> {
    substitute(
        "broker drop-in",
        text,
        &[
            "listener",
            "cafile",
            "certfile",
            "keyfile",
            "plugin_opt_config_file",
        ],
        |key| match key {
            "listener" => format!("listener {} 127.0.0.1", paths.port),
            "cafile" => format!("cafile {}", paths.server.ca.display()),
            "certfile" => format!("certfile {}", paths.server.cert.display()),
            "keyfile" => format!("keyfile {}", paths.server.key.display()),
            _ => format!("plugin_opt_config_file {}", paths.dynsec.display()),
        },
    )
}

/// Debian's stock main configuration as installed by the mosquitto package.
/// Missing: the package is not installed. Changed from what the package
/// shipped (dpkg's conffile checksum): the harness would not run the
/// operator's layout, so that is an error too.
pub fn debian_stock_config() -> Result<String, HarnessError> {
    let stock = Path::new(DEBIAN_STOCK_CONF);
    let text = std::fs::read_to_string(stock).map_err(|e| HarnessError::Failed {
        what: format!("Debian's stock {DEBIAN_STOCK_CONF}"),
        detail: format!(
            "{e}: every broker test runs the shipped drop-in under it: run `sudo apt install mosquitto` (or `cargo xtask test`)"
        ),
    })?;
    if let Some(shipped) = conffile_md5(DEBIAN_STOCK_CONF) {
        let local = md5_of(stock);
        if local.as_deref() != Some(shipped.as_str()) {
            return Err(HarnessError::Failed {
                what: format!("Debian's stock {DEBIAN_STOCK_CONF}"),
                detail: format!(
                    "differs from what the mosquitto package installed (md5 {shipped}); \
                     the harness runs the operator's layout and needs the stock file: \
                     `sudo apt install --reinstall -o Dpkg::Options::=--force-confask mosquitto`"
                ),
            });
        }
    }
    Ok(text)
}

/// The md5 dpkg recorded for conffile `path`, if dpkg knows it.
fn conffile_md5(path: &str) -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Conffiles}\n", "mosquitto"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let mut words = l.split_whitespace();
        (words.next() == Some(path)).then(|| words.next().map(str::to_owned))?
    })
}

fn md5_of(path: &Path) -> Option<String> {
    let out = Command::new("md5sum").arg(path).output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .map(str::to_owned)
}

/// Debian's stock main configuration (`stock`) with only its machine-wide
/// paths (`pid_file`, `persistence_location`, `log_dest`, `include_dir`)
/// moved to `paths`; every other line is kept verbatim. Then what only a
/// test needs: staying root when run as root (Mosquitto drops to user
/// `mosquitto`, who cannot read the test's files) and subscriptions in the
/// log (ACL refusals are easy to read after a failure).
pub fn debian_main_config(stock: &str, paths: &MainPaths<'_>) -> Result<String, HarnessError> {
    let mut out = substitute(
        DEBIAN_STOCK_CONF,
        stock,
        &[
            "pid_file",
            "persistence_location",
            "log_dest",
            "include_dir",
        ],
        |key| match key {
            "pid_file" => format!("pid_file {}", paths.pid_file.display()),
            "persistence_location" => {
                format!("persistence_location {}/", paths.persistence.display())
            }
            "log_dest" => format!("log_dest file {}", paths.log.display()),
            _ => format!("include_dir {}", paths.conf_d.display()),
        },
    )?;
    if rustix::process::geteuid().is_root() {
        out.push_str("user root\n");
    }
    out.push_str("log_type subscribe\n");
    Ok(out)
}

/// A client identity for the broker.
pub type ClientIdentity = CertFiles;

/// Mosquitto on a free loopback port with a throw-away PKI. Killed on drop;
/// the broker log is printed when the test fails.
#[derive(Debug)]
pub struct Broker {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
    pki: Pki,
    /// Debian's stock main configuration, as read at start.
    stock: String,
    /// The drop-in's text before substitution.
    dropin: String,
    /// Names [`Broker::client_identity`] granted already.
    granted: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Broker {
    /// A broker in the operator's layout with the shipped drop-in.
    pub fn start() -> Result<Broker, HarnessError> {
        Broker::start_with_dropin(FLEET_DROPIN)
    }

    /// A broker in the operator's layout with `dropin` (a variant of the
    /// shipped drop-in) as its `conf.d/mctc.conf`. Fails as Mosquitto
    /// fails, with its message, when the layout does not start.
    pub fn start_with_dropin(dropin: &str) -> Result<Broker, HarnessError> {
        require_program("mosquitto", "mosquitto mosquitto-clients")?;
        let stock = debian_stock_config()?;
        let dir = tempfile::Builder::new()
            .prefix("mctc-broker-")
            .tempdir()
            .map_err(HarnessError::io("create broker dir"))?;
        let pki = Pki::new(&dir.path().join("pki"))?;
        let server = pki.server("mctc-broker")?;
        std::fs::write(dir.path().join("dynamic-security.json"), FLEET_DYNSEC)
            .map_err(HarnessError::io("write dynamic-security.json"))?;
        for sub in ["persistence", "conf.d"] {
            std::fs::create_dir(dir.path().join(sub))
                .map_err(HarnessError::io(format!("create {sub} dir")))?;
        }
        let mut broker = Broker {
            child: None,
            dir,
            port: 0,
            pki,
            stock,
            dropin: dropin.to_owned(),
            granted: std::sync::Mutex::default(),
        };
        broker.write_config(&server, 0)?;
        broker.spawn()?;
        Ok(broker)
    }

    fn conf_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.conf")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.log")
    }

    fn write_config(&self, server: &CertFiles, port: u16) -> Result<(), HarnessError> {
        let conf_d = self.dir.path().join("conf.d");
        let main = debian_main_config(
            &self.stock,
            &MainPaths {
                pid_file: &self.dir.path().join("mosquitto.pid"),
                persistence: &self.dir.path().join("persistence"),
                log: &self.log_path(),
                conf_d: &conf_d,
            },
        )?;
        let dropin = dropin_config(
            &self.dropin,
            &DropinPaths {
                port,
                server,
                dynsec: &self.dir.path().join("dynamic-security.json"),
            },
        )?;
        std::fs::write(conf_d.join("mctc.conf"), dropin)
            .map_err(HarnessError::io("write conf.d/mctc.conf"))?;
        std::fs::write(self.conf_path(), main).map_err(HarnessError::io("write mosquitto.conf"))
    }

    fn spawn(&mut self) -> Result<(), HarnessError> {
        let server = CertFiles {
            cert: self.pki.dir().join("mctc-broker.pem"),
            key: self.pki.dir().join("mctc-broker.key"),
            ca: self.pki.ca_path().to_owned(),
        };
        let fixed_port = self.port != 0;
        let mut last = None;
        for _ in 0..5 {
            let port = if fixed_port { self.port } else { free_port() };
            self.write_config(&server, port)?;
            let child = Command::new("mosquitto")
                .arg("-c")
                .arg(self.conf_path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(
                    File::options()
                        .create(true)
                        .append(true)
                        .open(self.dir.path().join("mosquitto.stderr"))
                        .map_err(HarnessError::io("open mosquitto stderr"))?,
                ))
                .spawn()
                .map_err(HarnessError::io("start mosquitto"))?;
            self.child = Some(child);
            self.port = port;
            match self.wait_ready() {
                Ok(()) => return Ok(()),
                Err(e) => {
                    self.kill();
                    last = Some(e);
                    if fixed_port {
                        // The old port may linger in TIME_WAIT briefly.
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
            }
        }
        Err(last.expect("five attempts made"))
    }

    fn wait_ready(&mut self) -> Result<(), HarnessError> {
        let start = Instant::now();
        while start.elapsed() < READY_TIMEOUT {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(HarnessError::Failed {
                    what: "mosquitto".into(),
                    detail: format!("exited with {status}; log:\n{}", self.log()),
                });
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(HarnessError::NotReady {
            what: "mosquitto".into(),
            secs: READY_TIMEOUT.as_secs(),
            log: self.log(),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// `mqtts://127.0.0.1:PORT`, the form the project's configs use.
    pub fn url(&self) -> String {
        format!("mqtts://127.0.0.1:{}", self.port)
    }

    pub fn ca_path(&self) -> &Path {
        self.pki.ca_path()
    }

    pub fn pki(&self) -> &Pki {
        &self.pki
    }

    /// Issues a client certificate with `common_name` as its identity.
    pub fn identity(&self, common_name: &str) -> Result<ClientIdentity, HarnessError> {
        self.pki.client(common_name)
    }

    /// A client certificate for `common_name` with the rights its name
    /// suggests in a test: the services' names have theirs from the shipped
    /// configuration, [`OBSERVER`] may read every mctc topic, and any other
    /// name is a device, granted as the authority grants one
    /// ([`Broker::grant_device`]). [`Broker::identity`] gives a certificate
    /// without any rights.
    pub fn client_identity(&self, common_name: &str) -> Result<ClientIdentity, HarnessError> {
        let identity = self.identity(common_name)?;
        let fresh = self
            .granted
            .lock()
            .map(|mut g| g.insert(common_name.to_owned()))
            .unwrap_or(true);
        if fresh && !SERVICES.contains(&common_name) {
            if common_name == OBSERVER {
                self.grant_observer()?;
            } else {
                self.grant_device(common_name)?;
            }
        }
        Ok(identity)
    }

    /// Gives device `device` its rights on the broker, as the authority
    /// does when a device is added (`mctc_service::dynsec::grant`, sent as
    /// `mctc-authority`), and returns once the broker confirmed it. For
    /// tests that run devices without a running authority.
    pub fn grant_device(&self, device: &str) -> Result<(), HarnessError> {
        self.dynsec(device, mctc_service::dynsec::grant)
    }

    /// Takes every right from `device`, as `devices revoke` does through the
    /// authority, and returns once the broker confirmed it.
    pub fn revoke_device(&self, device: &str) -> Result<(), HarnessError> {
        if let Ok(mut granted) = self.granted.lock() {
            granted.remove(device);
        }
        self.dynsec(device, mctc_service::dynsec::revoke)
    }

    /// Writes the roles of `devices` into the plugin's file while the broker
    /// is stopped, then starts it again on the same port: what the authority
    /// would grant one by one, for a benchmark fleet of thousands (the
    /// plugin rewrites its whole file on every change, see
    /// authority/README.md, "Broker authorization").
    pub fn preseed_devices(&mut self, devices: &[String]) -> Result<(), HarnessError> {
        use mctc_service::dynsec::{DEVICE_GROUP, device_acls, device_role};
        self.kill();
        let path = self.dir.path().join("dynamic-security.json");
        let failed = |detail: String| HarnessError::Failed {
            what: "preseed dynamic-security.json".into(),
            detail,
        };
        let text = std::fs::read_to_string(&path).map_err(HarnessError::io("read dynsec"))?;
        let mut json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| failed(e.to_string()))?;
        for device in devices {
            let role = serde_json::json!({
                "rolename": device_role(device),
                "acls": device_acls(device),
            });
            let client = serde_json::json!({
                "username": device,
                "roles": [{"rolename": device_role(device)}],
                "groups": [{"groupname": DEVICE_GROUP}],
            });
            for (key, value) in [("roles", role), ("clients", client)] {
                json[key]
                    .as_array_mut()
                    .ok_or_else(|| failed(format!("no `{key}` array")))?
                    .push(value);
            }
        }
        std::fs::write(
            &path,
            serde_json::to_vec(&json).map_err(|e| failed(e.to_string()))?,
        )
        .map_err(HarnessError::io("write dynsec"))?;
        if let Ok(mut granted) = self.granted.lock() {
            granted.extend(devices.iter().cloned());
        }
        self.spawn()
    }

    /// A test-only identity that may read every mctc topic (but join no
    /// shared-subscription group): the tests' observer of what flows.
    fn grant_observer(&self) -> Result<(), HarnessError> {
        self.dynsec(OBSERVER, |cn, tag| {
            let acl = |acltype: &str| {
                serde_json::json!({"acltype": acltype, "topic": "mctc/#", "allow": true})
            };
            serde_json::to_vec(&serde_json::json!({"commands": [
                {"command": "createRole", "rolename": cn, "correlationData": tag,
                 "acls": [acl("subscribePattern"), acl("publishClientReceive")]},
                {"command": "createClient", "username": cn, "correlationData": tag,
                 "roles": [{"rolename": cn}]},
            ]}))
            .unwrap_or_default()
        })
    }

    /// Sends the dynamic-security commands `command(device, tag)` as the
    /// authority does and waits for the plugin's answers to `tag`. The
    /// broker administers itself over a private admin connection (plain
    /// rumqttc, not the test clients of [`crate::mqtt`], which are built on
    /// this module: the harness's layers stay a DAG).
    fn dynsec(
        &self,
        device: &str,
        command: impl Fn(&str, &str) -> Vec<u8>,
    ) -> Result<(), HarnessError> {
        let failed = |detail: String| HarnessError::Failed {
            what: format!("broker rights of {device}"),
            detail,
        };
        let tag = format!("harness-{}-{}", std::process::id(), crate::free_port());
        let identity = self.identity("mctc-authority")?;
        let options = self.mqtt_options(&format!("mctc-harness-{tag}"), &identity)?;
        let payload = command(device, &tag);
        // rumqttc's blocking client runs a runtime of its own, which cannot
        // start inside the caller's (the async integration tests): the
        // exchange runs on a thread of its own.
        let (outcome, answers) = std::thread::scope(|scope| {
            scope
                .spawn(|| admin_exchange(options, &tag, payload))
                .join()
                .unwrap_or_else(|_| (Err("the admin connection panicked".to_owned()), Vec::new()))
        });
        let outcome = outcome.map_err(failed)?;
        match outcome {
            Some(true) => Ok(()),
            Some(false) => Err(failed(format!(
                "the broker refused the commands: {answers:?}"
            ))),
            None => Err(failed(format!(
                "no answer from the dynamic-security plugin within {} s",
                DYNSEC_TIMEOUT.as_secs()
            ))),
        }
    }

    /// rumqttc options for a TLS 1.3 client authenticating with `identity`.
    pub fn mqtt_options(
        &self,
        client_id: &str,
        identity: &ClientIdentity,
    ) -> Result<rumqttc::MqttOptions, HarnessError> {
        let mut options = rumqttc::MqttOptions::new(client_id, self.host(), self.port);
        options.set_keep_alive(Duration::from_secs(5));
        options.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(Arc::new(client_tls_config(identity)?)),
        ));
        Ok(options)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
            + &std::fs::read_to_string(self.dir.path().join("mosquitto.stderr")).unwrap_or_default()
    }

    /// The Mosquitto process, while started (to stop and continue it: a
    /// broker that holds its connections open but answers nothing).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the broker again on the same port (sessions are not persisted).
    pub fn start_again(&mut self) -> Result<(), HarnessError> {
        self.kill();
        self.spawn()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- mosquitto log ({}) ---\n{}",
                self.log_path().display(),
                self.log()
            );
        }
    }
}

/// A TLS 1.3 client configuration with the ring provider, trusting only the
/// test CA and presenting `identity`.
pub fn client_tls_config(identity: &ClientIdentity) -> Result<rustls::ClientConfig, HarnessError> {
    let tls_err = |e: rustls::Error| HarnessError::Failed {
        what: "TLS client config".into(),
        detail: e.to_string(),
    };
    let pem_err = |e: rustls_pki_types::pem::Error| HarnessError::Failed {
        what: "read PEM".into(),
        detail: e.to_string(),
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&identity.ca).map_err(pem_err)? {
        roots.add(cert.map_err(pem_err)?).map_err(tls_err)?;
    }
    let chain = CertificateDer::pem_file_iter(&identity.cert)
        .map_err(pem_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_err)?;
    let key = PrivateKeyDer::from_pem_file(&identity.key).map_err(pem_err)?;
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(tls_err)
}

/// One request/answer exchange with the dynamic-security plugin: subscribe
/// to its answers, publish `payload`, wait for the answer tagged `tag`.
/// `Ok(None)` when no answer came within [`DYNSEC_TIMEOUT`].
fn admin_exchange(
    options: rumqttc::MqttOptions,
    tag: &str,
    payload: Vec<u8>,
) -> (Result<Option<bool>, String>, Vec<String>) {
    use mctc_service::dynsec::{CONTROL_TOPIC, RESPONSE_TOPIC, Reply};
    use rumqttc::{Event, Packet, QoS};
    let (client, mut connection) = rumqttc::Client::new(options, 16);
    let deadline = Instant::now() + DYNSEC_TIMEOUT;
    let mut answers: Vec<String> = Vec::new();
    let mut payload = Some(payload);
    let mut outcome = None;
    while outcome.is_none() {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            break;
        };
        let event = match connection.recv_timeout(left) {
            Ok(Ok(event)) => event,
            Ok(Err(e)) => return (Err(format!("admin connection: {e}")), answers),
            Err(_) => break,
        };
        let sent = match event {
            Event::Incoming(Packet::ConnAck(_)) => {
                client.subscribe(RESPONSE_TOPIC, QoS::AtLeastOnce)
            }
            Event::Incoming(Packet::SubAck(ack)) => {
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                {
                    return (
                        Err("the broker refused the admin its answers".into()),
                        answers,
                    );
                }
                match payload.take() {
                    Some(payload) => {
                        client.publish(CONTROL_TOPIC, QoS::AtLeastOnce, false, payload)
                    }
                    None => Ok(()),
                }
            }
            Event::Incoming(Packet::Publish(publish)) if publish.topic == RESPONSE_TOPIC => {
                answers.push(String::from_utf8_lossy(&publish.payload).into_owned());
                outcome = Reply::parse(&publish.payload).ok().and_then(|reply| {
                    reply
                        .by_tag()
                        .into_iter()
                        .find(|(t, _)| t == tag)
                        .map(|(_, ok)| ok)
                });
                Ok(())
            }
            _ => Ok(()),
        };
        if let Err(e) = sent {
            return (Err(format!("admin request: {e}")), answers);
        }
    }
    let _ = client.disconnect();
    (Ok(outcome), answers)
}
