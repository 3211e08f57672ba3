//! A private Mosquitto with TLS 1.3, client certificates and the shipped ACL.

use std::fmt::Write as _;
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

/// The production ACL, loaded verbatim so the tests exercise what ships.
pub const FLEET_ACL: &str = include_str!("../../configs/mosquitto/mctc.acl");
const READY_TIMEOUT: Duration = Duration::from_secs(15);

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
}

impl Broker {
    pub fn start() -> Result<Broker, HarnessError> {
        require_program("mosquitto", "mosquitto mosquitto-clients")?;
        let dir = tempfile::Builder::new()
            .prefix("mctc-broker-")
            .tempdir()
            .map_err(HarnessError::io("create broker dir"))?;
        let pki = Pki::new(&dir.path().join("pki"))?;
        let server = pki.server("mctc-broker")?;
        std::fs::write(dir.path().join("mctc.acl"), FLEET_ACL)
            .map_err(HarnessError::io("write ACL"))?;
        let mut broker = Broker {
            child: None,
            dir,
            port: 0,
            pki,
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
        let mut conf = String::new();
        // Mosquitto drops root privileges to user "mosquitto" unless told to
        // stay; the key files here belong to the user running the tests.
        if rustix::process::geteuid().is_root() {
            conf.push_str("user root\n");
        }
        let _ = write!(
            conf,
            "per_listener_settings false\n\
             allow_anonymous false\n\
             persistence false\n\
             max_packet_size 1048576\n\
             set_tcp_nodelay true\n\
             log_dest file {log}\n\
             log_type error\nlog_type warning\nlog_type notice\nlog_type information\nlog_type subscribe\n\
             connection_messages true\n\
             acl_file {acl}\n\
             listener {port} 127.0.0.1\n\
             cafile {ca}\n\
             certfile {cert}\n\
             keyfile {key}\n\
             require_certificate true\n\
             use_identity_as_username true\n\
             tls_version tlsv1.3\n",
            log = self.log_path().display(),
            acl = self.dir.path().join("mctc.acl").display(),
            ca = server.ca.display(),
            cert = server.cert.display(),
            key = server.key.display(),
        );
        std::fs::write(self.conf_path(), conf).map_err(HarnessError::io("write mosquitto.conf"))
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
